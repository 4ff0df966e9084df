"""``bana synth OUT``: write a procedural box-annotated dataset in PASCAL VOC layout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from banacli.config import Section
from banacli.data.synth_coco import generate_coco
from banacli.stage import Stage, StageContext
from banacli.errors import ConfigError


class SynthConfig(Section):
    out: Path | None = Field(None, description="Folder to write the dataset to (VOC layout).")
    images: int = Field(200, gt=0, description="Number of training images.")
    val: int = Field(50, ge=0, description="Number of validation images.")
    size: int = Field(128, ge=32, le=1024, description="Image side in pixels.")
    seed: int = Field(0, description="Random seed; the same seed gives the same dataset.")
    format: Literal["voc", "coco"] = Field(
        "voc", description="Layout: voc, or coco (annotations/instances_SPLIT.json with RLE instance masks + SPLIT/).")
    context: float = Field(
        0.0, ge=0.0, le=1.0,
        description="Share P of images whose background is the habitat (texture family + colour range) "
        "of the class of one of their objects; 0 = backgrounds independent of the classes (docs/synthetic.md).",
    )


def run(ctx: StageContext) -> None:
    from banacli.data.synthetic import generate  # loads torch

    cfg: SynthConfig = ctx.section
    if cfg.out is None:
        raise ConfigError("bana synth: OUT folder is required")
    with ctx.progress() as prog:
        task = prog.add_task("synth", total=cfg.images + cfg.val, status="")
        make = generate_coco if cfg.format == "coco" else generate
        summary = make(cfg.out, images=cfg.images, size=cfg.size, seed=cfg.seed, val=cfg.val,
                       context=cfg.context,
                       progress=lambda n=1: prog.advance(task, n))
    ctx.info(
        f"wrote {cfg.images} train + {cfg.val} val images of {cfg.size} px to {cfg.out} "
        f"({summary['context_images']} in context, P = {cfg.context:g}); "
        f"box-as-mask pseudo labels on train: mIoU {100 * summary['box_miou']:.1f}%"
    )


stage = Stage(
    name="synth",
    help="Write a synthetic box-annotated dataset (VOC layout) for demos and tests.",
    run=run,
    section="synth",
    config=SynthConfig,
    arguments=("out",),
    needs_data=False,
    needs_run=False,
)

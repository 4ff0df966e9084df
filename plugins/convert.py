"""``bana convert SRC --kind cls|seg``: a checkpoint of the authors' BANA release into our format.

Writes model.safetensors + its JSON sidecar, to ``--out FILE`` or, with ``--run RUN``, to
RUN/cls/ or RUN/seg/ where ``gen-labels`` / ``eval`` / ``export`` / ``predict`` find it.
The key mapping is in :mod:`banacli.interop.authors_checkpoints` and docs/export.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from banacli.config import Section
from banacli.stage import Stage, StageContext
from banacli.artifacts import save_model, sha256_file
from banacli.errors import ArtifactError, ConfigError, DataError


class ConvertConfig(Section):
    src: Path | None = Field(None, description="The authors' checkpoint: a plain PyTorch state dict (.pt/.pth) or .safetensors.")
    kind: Literal["cls", "seg"] | None = Field(None, description="cls: their stage-1 classifier (ClsNet); seg: their stage-3 DeepLab-LargeFOV (SegNet).")
    backbone: Literal["vgg16", "tiny"] = Field("vgg16", description="With --kind cls: the backbone (vgg16 for the authors' release).")
    model: Literal["largefov", "tiny"] = Field("largefov", description="With --kind seg: the segmenter (largefov for the authors' release).")
    classes: str | None = Field(
        None,
        description="Foreground class names, comma-separated, or a classes.txt file. Default: data.classes, "
        "else --data ROOT's classes, else the 20 PASCAL VOC classes. Background is added first.",
    )
    normalization: Literal["caffe", "torchvision"] = Field("caffe", description="Input normalisation the weights were trained with (the release: caffe).")
    tau: float = Field(20.0, gt=0, description="With --kind seg: scale of the cosine classifier (the release's TEMP).")
    out: Path | None = Field(None, description="Output model.safetensors (default: RUN/cls/ or RUN/seg/ with --run).")


def resolve_class_names(ctx: StageContext, spec: str | None) -> list[str]:
    """``["background", *classes]`` from --classes, data.classes, --data ROOT, or VOC's 20."""
    from banacli.data.voc import VOC_CLASSES, resolve_classes  # loads torch

    if spec:
        path = Path(spec)
        names = _read_names(path) if path.is_file() else [n for n in spec.split(",") if n.strip()]
        return ["background", *resolve_classes(".", names)]  # checks the names
    if ctx.config.data.classes is not None:
        return ["background", *resolve_classes(".", ctx.config.data.classes)]
    if ctx.data_root is not None:
        return ["background", *resolve_classes(ctx.data_root)]
    return ["background", *VOC_CLASSES]


def _read_names(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def run(ctx: StageContext) -> None:
    from banacli.interop.authors_checkpoints import (  # loads torch
        RELEASE, classifier_outputs, map_authors_state, read_checkpoint, target_arch, target_shapes,
    )
    from banacli.models.normalize import NORMALIZATIONS  # loads torch
    from banacli.runs import model_path  # loads torch

    cfg: ConvertConfig = ctx.section
    if cfg.src is None:
        raise ConfigError("bana convert: SRC checkpoint is required")
    if cfg.kind is None:
        raise ConfigError("bana convert: --kind cls|seg is required (their classifier or their DeepLab)")
    if cfg.out is not None:
        out = Path(cfg.out)
    elif ctx.run_dir is not None:
        out = model_path(ctx.run_dir, cfg.kind)
    else:
        raise ConfigError("bana convert: give --out FILE or --run RUN")
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: must end in .safetensors")
    class_names = resolve_class_names(ctx, cfg.classes)
    name = cfg.backbone if cfg.kind == "cls" else cfg.model
    arch = target_arch(cfg.kind, name)

    state = read_checkpoint(cfg.src)
    k = classifier_outputs(state, str(cfg.src))
    if k != len(class_names):
        raise ArtifactError(
            f"{cfg.src}: classifier has {k} outputs but there are {len(class_names)} class names "
            f"(background + {len(class_names) - 1}); pass the classes it was trained on with --classes"
        )
    tensors = map_authors_state(state, target_shapes(cfg.kind, name, k), source=str(cfg.src), arch=arch)
    digest = sha256_file(cfg.src)
    extra = {"converted_from": {"release": RELEASE, "kind": cfg.kind, "file": str(cfg.src), "sha256": digest}}
    if cfg.kind == "seg":
        extra["tau"] = cfg.tau
    save_model(out, tensors, arch=arch, class_names=class_names, normalization=NORMALIZATIONS[cfg.normalization],
               config=ctx.config.model_dump(mode="json"), inputs={"checkpoint": digest}, extra=extra)
    ctx.info(f"convert: {cfg.src} -> {out} ({arch}, {len(class_names)} classes, {len(tensors)} tensors, "
             f"{cfg.normalization} normalisation)")


stage = Stage(
    name="convert",
    help="Convert a checkpoint of the authors' BANA release (classifier or DeepLab-LargeFOV) to bana's format.",
    run=run,
    section="convert",
    config=ConvertConfig,
    arguments=("src",),
    needs_data=False,
    needs_run=False,
)

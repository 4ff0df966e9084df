"""``bana export-labels``: a run's pseudo labels as COCO, VOC, YOLO or Label Studio files.

Reads RUN/labels (what gen-labels wrote) and the dataset's boxes; the formats, the label sets
and the fallback for empty masks are described in :mod:`banacli.interop.label_export` and
docs/export-labels.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from banacli.config import Section
from banacli.stage import Stage, StageContext
from banacli.artifacts import atomic_write_json
from banacli.errors import ArtifactError
from banacli.outputs import read_skipped


class ExportLabelsConfig(Section):
    format: Literal["coco", "voc", "yolo", "labelstudio"] = Field(
        "coco", description="coco (instances JSON), voc (SegmentationClass/Object PNGs), yolo (segmentation "
        "polygons) or labelstudio (tasks JSON with predictions).")
    method: str = Field("bana", description="Which labeler's outputs in RUN/labels (its <method>.manifest.json).")
    labels: str | None = Field(
        None, description="Label set: Ycrf, Yret, agreement (Ycrf where it equals Yret, void elsewhere), or the "
        "labeler's own (Box, GrabCut). Default: the labeler's first.")
    split: str | None = Field(None, description="Split to export (default: the split gen-labels labelled).")
    fallback: Literal["box", "empty", "skip"] = Field(
        "box", description="A box whose mask came out empty: box (its box's background pixels), empty (an "
        "empty mask), skip (no mask; COCO keeps the annotation unchanged). Each is counted and listed.")
    polygons: bool = Field(False, description="coco: polygons instead of RLE; labelstudio: polygonlabels instead of "
                           "brushlabels (outer contours, holes filled).")
    copy_images: bool = Field(False, description="Copy the images too: coco and yolo to images/SPLIT/, voc to "
                              "JPEGImages/.")
    image_url: str = Field("/data/local-files/?d={path}", description="labelstudio: task image URL; {path} is the "
                           "image path relative to the dataset root, {file} its name, {id} the image id.")
    ls_image: str = Field("image", description="labelstudio: name of the Image tag (to_name).")
    ls_boxes: str = Field("box", description="labelstudio: name of the RectangleLabels tag.")
    ls_masks: str = Field("mask", description="labelstudio: name of the BrushLabels (or PolygonLabels) tag.")
    out: Path | None = Field(None, description="Output folder (default: RUN/export_labels/FORMAT).")
    force: bool = Field(False, description="Overwrite files that exist already.")


def run(ctx: StageContext) -> None:
    from banacli.interop.label_export import ExportOptions, export_labels, open_label_set  # loads torch
    from banacli.runs import RunDir, dataset_digest, open_dataset  # loads torch

    cfg: ExportLabelsConfig = ctx.section
    labels = open_label_set(ctx.run_dir, cfg.method, cfg.labels)
    ds = open_dataset(ctx, cfg.split or labels.split, with_gt=False)
    if labels.manifest.get("dataset") not in (None, dataset_digest(ds)):
        raise ArtifactError(f"{labels.manifest_path}: the labels were made from another dataset (or other data.* "
                            "settings) than --data gives now; export with the data gen-labels labelled")
    out = cfg.out or ctx.stage_dir / cfg.format
    options = ExportOptions(**{k: getattr(cfg, k) for k in ExportOptions.__dataclass_fields__})
    prog = ctx.progress()
    task = prog.add_task("export-labels", total=len(ds), status="")

    def advance(image_id: str) -> None:  # the bar appears with the first image, after the checks
        prog.start()
        prog.update(task, advance=1, status=image_id)

    try:
        report = export_labels(ds, labels, out, options, skipped=read_skipped(RunDir(ctx.run_dir).labels, cfg.method),
                               progress=advance)
    finally:
        prog.stop()
    atomic_write_json(ctx.stage_dir / f"{cfg.format}.report.json", report.as_dict())
    for line in report.lines():
        ctx.info(line)


stage = Stage(
    name="export-labels",
    help="Write the pseudo labels of RUN/labels as COCO, VOC, YOLO or Label Studio files (docs/export-labels.md).",
    run=run,
    section="export_labels",
    config=ExportLabelsConfig,
)

"""``bana gen-labels``: pseudo labels for every training image (docs/method.md, "Stage 2").

The work is spread by :mod:`banacli.labeling`: on a CPU each joblib worker computes its own
images' features and labels them; on a GPU this process computes features in batches and
streams them to CPU workers for DenseCRF and retrieval. ``--shard K/N`` and torchrun ranks
split one split over processes and hosts into one run directory. Outputs are written
atomically per image, so a killed run keeps every finished image and a rerun only labels the
rest. This module writes the quality report once every image of the split is labelled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from banacli.config import LabelsConfig
from banacli.stage import Stage, StageContext
from banacli.artifacts import atomic_write_json
from banacli.ops.metrics import ConfusionMeter


def run(ctx: StageContext) -> None:
    from banacli.labeling import label_split  # loads torch
    from banacli.runs import RunDir  # loads torch

    done = label_split(ctx)
    try:
        if done.report:
            from banacli.instances.pseudo_masks import write_instance_results  # hook: RUN/labels/instances_<set>.json
            write_instance_results(ctx, done.ds, done.out_dirs)
            report = quality_report(done.ds, done.out_dirs, len(done.ds.class_names))
            attention = check_attention(ctx, done.ds) if done.labeler.needs_classifier else None
            if report is not None and attention is not None:
                report["attention"] = attention
            if report is not None:
                atomic_write_json(RunDir(ctx.run_dir).label_report(done.labeler.name), report)
                print_report(ctx, report)
    finally:
        if done.world > 1:
            from banacli.engine.dist import DistInfo, shutdown_distributed  # loads torch

            shutdown_distributed(DistInfo(rank=done.rank, world=done.world))


ATTENTION_CHECK_IMAGES = 16  # images of the split whose background attention is checked


def check_attention(ctx: StageContext, ds) -> dict[str, Any] | None:
    """Is the background attention of this run's classifier usable as u0 (Eq. 7)? On the first
    ATTENTION_CHECK_IMAGES images: the mean share of in-box pixels where step 3 keeps A, and the
    images where it is degenerate (:data:`banacli.ops.pseudo.DEGENERATE_KEPT_SHARE`, near-constant
    A: every box would be labelled background). Warns on a degenerate attention and when u0 comes
    from the attention of a classifier not trained with BAP (the paper's GAP row uses CAMs and
    DenseCRF: labels.use_u0=false). None when u0 is not used (labels.use_u0=false)."""
    import torch

    from banacli.labeling import compute_features, load_feature_model  # loads torch
    from banacli.ops.pseudo import DEGENERATE_KEPT_SHARE, attention_is_degenerate, image_attention_kept  # loads torch
    from banacli.runs import RunDir  # loads torch

    cfg: LabelsConfig = ctx.section
    if not cfg.use_u0:
        return None
    model, _, norm, meta = load_feature_model(RunDir(ctx.run_dir).model("cls"), torch.device("cpu"),
                                              ds.class_names, cfg.class_agnostic)
    pooling = ((meta.get("config") or {}).get("cls") or {}).get("pooling")
    if pooling not in (None, "bap"):
        ctx.info(f"warning: gen-labels: the classifier was trained with cls.pooling={pooling}, but u0 comes from "
                 "its background attention, a part of BAP; the paper's GAP baseline makes its labels from the "
                 "CAMs and DenseCRF only (--set labels.use_u0=false)")
    shares, degenerate = [], []
    for i in range(min(ATTENTION_CHECK_IMAGES, len(ds))):
        s = ds.load(i)
        if len(s.boxes) == 0:
            continue
        feats = compute_features(model, norm, [s.image], torch.device("cpu"))[0]
        share = image_attention_kept(feats, s.image.shape[:2], s.boxes, grid_size=cfg.grid_size,
                                     threshold=cfg.bg_threshold)
        shares.append(share)
        if attention_is_degenerate(share):
            degenerate.append(s.id)
    if not shares:
        return None
    out = {"images_checked": len(shares), "kept_in_boxes": float(np.mean(shares)),
           "degenerate_images": len(degenerate), "degenerate_limit": DEGENERATE_KEPT_SHARE,
           "degenerate": len(degenerate) * 2 > len(shares), "classifier_pooling": pooling}
    if degenerate:
        ctx.info(f"warning: gen-labels: the background attention is degenerate (near-constant) on "
                 f"{len(degenerate)} of {len(shares)} checked images: step 3 keeps A on at least "
                 f"{DEGENERATE_KEPT_SHARE:.0%} of their box pixels, so u0 makes (almost) every box background "
                 f"(mean {out['kept_in_boxes']:.0%} of box pixels); the classifier's features do not separate "
                 f"objects from background. Recorded in the report ('attention').")
    return out


def quality_report(ds, out_dirs: dict[str, Path], num_classes: int) -> dict[str, Any] | None:
    """mIoU of each label set and of box-as-mask against the ground truth, the fraction of
    pixels where the first two sets differ (Ycrf != Yret), and per-class filling rates
    (paper Table 1 and Fig. 4b). None when no image of the split has ground truth."""

    from banacli.boxes import box_extents  # loads torch
    from banacli.data.palette import load_label_png  # loads PIL
    from banacli.data.voc import resize_label  # loads torch
    from banacli.ops.labelers import box_labeler  # loads torch

    names = list(out_dirs)
    meters = {n: ConfusionMeter(num_classes, class_names=ds.class_names) for n in [*names, "Box"]}
    fill_sum = {n: np.zeros(num_classes) for n in ["GT", *names]}
    fill_cnt = np.zeros(num_classes)
    differ = total = 0
    n_gt = 0
    for i in range(len(ds)):
        s = ds.load(i)
        labs = {n: resize_label(load_label_png(d / f"{s.id}.png"), s.image.shape[:2]) for n, d in out_dirs.items()}
        if len(names) >= 2:
            differ += int((labs[names[0]] != labs[names[1]]).sum())
            total += labs[names[0]].size
        if s.gt is None:
            continue
        n_gt += 1
        for n in names:
            meters[n].update(labs[n], s.gt)
        meters["Box"].update(box_labeler(s.image, s.boxes, s.labels), s.gt)
        ext = box_extents(s.boxes, *s.gt.shape)
        for (x0, y0, x1, y1), c in zip(ext, s.labels):
            area = max(1, (x1 - x0) * (y1 - y0))
            fill_cnt[c] += 1
            fill_sum["GT"][c] += (s.gt[y0:y1, x0:x1] == c).sum() / area
            for n in names:
                fill_sum[n][c] += (labs[n][y0:y1, x0:x1] == c).sum() / area
    if n_gt == 0:
        return None
    report: dict[str, Any] = {"images": len(ds), "images_with_gt": n_gt, "class_names": ds.class_names}
    report["miou"] = {n: m.scores()["miou"] for n, m in meters.items()}
    report["per_class_iou"] = {n: m.scores()["iou"] for n, m in meters.items()}
    if total:
        report[f"fraction_{names[0]}_ne_{names[1]}"] = differ / total
    with np.errstate(invalid="ignore", divide="ignore"):
        report["filling_rate"] = {n: (v / fill_cnt).tolist() for n, v in fill_sum.items()}
    return report


def print_report(ctx: StageContext, report: dict[str, Any]) -> None:
    ctx.logger.info("quality report: %s", json.dumps(report["miou"]))
    if ctx.quiet:
        return
    t = Table(title=f"pseudo labels vs ground truth ({report['images_with_gt']} images)")
    t.add_column("labels")
    t.add_column("mIoU %", justify="right")
    for name, miou in report["miou"].items():
        t.add_row(name, f"{100 * miou:.1f}")
    ctx.console.print(t)
    for key, value in report.items():
        if key.startswith("fraction_"):
            ctx.console.print(f"{key.removeprefix('fraction_').replace('_ne_', ' != ')}: {100 * value:.1f}% of pixels")
    ft = Table(title="filling rate per class (fraction of box pixels labelled as the box's class)")
    ft.add_column("class")
    for n in report["filling_rate"]:
        ft.add_column(n, justify="right")
    for c in range(1, len(report["class_names"])):
        vals = [report["filling_rate"][n][c] for n in report["filling_rate"]]
        if all(v != v for v in vals):  # NaN: no box of this class
            continue
        ft.add_row(report["class_names"][c], *(f"{100 * v:.1f}" for v in vals))
    ctx.console.print(ft)


run.writes_own_config = True  # banacli.labeling writes config.yaml once the run is accepted (cli.run_stage)


stage = Stage(
    name="gen-labels",
    help="Generate pseudo labels Ycrf and Yret (or a baseline labeler's) for the training split (writes RUN/labels/).",
    run=run,
    section="labels",
    config=LabelsConfig,
)

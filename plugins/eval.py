"""``bana eval``: mIoU of the segmenter (RUN/seg/) or of pseudo labels against the ground truth.

One confusion matrix over every pixel whose ground truth is not void (255), summed over the
split (docs/method.md, "Evaluation"); per-class IoU, mIoU, pixel accuracy and mean accuracy are
computed from it by :mod:`banacli.ops.metrics`. Images of the split without a ground-truth mask are
left out (and counted); a split with none is an error.

Segmenter (``--what seg``): logits averaged over ``eval.scales`` and their flips, one softmax,
DenseCRF ``eval.crf_params`` on the original RGB image, argmax (docs/method.md, "Evaluation").
The network runs in this process; the CRF steps run in ``--workers`` processes (joblib).
The reference implementation hands DenseCRF the Caffe-normalised image cast to uint8; we give
it the image itself, as DenseCRF intends.

Pseudo labels (``--what labels``): ``ycrf`` / ``yret`` read RUN/labels/Ycrf|Yret/ID.png from
``bana gen-labels --split SPLIT``; ``box`` draws the boxes of the annotations (paper Table 1,
"Box"). A void (255) pixel in a pseudo label counts as a miss for its ground-truth class.

Instance masks (``--what instances``): COCO mask AP (AP, AP50, AP75, APS, APM, APL, as the
paper's Table 2) with pycocotools' COCOeval (segm), see :mod:`banacli.instances.coco_ap`.
``eval.instances=labels`` (default) scores RUN/labels/instances_<Ycrf|Yret|...>.json
(``eval.labels`` picks the set; ``bana gen-labels`` writes them), ``model`` the instance model
of RUN (``bana train-inst``), ``box`` every box's rectangle. Ground truth: the COCO JSON, or VOC
SegmentationObject PNGs + XML. Writes RUN/eval/metrics-instances-<source>-<split>.json.

Writes RUN/eval/metrics-<what>[-<labels>]-<split>.json.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any
import json

import numpy as np
from rich.console import Console
from rich.table import Table

from banacli import __version__
from banacli.config import EvalConfig
from banacli.stage import Stage, StageContext
from banacli.artifacts import atomic_write_json
from banacli.errors import ArtifactError, BanaError, ConfigError, DataError
from banacli.ops.crf import CRFParams, crf_labels
from banacli.ops.metrics import confusion_matrix, scores

LABEL_FOLDERS = {"ycrf": "Ycrf", "yret": "Yret", "grabcut": "GrabCut"}


# ----------------------------------------------------------------------------- reading


def read_gt(path: Path, num_classes: int, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A ground-truth mask, checked: values 0..K-1 or 255, and the image's size."""
    from banacli.data.palette import VOID, load_label_png  # loads PIL

    gt = load_label_png(path)
    if shape is not None and gt.shape != shape:
        raise DataError(f"{path}: mask is {gt.shape[1]}x{gt.shape[0]}, image is {shape[1]}x{shape[0]}")
    bad = (gt >= num_classes) & (gt != VOID)
    if bad.any():
        raise DataError(f"{path}: label value {int(gt[bad][0])} is neither a class id (0..{num_classes - 1}) nor void (255)")
    return gt


def read_prediction(path: Path, num_classes: int, shape: tuple[int, int]) -> np.ndarray:
    """A pseudo-label PNG, checked against the ground truth's size and the class count."""
    from banacli.data.palette import VOID, load_label_png  # loads PIL

    if not path.is_file():
        raise ArtifactError(f"{path}: pseudo label missing (run bana gen-labels for this split)")
    try:
        pred = load_label_png(path)
    except DataError as exc:
        raise ArtifactError(str(exc)) from None
    if pred.shape != shape:
        raise ArtifactError(f"{path}: label is {pred.shape[1]}x{pred.shape[0]}, the ground truth {shape[1]}x{shape[0]}")
    bad = (pred >= num_classes) & (pred != VOID)
    if bad.any():
        raise ArtifactError(f"{path}: label value {int(pred[bad][0])} is not a class id (0..{num_classes - 1}) or 255")
    return pred


# ----------------------------------------------------------------------------- counting


def confusion_with_void(pred: np.ndarray, gt: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K + 1) counts, ground truth in rows; column K holds pixels predicted void (255).

    Pixels whose ground truth is 255 are skipped.
    """

    p = np.where(np.asarray(pred) == 255, num_classes, pred)
    return confusion_matrix(p, gt, num_classes + 1)[:num_classes]


def crf_confusion(image: np.ndarray, probs: np.ndarray, gt: np.ndarray, params: Any, num_classes: int) -> np.ndarray:
    """One image's CRF refinement and its confusion counts (a joblib task: module-level, small result)."""

    pred = crf_labels(image, probs, params)
    return confusion_with_void(pred, gt, num_classes)


def summarize(cm: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Scores of a (K, K + 1) matrix: a void prediction is a miss, never a false positive."""

    k = len(class_names)
    square = np.zeros((k + 1, k + 1), dtype=np.int64)
    square[:k] = cm
    s = scores(square, [*class_names, "(void)"])
    iou = np.asarray(s["iou"][:k], dtype=np.float64)
    gt_total = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(gt_total > 0, np.diag(cm[:, :k]) / gt_total, np.nan)
    valid = ~np.isnan(iou)
    return {
        "iou": {n: _num(v) for n, v in zip(class_names, iou)},
        "accuracy": {n: _num(v) for n, v in zip(class_names, acc)},
        "miou": _num(iou[valid].mean() if valid.any() else math.nan),
        "pixel_acc": _num(s["pixel_acc"]),
        "mean_acc": _num(s["mean_acc"]),
    }


def _num(v: float) -> float | None:
    """JSON has no NaN: an undefined score (class absent from ground truth and prediction) is null."""
    v = float(v)
    return None if math.isnan(v) else v


# ----------------------------------------------------------------------------- the two modes


class _CocoSource:
    """COCO data for the mIoU modes: the semantic ground truth painted from the instance masks
    (banacli/data/coco.py: smaller instances on top, crowd regions void)."""

    def __init__(self, ds) -> None:
        self.ds = ds
        self.class_names = ds.class_names
        self.ids = list(ds.ids)
        self._index = {sid: i for i, sid in enumerate(ds.ids)}

    def ids_with_gt(self) -> list[str]:
        anns = self.ds.coco.imgToAnns
        return [sid for sid in self.ids
                if any(a.get("segmentation") for a in anns.get(self.ds.coco_ids[sid], []))]

    def sample(self, image_id: str):
        return self.ds.load(self._index[image_id])

    def image_and_gt(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        s = self.sample(image_id)
        return s.image, s.gt


def _coco_source(ctx: StageContext, split: str) -> _CocoSource | None:
    from banacli.data.coco import data_format  # loads torch
    from banacli.runs import open_dataset  # loads torch

    if data_format(ctx.data_root, ctx.config.data) != "coco":
        return None
    return _CocoSource(open_dataset(ctx, split, with_gt=True))


class _Skips:
    """Honours data.on_error: 'raise' re-raises, 'skip' records the image and goes on."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.items: list[tuple[str, str]] = []

    def handle(self, image_id: str, exc: Exception) -> None:
        if self.mode != "skip":
            raise exc
        self.items.append((image_id, str(exc)))


def _eval_seg(ctx: StageContext, cfg: EvalConfig, ids: list[str], class_names: list[str], skips: _Skips,
              advance, coco: _CocoSource | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    from banacli.data.voc import find_gt, find_image, read_image  # loads torch
    from banacli.labeling.workers import lazy_unordered  # loads torch
    from banacli.ops.infer import image_probs  # loads torch
    from banacli.runs import load_segmenter, model_path  # loads torch

    k = len(class_names)
    params = CRFParams.from_list(cfg.crf_params) if cfg.crf else None
    scales = list(cfg.scales) if cfg.ms else [1.0]
    device = ctx.torch_device()
    src = model_path(ctx.run_dir, "seg")
    model, meta = load_segmenter(src, device=device, class_names=class_names)
    norm = meta["normalization"]

    def images():
        for image_id in ids:
            try:
                if coco is not None:
                    image, gt = coco.image_and_gt(image_id)
                else:
                    image = read_image(find_image(ctx.data_root, image_id))
                    gt = read_gt(find_gt(ctx.data_root, image_id), k, image.shape[:2])
            except BanaError as exc:
                skips.handle(image_id, exc)
                advance()
                continue
            probs = image_probs(model, image, norm, device, scales=scales, flip=cfg.flip)  # (K, H, W)
            yield image, probs, gt

    cm = np.zeros((k, k + 1), dtype=np.int64)
    if params is None:
        for _, probs, gt in images():
            cm += confusion_with_void(probs.argmax(0).cpu().numpy(), gt, k)
            advance()
    elif cfg.workers == 1:
        for image, probs, gt in images():
            cm += crf_confusion(image, probs.cpu().numpy(), gt, params, k)
            advance()
    else:
        from joblib import delayed  # loads joblib, for the worker pool only

        # Lazy: joblib pulls the next image (and runs the network on it) only as CRF workers
        # free up, so at most about 2 x workers probability maps are held at once.
        tasks = (delayed(crf_confusion)(image, probs.cpu().numpy(), gt, params, k) for image, probs, gt in images())
        for part in lazy_unordered(tasks, cfg.workers):
            cm += part
            advance()
    settings = {
        "ms": cfg.ms, "scales": scales, "flip": cfg.flip, "crf": cfg.crf,
        "crf_params": list(cfg.crf_params) if cfg.crf else None,
        "model": str(src), "model_sha256": meta["weights_sha256"], "arch": meta["arch"],
        "tau": meta.get("tau"), "device": str(device),
    }
    return cm, settings


def _eval_labels(ctx: StageContext, cfg: EvalConfig, ids: list[str], class_names: list[str], skips: _Skips,
                 advance, coco: _CocoSource | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    from banacli.data.voc import find_gt, load_sample  # loads torch
    from banacli.ops.labelers import box_labeler  # loads torch
    from banacli.runs import RunDir  # loads torch

    k = len(class_names)
    cm = np.zeros((k, k + 1), dtype=np.int64)
    if cfg.labels == "box":
        settings: dict[str, Any] = {"labels": "box", "source": "boxes of ROOT/Annotations (box-as-mask)"}
    else:
        folder = RunDir(ctx.run_dir).label_set(LABEL_FOLDERS[cfg.labels])
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: no pseudo labels (run bana gen-labels --split {cfg.split} first)")
        settings = {"labels": cfg.labels, "source": str(folder)}
    for image_id in ids:
        try:
            if cfg.labels == "box":
                sample = (coco.sample(image_id) if coco is not None
                          else load_sample(ctx.data_root, image_id, class_names[1:], with_gt=True))
                gt = sample.gt
                pred = box_labeler(sample.image, sample.boxes, sample.labels)
            else:
                gt = coco.image_and_gt(image_id)[1] if coco is not None else read_gt(find_gt(ctx.data_root, image_id), k)
                pred = read_prediction(folder / f"{image_id}.png", k, gt.shape)
        except BanaError as exc:
            skips.handle(image_id, exc)
            advance()
            continue
        cm += confusion_with_void(pred, gt, k)
        advance()
    return cm, settings


# ----------------------------------------------------------------------------- the stage


def metrics_path(stage_dir: Path, cfg: EvalConfig) -> Path:
    what = cfg.what if cfg.what == "seg" else f"labels-{cfg.labels}"
    return stage_dir / f"metrics-{what}-{cfg.split}.json"


def print_table(result: dict[str, Any], title: str) -> None:
    """The per-class IoU table and the three summary scores, on standard output."""

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.1f}"

    table = Table(title=title, title_justify="left")
    table.add_column("id", justify="right")
    table.add_column("class")
    table.add_column("IoU %", justify="right")
    table.add_column("accuracy %", justify="right")
    for i, name in enumerate(result["class_names"]):
        table.add_row(str(i), name, pct(result["iou"][name]), pct(result["accuracy"][name]))
    table.add_section()
    table.add_row("", "mIoU", pct(result["miou"]), "")
    table.add_row("", "pixel accuracy", pct(result["pixel_acc"]), "")
    table.add_row("", "mean accuracy", pct(result["mean_acc"]), "")
    Console(highlight=False).print(table)


INSTANCE_FILES = {"ycrf": "Ycrf", "yret": "Yret", "box": "Box", "grabcut": "GrabCut"}


def instance_source(cfg: EvalConfig) -> str:
    return f"labels-{cfg.labels}" if cfg.instances == "labels" else cfg.instances


def run_instances(ctx: StageContext, cfg: EvalConfig) -> None:
    """``--what instances``: COCO mask AP of pseudo instance masks, a model's, or the boxes'."""

    from banacli.instances.coco_ap import (  # loads torch
        METRICS, coco_eval_segm, ground_truth, load_results, model_results, table_row,
    )
    from banacli.instances.pseudo_masks import box_results  # loads torch
    from banacli.runs import RunDir, open_dataset  # loads torch

    t0 = time.perf_counter()
    ds = open_dataset(ctx, cfg.split, with_gt=False)
    gt, missing = ground_truth(ds)
    if not gt["images"]:
        raise DataError(f"{ds.root}: no instance ground truth (SegmentationObject) for any image of split {cfg.split!r}")
    if missing:
        ctx.info(f"eval: {len(missing)} of {len(ds)} images of {cfg.split!r} have no instance masks; left out")
    keep = {im["id"] for im in gt["images"]}
    settings: dict[str, Any] = {"instances": cfg.instances}
    if cfg.instances == "labels":
        label_dir = RunDir(ctx.run_dir).labels
        info_path = label_dir / "instances.json"
        if info_path.is_file():
            made_on = json.loads(info_path.read_text()).get("split")
            if made_on != cfg.split:
                raise ArtifactError(f"{info_path}: instance masks were made for split {made_on!r}, not {cfg.split!r}; "
                                    f"pass --split {made_on} (or run bana gen-labels --split {cfg.split})")
        path = label_dir / f"instances_{INSTANCE_FILES[cfg.labels]}.json"
        results = load_results(path, what=f"run bana gen-labels --split {cfg.split} first")
        settings.update(labels=cfg.labels, source=str(path))
    elif cfg.instances == "box":
        results = box_results(ds)
        settings["source"] = "every box's rectangle, score 1"
    else:
        results, extra = model_results(ds, ctx.run_dir, ctx.torch_device())
        settings.update(extra)
    results = [r for r in results if r["image_id"] in keep]
    scores = coco_eval_segm(gt, results)
    result: dict[str, Any] = {
        "what": "instances", "source": instance_source(cfg), "split": cfg.split, "dataset": str(ds.root),
        **{m: scores[m] for m in METRICS}, "detections": scores["detections"],
        "ground_truth_instances": len(gt["annotations"]), "images": len(gt["images"]),
        "images_without_instance_gt": len(missing), "cocoeval_summary": scores["summary"],
        "settings": settings, "seconds": round(time.perf_counter() - t0, 2), "bana_version": __version__,
    }
    out = ctx.stage_dir / f"metrics-instances-{instance_source(cfg)}-{cfg.split}.json"
    atomic_write_json(out, result)
    if not ctx.quiet:
        t = Table(title=f"instance masks ({instance_source(cfg)}) on {cfg.split}, {len(gt['images'])} images: "
                        "COCO mask AP %", title_justify="left")
        t.add_column("")
        for m in METRICS:
            t.add_column(m, justify="right")
        t.add_row(instance_source(cfg), *table_row(scores))
        Console(highlight=False).print(t)
    ap = scores["AP"]
    ctx.info(f"eval: mask AP {100 * ap:.1f} on {len(gt['images'])} images of {cfg.split}; wrote {out}"
             if ap is not None else f"eval: no ground truth instances; wrote {out}")


def run(ctx: StageContext) -> None:
    from banacli.data.voc import GT_DIRS, find_gt, read_split, resolve_classes  # loads torch

    cfg: EvalConfig = ctx.section
    if cfg.what == "instances":
        return run_instances(ctx, cfg)
    if cfg.what == "seg":  # validate before loading anything heavy
        if cfg.ms and (not cfg.scales or any(s <= 0 for s in cfg.scales)):
            raise ConfigError(f"eval.scales must be positive numbers, got {cfg.scales}")
        if cfg.crf:
            CRFParams.from_list(cfg.crf_params)
    root = ctx.data_root
    coco = _coco_source(ctx, cfg.split)  # None for VOC data
    if coco is not None:
        class_names, ids, with_gt = coco.class_names, coco.ids, coco.ids_with_gt()
    else:
        class_names = ["background", *resolve_classes(root, ctx.config.data.classes)]
        ids = read_split(root, cfg.split)
        with_gt = [i for i in ids if find_gt(root, i) is not None]
    if not with_gt:
        raise DataError(f"{root / GT_DIRS[0]}: no ground-truth mask for any of the {len(ids)} images of "
                        f"split {cfg.split!r}; nothing to evaluate")
    if len(with_gt) < len(ids):
        ctx.info(f"eval: {len(ids) - len(with_gt)} of {len(ids)} images of {cfg.split!r} have no ground truth; left out")

    skips = _Skips(ctx.config.data.on_error)
    what = "segmenter" if cfg.what == "seg" else f"{cfg.labels} labels"
    t0 = time.perf_counter()
    with ctx.progress() as prog:
        task = prog.add_task(f"eval {what}", total=len(with_gt), status="")
        advance = lambda: prog.advance(task)  # noqa: E731
        evaluate = _eval_seg if cfg.what == "seg" else _eval_labels
        cm, settings = evaluate(ctx, cfg, with_gt, class_names, skips, advance, coco=coco)
    seconds = time.perf_counter() - t0
    evaluated = len(with_gt) - len(skips.items)
    if evaluated == 0:
        raise DataError(f"eval: every image of {cfg.split!r} was skipped (first problem: {skips.items[0][1]})")

    result: dict[str, Any] = {
        "what": cfg.what,
        "labels": cfg.labels if cfg.what == "labels" else None,
        "split": cfg.split,
        "dataset": str(root),
        "class_names": class_names,
        **summarize(cm, class_names),
        "confusion_matrix": cm[:, : len(class_names)].tolist(),
        "predicted_void": cm[:, len(class_names)].tolist(),
        "confusion_matrix_axes": "rows = ground truth, columns = prediction; predicted_void: "
                                 "ground-truth pixels of each class labelled 255",
        "pixels": int(cm.sum()),
        "images": evaluated,
        "images_in_split": len(ids),
        "images_without_gt": len(ids) - len(with_gt),
        "skipped": [{"id": i, "reason": r} for i, r in skips.items],
        "settings": settings,
        "seconds": round(seconds, 2),
        "bana_version": __version__,
    }
    out = metrics_path(ctx.stage_dir, cfg)
    atomic_write_json(out, result)
    if skips.items:
        ctx.info(f"eval: skipped {len(skips.items)} image(s); first: {skips.items[0][1]}")
    if not ctx.quiet:
        print_table(result, f"{what} on {cfg.split} ({evaluated} images)")
    miou = result["miou"]
    ctx.info(f"eval: mIoU {100 * miou:.2f}% on {evaluated} images of {cfg.split}; wrote {out}"
             if miou is not None else f"eval: no class present; wrote {out}")


stage = Stage(
    name="eval",
    help="Evaluate the segmenter or the pseudo labels against the ground truth (mIoU; writes RUN/eval/).",
    run=run,
    section="eval",
    config=EvalConfig,
)

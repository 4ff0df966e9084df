"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel and mean accuracy.

Conventions (used for segmentation results and pseudo labels alike, docs/method.md, "Evaluation"):

- The confusion matrix has ground truth in rows and prediction in columns:
  ``cm[g, p]`` counts pixels of ground-truth class g predicted as p.
- Pixels whose ground truth is ``ignore_index`` (255) are skipped. Every other pixel must
  have a prediction in [0, K) (a void prediction is rejected rather than silently dropped,
  which would inflate the scores; map it to a class first).
- IoU_c = TP / (TP + FP + FN). A class absent from both the ground truth and the prediction
  has an undefined IoU (NaN) and is left out of the mean; a class absent from the ground
  truth but predicted somewhere has IoU 0. Mean accuracy likewise averages recall only over
  classes present in the ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IGNORE_INDEX = 255

__all__ = ["ConfusionMeter", "confusion_matrix", "scores"]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: Any, gt: Any, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(K, K) int64 confusion matrix, rows = ground truth, columns = prediction.

    ``pred`` and ``gt`` are integer arrays (numpy or torch) of the same shape, any number of
    dimensions (one image or a batch). See the module doc for void handling.
    """
    p = _to_numpy(pred).astype(np.int64, copy=False).ravel()
    g = _to_numpy(gt).astype(np.int64, copy=False).ravel()
    if p.shape != g.shape:
        raise ValueError(f"prediction has {p.size} pixels but ground truth has {g.size}")
    keep = g != ignore_index
    p, g = p[keep], g[keep]
    if g.size and (g.min() < 0 or g.max() >= num_classes):
        raise ValueError(f"ground truth holds class ids outside [0, {num_classes}) other than {ignore_index}")
    if p.size and (p.min() < 0 or p.max() >= num_classes):
        raise ValueError(f"prediction holds class ids outside [0, {num_classes}) at labelled pixels")
    cm = np.bincount(num_classes * g + p, minlength=num_classes * num_classes)
    return cm.reshape(num_classes, num_classes).astype(np.int64)


def scores(cm: np.ndarray, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores from a confusion matrix: ``iou`` (list, NaN for classes absent from both gt and
    prediction), ``miou`` (mean over non-NaN), ``pixel_acc``, ``mean_acc`` (mean recall over
    classes present in gt) and ``per_class`` (name -> IoU; names default to ``"0"``, ``"1"``...).
    """
    cmf = np.asarray(cm, dtype=np.float64)
    k = cmf.shape[0]
    if cmf.shape != (k, k):
        raise ValueError(f"confusion matrix must be square, got {cm.shape}")
    if class_names is not None and len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} classes")
    tp = np.diag(cmf)
    gt_total = cmf.sum(axis=1)
    pred_total = cmf.sum(axis=0)
    union = gt_total + pred_total - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        recall = np.where(gt_total > 0, tp / gt_total, np.nan)
    total = gt_total.sum()
    names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    valid = ~np.isnan(iou)
    return {
        "iou": [float(v) for v in iou],
        "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
        "pixel_acc": float(tp.sum() / total) if total > 0 else float("nan"),
        "mean_acc": float(np.nanmean(recall)) if (~np.isnan(recall)).any() else float("nan"),
        "per_class": {n: float(v) for n, v in zip(names, iou)},
    }


class ConfusionMeter:
    """Accumulates a confusion matrix over many images (or workers, via :meth:`merge`)."""

    def __init__(
        self,
        num_classes: int,
        *,
        ignore_index: int = IGNORE_INDEX,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else None
        self.cm = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, gt: Any) -> None:
        """Add one prediction / ground-truth pair (any matching shapes)."""
        self.cm += confusion_matrix(pred, gt, self.num_classes, self.ignore_index)

    def merge(self, other: ConfusionMeter | np.ndarray) -> ConfusionMeter:
        """Add another meter's (or a raw matrix's) counts into this one; returns self."""
        cm = other.cm if isinstance(other, ConfusionMeter) else np.asarray(other, dtype=np.int64)
        if cm.shape != self.cm.shape:
            raise ValueError(f"cannot merge a {cm.shape} confusion matrix into {self.cm.shape}")
        self.cm += cm
        return self

    def reset(self) -> None:
        self.cm[:] = 0

    def scores(self) -> dict[str, Any]:
        return scores(self.cm, self.class_names)

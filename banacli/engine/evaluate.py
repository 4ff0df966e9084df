"""Evaluation during and after training: box classification accuracy / mAP of the stage-1
classifier, single-scale mIoU of a segmenter, and the AP of one class from ranked scores."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from banacli.boxes import definite_background_tensor
from banacli.models.normalize import normalize
from banacli.ops.infer import predict_logits
from banacli.ops.metrics import confusion_matrix
from banacli.ops.metrics import scores as confusion_scores


def average_precision(scores: Any, positives: Any) -> float:
    """AP of one class: mean of the precision at the rank of each positive (scores descending);
    NaN when there is no positive."""
    scores, positives = np.asarray(scores, dtype=np.float64), np.asarray(positives, dtype=bool)
    if not positives.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = positives[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


COVERED = 0.3  # a box is "covered" when another box of its image overlaps this share of its area


def covered_share(boxes: Any) -> np.ndarray:
    """Per box (K, 4) ``x0 y0 x1 y1``: the largest share of its area that one other box of the same
    image overlaps (0 for a box alone)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(b) < 2:
        return np.zeros(len(b))
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-12)
    share = iw * ih / area[:, None]
    np.fill_diagonal(share, 0.0)
    return share.max(axis=1)


def box_scores(model: nn.Module, ds, norm: dict, device: torch.device, *, grid_size: int, roi_size: int,
               pooling: str, bg_fallback: float) -> Iterator[tuple[Any, np.ndarray]]:
    """Per image of ``ds`` with boxes: ``(sample, (K, C) softmax class scores of its boxes)`` from the
    stage-1 classifier in eval mode on the whole image, each box's logits the mean of its R x R bins'."""
    r2 = roi_size * roi_size
    for i in range(len(ds)):
        s = ds.load(i)
        if len(s.labels) == 0:
            continue
        image = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float().to(device)
        boxes = torch.from_numpy(np.asarray(s.boxes, dtype=np.float32))
        valid = torch.ones(1, s.height, s.width, dtype=torch.bool)
        bboxes = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        bg = definite_background_tensor(bboxes, valid)
        out = model(normalize(image, norm), bboxes.to(device), torch.as_tensor(s.labels).to(device), bg.to(device),
                    grid_size=grid_size, roi_size=roi_size, pooling=pooling, bg_fallback=bg_fallback)
        logits = out["logits"][: len(boxes) * r2].reshape(len(boxes), r2, -1).mean(dim=1)
        yield s, torch.softmax(logits.float(), dim=1).cpu().numpy()


def classify_boxes(model: nn.Module, ds, norm: dict, device: torch.device, *, grid_size: int, roi_size: int,
                   pooling: str, bg_fallback: float) -> dict[str, float]:
    """Box classification on a dataset with the stage-1 classifier (:func:`box_scores`). Returns
    ``accuracy`` (argmax over the object classes equals the box's class), ``map`` (mean over
    classes with boxes of the AP of the class's softmax score) and ``boxes``; ``accuracy_clear`` /
    ``accuracy_covered`` with ``boxes_clear`` / ``boxes_covered`` split the boxes by
    :func:`covered_share` below / at least :data:`COVERED` (another object's box over much of the
    box makes its class ambiguous for a pooled box feature)."""
    all_scores, all_labels, all_covered = [], [], []
    for s, scores in box_scores(model, ds, norm, device, grid_size=grid_size, roi_size=roi_size, pooling=pooling,
                                bg_fallback=bg_fallback):
        all_scores.append(scores)
        all_labels.append(np.asarray(s.labels))
        all_covered.append(covered_share(s.boxes) >= COVERED)
    if not all_scores:
        return {"accuracy": float("nan"), "map": float("nan"), "boxes": 0}
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    pred = scores[:, 1:].argmax(axis=1) + 1
    aps = [average_precision(scores[:, c], labels == c) for c in range(1, scores.shape[1])]
    aps = [a for a in aps if a == a]
    right, covered = pred == labels, np.concatenate(all_covered)
    return {"accuracy": float(right.mean()), "map": float(np.mean(aps)) if aps else float("nan"),
            "boxes": int(len(labels)),
            "accuracy_clear": float(right[~covered].mean()) if (~covered).any() else float("nan"),
            "boxes_clear": int((~covered).sum()),
            "accuracy_covered": float(right[covered].mean()) if covered.any() else float("nan"),
            "boxes_covered": int(covered.sum())}


def segment_miou(model: nn.Module, ds, norm: dict, device: torch.device, num_classes: int) -> dict[str, float]:
    """Single-scale mIoU (no flip, no CRF) of a segmenter on a dataset with ground truth; also
    the mIoU of predicting background everywhere (``prior``) and the fraction of labelled pixels
    predicted as an object (``foreground``)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    prior = np.zeros_like(cm)
    images = 0
    for i in range(len(ds)):
        s = ds.load(i)
        if s.gt is None:
            continue
        images += 1
        image = torch.from_numpy(np.ascontiguousarray(s.image)).permute(2, 0, 1)[None].float().to(device)
        pred = predict_logits(model, normalize(image, norm), scales=(1.0,), flip=False)[0].argmax(0).cpu().numpy()
        cm += confusion_matrix(pred, s.gt, num_classes)
        prior += confusion_matrix(np.zeros_like(s.gt), s.gt, num_classes)
    labelled = max(1, int(cm.sum()))
    if images == 0:
        return {"miou": float("nan"), "prior": float("nan"), "foreground": 0.0, "images": 0}
    return {"miou": float(confusion_scores(cm)["miou"]),
            "prior": float(confusion_scores(prior)["miou"]),
            "foreground": float(cm[:, 1:].sum() / labelled), "images": images}

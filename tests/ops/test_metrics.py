"""Confusion matrix and scores against an independent, loop-based computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from banacli.ops.metrics import ConfusionMeter, confusion_matrix, scores

V = 255


def _case() -> tuple[np.ndarray, np.ndarray]:
    gt = np.array(
        [
            [0, 0, 1, 1, V],
            [0, 2, 2, 1, V],
            [0, 0, 2, 2, 1],
        ]
    )
    pred = np.array(
        [
            [0, 1, 1, 1, 3],  # the void-gt pixel predicted 3 must not count
            [0, 2, 0, 1, 0],
            [0, 0, 2, 3, 1],
        ]
    )
    return pred, gt


def _set_iou(pred: np.ndarray, gt: np.ndarray, c: int) -> float:
    """IoU as set operations over labelled pixel coordinates, with plain loops."""
    p_set, g_set = set(), set()
    for (i, j), g in np.ndenumerate(gt):
        if g == V:
            continue
        if g == c:
            g_set.add((i, j))
        if pred[i, j] == c:
            p_set.add((i, j))
    union = p_set | g_set
    return len(p_set & g_set) / len(union) if union else math.nan


def test_confusion_matrix_by_hand() -> None:
    pred, gt = _case()
    cm = confusion_matrix(pred, gt, 5)
    expected = np.zeros((5, 5), np.int64)
    for g, p in zip(gt.ravel(), pred.ravel()):
        if g != V:
            expected[g, p] += 1
    assert cm.dtype == np.int64 and cm.shape == (5, 5)
    assert np.array_equal(cm, expected)
    assert cm[0].tolist() == [4, 1, 0, 0, 0]  # rows are ground truth
    assert cm[2].tolist() == [1, 0, 2, 1, 0]
    assert cm.sum() == 13
    # torch input (uint8, batched) gives the same counts
    cm_t = confusion_matrix(torch.from_numpy(pred).to(torch.uint8)[None], torch.from_numpy(gt).to(torch.uint8)[None], 5)
    assert np.array_equal(cm_t, cm)


def test_scores_match_set_iou_and_skip_absent_classes() -> None:
    pred, gt = _case()
    names = ["bg", "a", "b", "c", "d"]
    out = scores(confusion_matrix(pred, gt, 5), names)
    for c in range(5):
        ref = _set_iou(pred, gt, c)
        if math.isnan(ref):
            assert math.isnan(out["iou"][c])
        else:
            assert out["iou"][c] == pytest.approx(ref)
    # by hand: bg 4/(5+5-4), a 4/(4+5-4), b 2/(4+2-2), c (predicted once, never in gt) 0,
    # d absent from both -> NaN, left out of the mean
    assert out["iou"][:4] == pytest.approx([4 / 6, 4 / 5, 2 / 4, 0.0])
    assert math.isnan(out["iou"][4]) and math.isnan(out["per_class"]["d"])
    assert out["miou"] == pytest.approx((4 / 6 + 4 / 5 + 2 / 4 + 0.0) / 4)
    assert out["pixel_acc"] == pytest.approx(10 / 13)
    assert out["mean_acc"] == pytest.approx((4 / 5 + 4 / 4 + 2 / 4) / 3)  # recall over gt classes
    assert out["per_class"]["a"] == pytest.approx(4 / 5)


def test_meter_accumulates_and_merges() -> None:
    pred, gt = _case()
    a = ConfusionMeter(5)
    a.update(pred, gt)
    a.update(torch.from_numpy(pred), torch.from_numpy(gt))
    b = ConfusionMeter(5)
    b.update(pred[:1], gt[:1])
    a.merge(b)
    assert np.array_equal(a.cm, 2 * confusion_matrix(pred, gt, 5) + confusion_matrix(pred[:1], gt[:1], 5))
    assert a.scores()["miou"] == pytest.approx(scores(a.cm)["miou"])
    a.reset()
    assert a.cm.sum() == 0


def test_bad_ids_are_rejected() -> None:
    with pytest.raises(ValueError, match="ground truth"):
        confusion_matrix(np.zeros(3, int), np.array([0, 7, 1]), 3)
    with pytest.raises(ValueError, match="prediction"):
        confusion_matrix(np.array([0, V, 1]), np.array([0, 1, 1]), 3)
    with pytest.raises(ValueError, match="pixels"):
        confusion_matrix(np.zeros(3, int), np.zeros(4, int), 3)

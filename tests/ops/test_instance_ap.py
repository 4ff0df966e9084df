"""COCO mask AP: a hand-counted case, pycocotools against an independent count, the writer's rule."""

from __future__ import annotations

import numpy as np
import pytest

from banacli.data.synth_coco import encode_mask
from banacli.instances.coco_ap import coco_eval_segm
from banacli.instances.pseudo_masks import mask_iou


def square(y: int, x: int, side: int, h: int = 64, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[y : y + side, x : x + side] = True
    return m


def gt_dict(masks: list[np.ndarray], cats: list[int], image_id=1) -> dict:
    h, w = masks[0].shape
    return {"images": [{"id": image_id, "width": w, "height": h, "file_name": "x"}],
            "categories": [{"id": c, "name": f"c{c}"} for c in sorted(set(cats))],
            "annotations": [{"id": i + 1, "image_id": image_id, "category_id": c, "segmentation": encode_mask(m),
                             "area": float(m.sum()), "bbox": [0, 0, 1, 1], "iscrowd": 0}
                            for i, (m, c) in enumerate(zip(masks, cats))]}


def dets(masks: list[np.ndarray], cats: list[int], scores: list[float], image_id=1) -> list[dict]:
    return [{"image_id": image_id, "category_id": c, "segmentation": encode_mask(m), "score": s}
            for m, c, s in zip(masks, cats, scores)]


def test_hand_counted_ap():
    """Two ground-truth squares A, B (20 x 20 = 400 px: 'small'); detections by score: A exactly
    (TP), a square on empty ground (FP), B exactly (TP). Precision after each: 1, 1/2, 2/3 at
    recall 1/2, 1/2, 1. Interpolated precision is 1 for recall <= 0.5 (51 of COCO's 101 recall
    points) and 2/3 above (50 points): AP = (51 + 50 * 2/3) / 101 at every IoU threshold, as the
    matches have IoU 1 or 0."""
    a, b, stray = square(0, 0, 20), square(30, 30, 20), square(0, 40, 20)
    scores = coco_eval_segm(gt_dict([a, b], [3, 3]), dets([a, stray, b], [3, 3, 3], [0.9, 0.8, 0.7]))
    expected = (51 + 50 * 2 / 3) / 101
    for m in ("AP", "AP50", "AP75", "APS"):
        assert scores[m] == pytest.approx(expected, abs=1e-6)
    assert scores["APM"] is None and scores["APL"] is None  # no medium / large ground truth
    # the same detections with the stray one ranked last: precision 1, 1 at recall 1/2, 1 -> AP 1
    again = coco_eval_segm(gt_dict([a, b], [3, 3]), dets([a, stray, b], [3, 3, 3], [0.9, 0.1, 0.7]))
    assert again["AP"] == pytest.approx(1.0)


def independent_ap(gt_masks, det_masks, det_scores) -> float:
    """COCO's AP (one class, one image, no crowd) counted from scratch: greedy matching in
    score order (each detection takes the unmatched ground truth of highest IoU >= t), precision
    made monotone from the right, sampled at 101 recall points, averaged over t = .50:.05:.95."""
    order = np.argsort(-np.asarray(det_scores), kind="stable")
    g = np.stack(gt_masks).reshape(len(gt_masks), -1)
    aps = []
    for t in np.linspace(0.5, 0.95, 10):
        taken = np.zeros(len(gt_masks), bool)
        tp = []
        for d in order:
            m = det_masks[d].reshape(-1)
            ious = (g & m).sum(1) / np.maximum((g | m).sum(1), 1)
            ious[taken] = -1
            best = int(ious.argmax())
            ok = ious[best] >= t - 1e-12
            if ok:
                taken[best] = True
            tp.append(ok)
        tp = np.asarray(tp, float)
        ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
        rec, prec = ctp / len(gt_masks), ctp / (ctp + cfp)
        prec = np.maximum.accumulate(prec[::-1])[::-1]
        pts = [prec[np.searchsorted(rec, r, side="left")] if r <= rec[-1] else 0.0 for r in np.linspace(0, 1, 101)]
        aps.append(np.mean(pts))
    return float(np.mean(aps))


def test_pycocotools_agrees_with_an_independent_count():
    rng = np.random.default_rng(0)
    gts = [square(int(y), int(x), int(s)) for y, x, s in rng.integers([0, 0, 8], [40, 40, 24], size=(5, 3))]
    dts, scores = [], []
    for g in gts:  # each object found twice with shifted masks, plus noise detections
        for _ in range(2):
            dy, dx = rng.integers(-4, 5, size=2)
            dts.append(np.roll(g, (dy, dx), axis=(0, 1)))
            scores.append(float(rng.random()))
    for _ in range(3):
        y, x, s = rng.integers([0, 0, 6], [50, 50, 14])
        dts.append(square(int(y), int(x), int(s)))
        scores.append(float(rng.random()))
    got = coco_eval_segm(gt_dict(gts, [1] * len(gts)), dets(dts, [1] * len(dts), scores))
    assert got["AP"] == pytest.approx(independent_ap(gts, dts, scores), abs=1e-9)
    assert 0 < got["AP"] < got["AP50"] <= 1


def test_score_is_agreement_of_the_two_sets():
    a = np.stack([square(0, 0, 10), square(0, 0, 10), np.zeros((64, 64), bool)])
    b = np.stack([square(0, 0, 10), square(0, 5, 10), np.zeros((64, 64), bool)])
    np.testing.assert_allclose(mask_iou(a, b), [1.0, 50 / 150, 0.0])


def test_detections_for_unknown_images_are_an_error():
    from banacli.errors import ArtifactError

    a = square(0, 0, 20)
    with pytest.raises(ArtifactError, match="not in the ground truth"):
        coco_eval_segm(gt_dict([a], [1]), dets([a], [1], [1.0], image_id=5))

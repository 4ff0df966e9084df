"""Box and GrabCut baselines."""

from __future__ import annotations

import numpy as np

from banacli.ops.labelers import box_labeler, grabcut_labeler


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _disc_scene(h: int = 64, w: int = 80):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:h, :w]
    disc = (yy - 30) ** 2 + (xx - 42) ** 2 <= 16**2
    image = np.empty((h, w, 3), dtype=np.uint8)
    image[...] = (60, 140, 60)
    image[disc] = (200, 60, 40)
    noise = rng.integers(-12, 13, image.shape)
    image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
    box = np.array([[22, 10, 63, 51]], dtype=float)  # disc spans x 26..58, y 14..46
    return image, disc, box


def test_box_labeler_draws_smaller_boxes_on_top():
    image = np.zeros((20, 20, 3), dtype=np.uint8)
    boxes = [[5, 5, 8, 8], [0, 0, 15, 15]]  # small first in the input
    out = box_labeler(image, boxes, [2, 1])
    assert out.dtype == np.uint8 and out.shape == (20, 20)
    assert np.all(out[5:8, 5:8] == 2)
    assert out[0, 0] == 1 and out[14, 14] == 1
    assert np.all(out[15:, :] == 0) and np.all(out[:, 15:] == 0)


def test_grabcut_beats_box_on_a_disc():
    image, disc, box = _disc_scene()
    as_box = box_labeler(image, box, [3]) == 3
    cut = grabcut_labeler(image, box, [3])
    assert set(np.unique(cut)) <= {0, 3}
    assert not cut[:10].any()  # nothing outside the box
    iou_cut, iou_box = _iou(cut == 3, disc), _iou(as_box, disc)
    assert iou_cut > 0.9 and iou_cut > iou_box + 0.1


def test_grabcut_overlapping_boxes_and_degenerate_boxes():
    image, disc, box = _disc_scene()
    boxes = np.vstack([box, [[40, 28, 42.5, 30]], [[0, 0, 80, 64]]])
    out = grabcut_labeler(image, boxes, [3, 5, 7], iterations=2)
    # the tiny box (smallest, drawn last) is kept whole; the whole-image box falls back
    # to the box, then the disc box is cut on top of it
    assert np.all(out[28:30, 40:43] == 5)
    assert out[0, 0] == 7
    assert (out == 3).sum() > 0.8 * disc.sum()

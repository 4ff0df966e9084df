"""labels.box_convention: voc (default) and authors (their stage 2 extents, bit for bit)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from banacli.boxes import authors_extents
from banacli.errors import ConfigError
from banacli.ops.pseudo import (
    FeatureField,
    PseudoLabelParams,
    compute_unaries,
    generate_pseudo_labels,
)


def _round_trip(v: float, size: int) -> int:
    """The authors' loader and stage 2 for one coordinate, in plain numpy float32:
    b = v / n - 1 (dataset), b * n + n (stage 2), truncated toward zero (.long())."""
    n = np.float32((size - 1) / 2)
    b = np.float32(np.float32(v) / n) - np.float32(1)
    back = np.float32(np.float32(b * n) + n)
    return int(back)  # truncation toward zero, as .long()


def test_round_trip_matches_an_independent_float32_computation():
    truncated = []
    for size in range(30, 120):
        vals = np.arange(1, size + 1, dtype=np.float64)
        # x1 = v (xmax), x0 = v - 1 (xmin = v): both pass through the round trip
        boxes = np.stack([vals - 1, vals - 1, vals, vals], axis=1)
        ext = authors_extents(boxes, size, size)
        want = np.array([_round_trip(v, size) for v in vals])
        np.testing.assert_array_equal(ext[:, 2], want)
        np.testing.assert_array_equal(ext[:, 0], want)
        truncated += [(size, int(v)) for v, w in zip(vals, want) if w != v]
    assert truncated, "no coordinate truncated: the test would not show the round trip"
    assert (46, 10) in truncated and _round_trip(10, 46) == 9


# A 40 x 46 image; one object of class 1 fills its box exactly: x0..x1 = 2..10, y0..y1 = 4..20
# (VOC XML: xmin 3, ymin 5, xmax 10, ymax 20). At width 46 the round trip truncates xmax 10 -> 9.
H, W = 40, 46
BOX = np.array([[2, 4, 10, 20]], dtype=np.float64)


def _scene():
    image = np.full((H, W, 3), 120, np.uint8)
    image[4:20, 2:10] = (220, 30, 30)
    feats = torch.zeros(3, H, W)
    feats[0] = 1.0
    feats[:, 4:20, 2:10] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]
    weight = torch.eye(3)[:2]
    return image, feats, weight


def test_authors_first_row_and_column_and_truncated_edge_are_background():
    image, feats, weight = _scene()
    assert [_round_trip(v, W) for v in (3, 10)] == [3, 9]
    assert [_round_trip(v, H) for v in (5, 20)] == [5, 20]
    voc = generate_pseudo_labels(image, feats, weight, BOX, [1])
    auth = generate_pseudo_labels(image, feats, weight, BOX, [1], PseudoLabelParams(box_convention="authors"))
    want_voc = np.zeros((H, W), np.uint8)
    want_voc[4:20, 2:10] = 1
    # authors: [ymin:ymax, xmin:xmax] = rows 5..19, columns 3..8 (xmax truncated to 9)
    want_auth = np.zeros((H, W), np.uint8)
    want_auth[5:20, 3:9] = 1
    for out, want in ((voc, want_voc), (auth, want_auth)):
        np.testing.assert_array_equal(out.ycrf, want)
        np.testing.assert_array_equal(out.yret, want)
    # the first row, first column and the truncated last column of the object are background
    assert (auth.ycrf[4, 2:10] == 0).all() and (auth.ycrf[4:20, 2] == 0).all() and (auth.ycrf[4:20, 9] == 0).all()
    # background unary, queries and "outside the boxes" keep the full box in both conventions
    np.testing.assert_array_equal(auth.u0, voc.u0)
    np.testing.assert_array_equal(auth.attention, voc.attention)
    outside = np.ones((H, W), bool)
    outside[4:20, 2:10] = False
    assert (auth.correlations[0][outside] == 1).all() and (auth.correlations[0][~outside] < 1).all()
    # CAM support: the authors' extent only
    assert (auth.cams[1][4, :] == 0).all() and (auth.cams[1][:, 9] == 0).all() and auth.cams[1][5, 3] == 1


def test_authors_overlapping_boxes_later_box_wins():
    # one class, two overlapping boxes; the raw CAM is 1 on the overlap, 4 elsewhere in box 2
    feats = torch.zeros(2, 24, 24)
    feats[1] = 1.0
    feats[1, 8:16, 12:20] = 4.0
    feats[1, 8:16, 8:12] = 1.0  # overlap columns 8..11
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    boxes = np.array([[2, 2, 12, 16], [8, 8, 20, 16]], dtype=np.float64)  # box 2 drawn after box 1
    field = FeatureField(feats, (24, 24))
    att = np.zeros((24, 24), np.float32)
    voc = compute_unaries(field, weight, boxes, [1, 1], att)
    auth = compute_unaries(field, weight, boxes, [1, 1], att, box_convention="authors")
    # voc: max over overlapping boxes: box 1 (max 1) gives 1
    assert voc.cams[1][10, 10] == pytest.approx(1.0)
    # authors: box 2 (its max 4) is written last: 1 / 4
    assert auth.cams[1][10, 10] == pytest.approx(0.25)
    # box 1 alone keeps its own normalisation
    assert auth.cams[1][5, 5] == pytest.approx(1.0)


def test_box_convention_is_validated():
    with pytest.raises(ConfigError):
        PseudoLabelParams(box_convention="coco")

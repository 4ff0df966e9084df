"""Stage-2 pseudo labels (docs/method.md, "Stage 2", steps 1–9) on hand-built and random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from banacli.boxes import box_extents
from banacli.errors import ConfigError, DataError
from banacli.ops.pseudo import (
    FeatureField,
    PseudoLabelParams,
    background_attention,
    compute_unaries,
    attention_is_degenerate,
    attention_kept_share,
    generate_pseudo_labels,
    image_attention_kept,
)

# --------------------------------------------------------------------------- hand-built scene
#
# 48×64 image, flat grey background. Object 1 (red) rows 12..27, cols 10..19 inside box 1
# (x 6..29, y 8..33); object 2 (blue) rows 20..35, cols 36..51 inside box 2 (x 24..57,
# y 16..41). The boxes overlap on background only. Features are given at full resolution
# (upsampling to the same size is the identity): background e0, object 1 e1, object 2 e2;
# classifier weights w_c = e_c.

H, W = 48, 64
OBJ1 = (slice(12, 28), slice(10, 20))
OBJ2 = (slice(20, 36), slice(36, 52))
BOXES = np.array([[6, 8, 30, 34], [24, 16, 58, 42]], dtype=np.float64)
LABELS = np.array([1, 2])


def _scene(full_res: bool = True):
    image = np.full((H, W, 3), 120, dtype=np.uint8)
    image[OBJ1] = (220, 30, 30)
    image[OBJ2] = (30, 30, 220)
    feats = torch.zeros(4, H, W)
    feats[0] = 1.0
    feats[:, OBJ1[0], OBJ1[1]] = torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None, None]
    feats[:, OBJ2[0], OBJ2[1]] = torch.tensor([0.0, 0.0, 1.0, 0.0])[:, None, None]
    weight = torch.eye(4)[:3]  # (L+1 = 3, C = 4)
    expected = np.zeros((H, W), dtype=np.uint8)
    expected[OBJ1] = 1
    expected[OBJ2] = 2
    return image, feats, weight, expected


def _inside_mask():
    m = np.zeros((H, W), dtype=bool)
    for x0, y0, x1, y1 in BOXES.astype(int):
        m[y0:y1, x0:x1] = True
    return m


def test_hand_built_scene_gives_known_ycrf_and_yret():
    image, feats, weight, expected = _scene()
    out = generate_pseudo_labels(image, feats, weight, BOXES, LABELS)
    np.testing.assert_array_equal(out.ycrf, expected)
    np.testing.assert_array_equal(out.yret, expected)
    assert not out.unreliable.any()
    assert out.classes == (0, 1, 2)
    inside = _inside_mask()
    bg_in_box = inside & (expected == 0)
    # u0: 1 on background-like pixels (inside and outside boxes), 0 on the objects.
    np.testing.assert_allclose(out.u0[bg_in_box], 1.0, atol=1e-6)
    np.testing.assert_allclose(out.u0[~inside], 1.0)
    np.testing.assert_allclose(out.u0[expected > 0], 0.0, atol=1e-6)
    # u_c: 1 on its object, 0 elsewhere (also 0 on the other box's object).
    np.testing.assert_allclose(out.cams[1][OBJ1], 1.0, atol=1e-6)
    np.testing.assert_allclose(out.cams[2][OBJ2], 1.0, atol=1e-6)
    assert out.cams[1][expected != 1].max() < 1e-6
    # Yret correlations: C_0 = 1 outside the boxes; foreground 0 outside its boxes.
    assert np.all(out.correlations[0][~inside] == 1.0)
    assert out.correlations[2][:, :24].max() == 0.0


def test_hand_built_scene_low_resolution_features():
    """Same scene from stride-8-like features: labels stay on the objects after upsampling."""
    image, feats, weight, expected = _scene()
    # Image 49×65 ↔ features 7×9 (align_corners: stride 8); objects on feature-grid lines.
    image = np.full((49, 65, 3), 120, dtype=np.uint8)
    image[16:33, 8:25] = (220, 30, 30)
    low = torch.zeros(4, 7, 9)
    low[0] = 1.0
    low[:, 2:5, 1:4] = torch.tensor([0.0, 1.0, 0.0, 0.0])[:, None, None]
    boxes = np.array([[0, 8, 40, 41]], dtype=np.float64)
    out = generate_pseudo_labels(image, low, weight, boxes, [1])
    truth = np.zeros((49, 65), dtype=np.uint8)
    truth[16:33, 8:25] = 1
    assert (out.ycrf == truth).mean() > 0.98
    # Yret uses only the (blurred) features: f = (1 − t) e1 + t e0 across the 8-pixel
    # ramp around the object, so retrieval keeps pixels with t < 1/2, up to 4 pixels beyond
    # the object (the paper's remark that Yret is coarser; corners are rounded).
    assert np.all(out.yret[truth == 1] == 1)
    halo = np.zeros((49, 65), dtype=bool)
    halo[12:37, 4:29] = True
    assert not out.yret[~halo].any()
    np.testing.assert_array_equal(np.flatnonzero(out.yret[24]), np.arange(5, 28))
    np.testing.assert_array_equal(np.flatnonzero(out.yret[:, 16]), np.arange(13, 36))


def test_class_agnostic_mode_needs_no_weights():
    image, feats, _, expected = _scene()
    params = PseudoLabelParams(class_agnostic=True)
    out = generate_pseudo_labels(image, feats, None, BOXES, LABELS, params)
    np.testing.assert_array_equal(out.ycrf, expected)
    np.testing.assert_array_equal(out.yret, expected)
    inside = _inside_mask()
    # 1 − u0 on each class's boxes, 0 outside them.
    box1 = np.zeros((H, W), dtype=bool)
    box1[8:34, 6:30] = True
    np.testing.assert_allclose(out.cams[1][box1], 1.0 - out.u0[box1], atol=1e-6)
    assert out.cams[1][~box1].max() == 0.0
    assert np.all(out.u0[~inside] == 1.0)


def test_class_agnostic_falls_back_to_features_for_missing_classes():
    """A class that Ycrf never labels still gets a feature prototype (1 − u0 on its box)."""
    image, feats, _, _ = _scene()
    # Class 3 box on pure background: Ycrf has no class 3 pixel; Yret must not crash.
    boxes = np.vstack([BOXES, [[40, 0, 60, 10]]])
    out = generate_pseudo_labels(
        image, feats, None, boxes, [1, 2, 3], PseudoLabelParams(class_agnostic=True)
    )
    assert 3 not in np.unique(out.ycrf)
    assert set(out.correlations) == {0, 1, 2, 3}


def test_unseen_class_without_agnostic_mode_is_a_clear_error():
    image, feats, weight, _ = _scene()
    with pytest.raises(DataError, match="class_agnostic"):
        generate_pseudo_labels(image, feats, weight, BOXES, [1, 7])


def test_without_u0_uses_background_cam():
    image, feats, weight, expected = _scene()
    weight4d = weight[:, :, None, None]  # the 1×1 conv weight as stored
    out = generate_pseudo_labels(image, feats, weight4d, BOXES, LABELS, PseudoLabelParams(use_u0=False))
    # background CAM ReLU(f·w_0) = 1 on background, 0 on objects; max 1 in each box.
    inside = _inside_mask()
    np.testing.assert_allclose(out.u0[inside & (expected == 0)], 1.0, atol=1e-6)
    np.testing.assert_allclose(out.u0[expected > 0], 0.0, atol=1e-6)
    np.testing.assert_array_equal(out.ycrf, expected)


def _collapsed_scene():
    """The scene as a classifier whose features share one direction sees it (issue 22: gap-paper,
    mean cosine 0.998 between feature pixels): a large common component, the classes small on top."""
    image, feats, weight, expected = _scene()
    collapsed = 0.03 * feats
    collapsed[3] += 1.0
    return image, collapsed, weight, expected


def test_near_constant_attention_is_degenerate_and_collapses_u0_labels():
    image, feats, weight, expected = _collapsed_scene()
    out = generate_pseudo_labels(image, feats, weight, BOXES, LABELS)
    # A ~ 1 on every pixel: the relative threshold keeps it on every box pixel ...
    assert out.attention_kept == pytest.approx(1.0)
    assert attention_is_degenerate(out.attention_kept)
    assert image_attention_kept(feats, (H, W), BOXES) == pytest.approx(out.attention_kept)
    # ... and Eq. 7 turns every box into background: the collapse the check exists for
    assert not (out.ycrf > 0).any() and (expected > 0).any()
    # the paper's GAP stage 2 (CAMs and DenseCRF: background CAM, no attention) labels the objects
    cam = generate_pseudo_labels(image, feats, weight, BOXES, LABELS, PseudoLabelParams(use_u0=False))
    np.testing.assert_array_equal(cam.ycrf, expected)


def test_separating_attention_is_not_degenerate():
    image, feats, weight, _ = _scene()
    out = generate_pseudo_labels(image, feats, weight, BOXES, LABELS)
    inside = _inside_mask()
    # A is kept on exactly the in-box background pixels (which look like the background outside)
    expected_share = (inside & (out.u0 > 0)).sum() / inside.sum()
    assert out.attention_kept == pytest.approx(expected_share) and 0 < out.attention_kept < 0.9
    assert not attention_is_degenerate(out.attention_kept)
    assert np.isnan(attention_kept_share(np.ones((H, W)), np.zeros((H, W), dtype=bool)))  # no box pixel
    assert not attention_is_degenerate(float("nan"))


def test_no_boxes_is_all_background():
    image, feats, weight, _ = _scene()
    out = generate_pseudo_labels(image, feats, weight, np.zeros((0, 4)), [])
    assert out.classes == (0,)
    assert not out.ycrf.any() and not out.yret.any()


# --------------------------------------------------------------------------- single steps


def test_cam_normalised_per_box_and_zero_outside():
    torch.manual_seed(0)
    feats = torch.rand(16, 6, 8)
    weight = torch.rand(3, 16)  # positive: CAMs positive in every box
    field = FeatureField(feats, (41, 57))
    boxes = np.array([[2, 3, 20, 30], [15, 10, 40, 38], [30, 1, 55, 20]], dtype=float)
    labels = [1, 1, 2]  # boxes 0 and 1 overlap and share class 1
    att = np.zeros((41, 57), dtype=np.float32)
    un = compute_unaries(field, weight, boxes, labels, att)
    ext = box_extents(boxes, 41, 57)
    for (x0, y0, x1, y1), c in zip(ext, labels):
        region = un.cams[c][y0:y1, x0:x1]
        assert region.max() == pytest.approx(1.0, abs=1e-6)
        assert region.min() >= 0.0
    for c in (1, 2):
        sel = np.zeros((41, 57), dtype=bool)
        for (x0, y0, x1, y1), lc in zip(ext, labels):
            if lc == c:
                sel[y0:y1, x0:x1] = True
        assert un.cams[c][~sel].max() == 0.0
    # overlap of the two class-1 boxes: the max of the two per-box normalisations
    cam = F.interpolate(feats[None], (41, 57), mode="bilinear", align_corners=True)[0]
    raw = torch.einsum("c,chw->hw", weight[1], cam).clamp_min(0).numpy()
    n0 = raw[3:30, 2:20] / raw[3:30, 2:20].max()
    n1 = raw[10:38, 15:40] / raw[10:38, 15:40].max()
    np.testing.assert_allclose(
        un.cams[1][10:30, 15:20], np.maximum(n0[7:, 13:], n1[:20, :5]), atol=1e-5
    )


def test_softmax_inside_boxes_and_one_hot_background_outside():
    torch.manual_seed(1)
    feats = torch.rand(8, 5, 5)
    field = FeatureField(feats, (33, 33))
    boxes = np.array([[4, 4, 20, 20], [10, 12, 30, 28]], dtype=float)
    att = np.random.default_rng(0).random((33, 33)).astype(np.float32)
    un = compute_unaries(field, torch.randn(3, 8), boxes, [2, 1], att)
    assert un.classes == (0, 1, 2)
    np.testing.assert_allclose(un.probs.sum(0), 1.0, atol=1e-6)
    inside = np.zeros((33, 33), dtype=bool)
    inside[4:20, 4:20] = inside[12:28, 10:30] = True
    assert np.all(un.probs[0][~inside] == 1.0) and np.all(un.probs[1:][:, ~inside] == 0.0)
    scores = np.stack([un.u0, un.cams[1], un.cams[2]])
    soft = np.exp(scores) / np.exp(scores).sum(0)
    np.testing.assert_allclose(un.probs[:, inside], soft[:, inside], atol=1e-6)
    np.testing.assert_allclose(un.u0[inside], att[inside])  # Eq. 7
    assert np.all(un.u0[~inside] == 1.0)


def test_threshold_zeroes_weak_background_attention():
    # C = 2: background e0 (outside the box); inside, f = (cos t, sin t) so A = cos t.
    h, w = 20, 30
    theta = np.linspace(0, 0.5, 20)[:, None] * np.ones((1, 20))
    feats = torch.zeros(2, h, w, dtype=torch.float64)
    feats[0] = 1.0
    feats[0, :, 5:25] = torch.from_numpy(np.cos(theta))
    feats[1, :, 5:25] = torch.from_numpy(np.sin(theta))
    bg = np.ones((h, w), dtype=bool)
    bg[:, 5:25] = False
    field = FeatureField(feats, (h, w))
    raw = background_attention(field, bg, threshold=0.0)
    np.testing.assert_allclose(raw[:, 5:25], np.cos(theta), atol=1e-6)
    cut = background_attention(field, bg, threshold=0.99)
    keep = np.cos(theta) >= 0.99  # max A = 1 (the background)
    np.testing.assert_allclose(cut[:, 5:25][keep], np.cos(theta)[keep], atol=1e-6)
    assert np.all(cut[:, 5:25][~keep] == 0.0)
    assert np.all(cut[bg] == pytest.approx(1.0))


def test_grid_queries_average_over_valid_cells():
    # background: left half e0, right half e1, a box in the middle of the top rows.
    h, w = 16, 16
    feats = torch.zeros(2, h, w)
    feats[0, :, :8] = 1.0
    feats[1, :, 8:] = 1.0
    bg = np.ones((h, w), dtype=bool)
    field = FeatureField(feats, (h, w))
    one = background_attention(field, bg, grid_size=1, threshold=0.0)
    two = background_attention(field, bg, grid_size=2, threshold=0.0)
    np.testing.assert_allclose(one, np.sqrt(0.5), atol=1e-6)  # one query (e0 + e1) / 2
    np.testing.assert_allclose(two, 0.5, atol=1e-6)  # 4 cells: two e0, two e1
    # a cell without background is not a query: bottom-right cell all box -> 3 queries
    bg[8:, 8:] = False
    three = background_attention(field, bg, grid_size=2, threshold=0.0)
    np.testing.assert_allclose(three[0, 0], 2 / 3, atol=1e-6)
    np.testing.assert_allclose(three[0, 15], 1 / 3, atol=1e-6)


def test_box_extents_rounding_and_validation():
    ext = box_extents([[1.2, 0.5, 3.7, 4.0], [5.0, 5.0, 5.0, 5.0], [-3, -2, 100, 100]], 10, 12)
    np.testing.assert_array_equal(ext, [[1, 0, 4, 4], [5, 5, 6, 6], [0, 0, 12, 10]])
    with pytest.raises(DataError):
        box_extents([[20, 0, 25, 5]], 10, 12)


def test_params_are_validated():
    with pytest.raises(ConfigError):
        PseudoLabelParams(grid_size=0)
    with pytest.raises(ConfigError):
        PseudoLabelParams(bg_threshold=1.5)


# --------------------------------------------------------------------------- efficient == naive


@pytest.mark.parametrize(
    "low,full", [((9, 12), (65, 89)), ((7, 10), (50, 77)), ((1, 1), (5, 7)), ((5, 6), (3, 4))]
)
def test_feature_field_matches_full_upsampling(low, full):
    torch.manual_seed(2)
    feats = torch.randn(32, *low)
    fast = FeatureField(feats, full)
    slow = FeatureField(feats, full, exact=True)
    up = F.interpolate(feats[None], full, mode="bilinear", align_corners=True)[0]
    np.testing.assert_allclose(fast.norm().numpy(), up.norm(dim=0).numpy(), rtol=1e-5, atol=1e-5)
    v = torch.randn(3, 32)
    np.testing.assert_allclose(fast.dot(v).numpy(), slow.dot(v).numpy(), atol=5e-5)
    np.testing.assert_allclose(fast.cosine(v).numpy(), slow.cosine(v).numpy(), atol=1e-5)
    mask = np.random.default_rng(0).random(full) > 0.4
    expect = up[:, torch.from_numpy(mask)].mean(1)
    np.testing.assert_allclose(fast.weighted_mean([mask])[0].numpy(), expect.numpy(), atol=1e-5)


@pytest.mark.parametrize(
    "params",
    [PseudoLabelParams(), PseudoLabelParams(grid_size=2, use_u0=False), PseudoLabelParams(class_agnostic=True)],
    ids=["default", "grid2-no-u0", "agnostic"],
)
def test_efficient_path_equals_naive_path(params):
    torch.manual_seed(3)
    rng = np.random.default_rng(3)
    feats = torch.randn(64, 9, 12).clamp_min(0)  # ReLU-like features
    weight = torch.randn(4, 64) * 0.1
    image = rng.integers(0, 256, (65, 89, 3), dtype=np.uint8)
    boxes = np.array([[3.4, 5.0, 50.2, 60.9], [30, 2, 88, 40], [60, 30, 89, 65]])
    labels = [1, 3, 1]
    fast = generate_pseudo_labels(image, feats, weight, boxes, labels, params)
    slow = generate_pseudo_labels(image, feats, weight, boxes, labels, params, exact=True)
    np.testing.assert_array_equal(fast.ycrf, slow.ycrf)
    np.testing.assert_array_equal(fast.yret, slow.yret)
    np.testing.assert_allclose(fast.attention, slow.attention, atol=1e-5)
    np.testing.assert_allclose(fast.u0, slow.u0, atol=1e-5)
    for c in fast.cams:
        np.testing.assert_allclose(fast.cams[c], slow.cams[c], atol=1e-5)
    for c in fast.correlations:
        np.testing.assert_allclose(fast.correlations[c], slow.correlations[c], atol=1e-5)
    np.testing.assert_allclose(fast.probs, slow.probs, atol=1e-5)


def test_gen_labels_attention_does_not_depend_on_autocast():
    """Stage 2 works in float64 from float32 features; autocast (bf16) must not touch it."""
    import numpy as np
    import torch

    from banacli.ops.pseudo import generate_pseudo_labels

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(40, 40, 3), dtype=np.uint8)
    feats = torch.from_numpy(rng.random((8, 5, 5)).astype(np.float32) + 1.0)
    weight = torch.from_numpy(rng.normal(size=(3, 8)).astype(np.float32))
    boxes, labels = np.array([[5.0, 5.0, 25.0, 30.0]]), np.array([2])
    ref = generate_pseudo_labels(image, feats, weight, boxes, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = generate_pseudo_labels(image, feats, weight, boxes, labels)
    assert np.abs(ref.attention - amp.attention).max() < 1e-6
    assert np.array_equal(ref.ycrf, amp.ycrf)

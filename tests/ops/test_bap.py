"""BAP ops (paper Eqs. 1-4) on hand-worked inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from banacli.ops.bap import (
    attention_map,
    background_queries,
    bap_loss,
    boxes_to_feature_coords,
    downsample_mask,
    pool_boxes,
    pool_boxes_loop,
)


def test_background_queries_hand_worked_3x3_grid2():
    # 3x3 map, N = 2: one zero row/column of padding, at the end (bottom/right).
    ch0 = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]])
    feats = torch.stack([ch0, 10 * ch0])[None]  # (1, 2, 3, 3)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 0]], dtype=torch.bool)[None]
    q, valid = background_queries(feats, mask, 2)
    assert q.shape == (1, 4, 2) and valid.shape == (1, 4)
    # cell 0 = rows 0-1, cols 0-1: background pixels hold 1, 2, 5 -> mean 8/3
    # cell 1 = rows 0-1, col 2 (+pad): no background -> invalid
    # cell 2 = row 2 (+pad), cols 0-1: background pixel 7 -> 7
    # cell 3 = pixel 9 (+pad): no background -> invalid
    assert valid.tolist() == [[True, False, True, False]]
    torch.testing.assert_close(q[0, 0], torch.tensor([8 / 3, 80 / 3]))
    torch.testing.assert_close(q[0, 2], torch.tensor([7.0, 70.0]))
    assert torch.all(q[0, 1] == 0) and torch.all(q[0, 3] == 0)


def test_background_queries_padding_split_odd_pixel_at_end():
    # h = 5, N = 4: 3 rows of padding -> 1 on top, 2 at the bottom; cells of 2 rows:
    # [pad, r0], [r1, r2], [r3, r4], [pad, pad] (the last cell can never be valid).
    feats = torch.arange(5, dtype=torch.float32).view(1, 1, 5, 1).expand(1, 1, 5, 4).contiguous()
    mask = torch.ones(1, 5, 4, dtype=torch.bool)
    q, valid = background_queries(feats, mask, 4)
    rows = q[0, :, 0].view(4, 4)[:, 0]  # first grid column, cell rows 0..3
    torch.testing.assert_close(rows, torch.tensor([0.0, 1.5, 3.5, 0.0]))
    assert valid[0].view(4, 4)[:, 0].tolist() == [True, True, True, False]
    # h = 6, N = 4: 2 rows -> 1 top, 1 bottom: [pad, r0], [r1, r2], [r3, r4], [r5, pad]
    feats6 = torch.arange(6, dtype=torch.float32).view(1, 1, 6, 1)
    q6, valid6 = background_queries(feats6, torch.ones(1, 6, 1, dtype=torch.bool), 4)
    col = q6[0, :, 0].view(4, 4)[:, 1]  # w = 1 -> pad 3 -> the pixel sits in grid column 1
    torch.testing.assert_close(col, torch.tensor([0.0, 1.5, 3.5, 5.0]))
    assert valid6[0].view(4, 4).sum().item() == 4


def test_attention_one_for_query_pixel_zero_for_orthogonal():
    # (1, 2, 2, 2) features: [1,0] | [0,1]
    #                         [2,0] | [-1,0]
    feats = torch.tensor([[[1.0, 0], [2, -1]], [[0, 1], [0, 0]]])[None]
    mask = torch.tensor([[[True, False], [False, False]]])
    q, valid = background_queries(feats, mask, 1)  # q = [1, 0]
    torch.testing.assert_close(q, torch.tensor([[[1.0, 0.0]]]))
    A = attention_map(feats, q, valid)
    # same direction as the query -> 1; orthogonal -> 0; opposite -> ReLU -> 0
    torch.testing.assert_close(A, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]]))


def test_attention_is_mean_over_valid_queries_only():
    feats = torch.tensor([1.0, 1.0]).view(1, 2, 1, 1)
    queries = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-5.0, 7.0]]])
    A = attention_map(feats, queries, torch.tensor([[True, True, False]]))
    torch.testing.assert_close(A, torch.full((1, 1, 1), math.sqrt(0.5)))  # (cos45 + cos45) / 2
    # no valid query at all -> A = 0
    A0 = attention_map(feats, queries, torch.zeros(1, 3, dtype=torch.bool))
    assert torch.all(A0 == 0)


def test_box_coordinates_map_receptive_field_centres():
    # Feature pixel i is centred on input pixel 8i; a box over input columns 16..31 covers
    # the feature pixels centred on 16 and 24 (2 and 3) and not the one on 32.
    fb = boxes_to_feature_coords(torch.tensor([[0.0, 16, 16, 32, 32]]), 8)
    torch.testing.assert_close(fb, torch.tensor([[0.0, 2.4375, 2.4375, 4.4375, 4.4375]]))
    assert 2.4375 < 2.5 < 3.5 < 4.4375 < 4.5  # centres i + 0.5 in continuous coords
    mask = torch.zeros(1, 64, 64, dtype=torch.bool)
    mask[0, 8 * 3, 8 * 5] = True  # input pixel centred under feature pixel (3, 5)
    small = downsample_mask(mask, (8, 8), stride=8)
    assert small.dtype == torch.bool and small.nonzero().tolist() == [[0, 3, 5]]


def test_pool_boxes_is_eq4_weighted_mean_on_hand_input():
    # One bin (R = 1) over feature pixels rows 1-2, cols 1-2: the samples land on the pixel
    # centres, so the bin is exactly sum(w f) / sum(w) over those 4 pixels.
    f = torch.zeros(1, 1, 4, 4)
    f[0, 0, 1:3, 1:3] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w = torch.zeros(1, 4, 4)
    w[0, 1:3, 1:3] = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    box = torch.tensor([[0.0, 1.0, 1.0, 3.0, 3.0]])
    out = pool_boxes(f, w, box, 1)
    expected = (1 * 1 + 0 * 2 + 0.5 * 3 + 0.5 * 4) / (1 + 0 + 0.5 + 0.5)
    torch.testing.assert_close(out, torch.tensor([[[expected]]]), atol=1e-5, rtol=0)
    # GAP: all weights one -> plain mean 2.5
    torch.testing.assert_close(pool_boxes(f, torch.ones(1, 4, 4), box, 1), torch.tensor([[[2.5]]]))
    # R = 2: each bin is one pixel
    out2 = pool_boxes(f, torch.ones(1, 4, 4), box, 2)
    torch.testing.assert_close(out2[0, :, 0], torch.tensor([1.0, 2.0, 3.0, 4.0]))


@pytest.mark.parametrize("roi_size", [1, 2, 3])
def test_batched_pooling_equals_per_box_loop(roi_size):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(3, 6, 12, 10, generator=g)
    weights = torch.rand(3, 12, 10, generator=g)
    n = 25
    xy0 = torch.rand(n, 2, generator=g) * torch.tensor([70.0, 85.0])
    wh = 1 + torch.rand(n, 2, generator=g) * torch.tensor([79.0, 95.0])
    xy1 = torch.minimum(xy0 + wh, torch.tensor([80.0, 96.0]))
    boxes = torch.cat([torch.randint(0, 3, (n, 1), generator=g).float(), xy0.floor(), xy1.ceil()], 1)
    fboxes = boxes_to_feature_coords(boxes, 8)
    torch.testing.assert_close(
        pool_boxes(feats, weights, fboxes, roi_size),
        pool_boxes_loop(feats, weights, fboxes, roi_size),
        atol=1e-5, rtol=1e-5,
    )


def _scene():
    """Feature map whose background is e0 and whose box interior is orthogonal to it."""
    feats = torch.zeros(1, 4, 8, 8)
    feats[0, 0] = 1.0  # background direction
    feats[0, :, 2:6, 2:6] = 0.0
    feats[0, 1, 2:6, 2:6] = torch.arange(16, dtype=torch.float32).view(4, 4) + 1
    feats[0, 2, 2:4, 2:6] = 3.0
    # Input pixels 16..40 hold the receptive-field centres 16, 24, 32, 40 of feature pixels
    # 2..5; in feature index space the box spans [1.94, 5.06], so every bilinear sample of
    # roi_align falls between pixels 2 and 5 (a box up to pixel 47 would also blend in pixel 6).
    boxes = torch.tensor([[0.0, 16, 16, 41, 41]])
    bg = torch.ones(1, 64, 64, dtype=torch.bool)
    bg[0, 16:41, 16:41] = False
    return feats, boxes, bg


def test_bap_equals_gap_when_attention_is_zero():
    feats, boxes, bg = _scene()
    W = torch.randn(3, 4)
    bap = bap_loss(feats, W, boxes, torch.tensor([2]), bg, pooling="bap")
    gap = bap_loss(feats, W, boxes, torch.tensor([2]), bg, pooling="gap")
    assert torch.all(bap["attention"][0, 2:6, 2:6] == 0)  # box interior orthogonal to q_j
    assert bool(bap["bap_images"][0]) and not bool(gap["bap_images"][0])
    torch.testing.assert_close(bap["logits"], gap["logits"])
    torch.testing.assert_close(bap["loss"], gap["loss"])
    # 4 foreground bins labelled 2, then the valid queries labelled 0 (the centre cells of
    # the 4x4 grid lie inside the box, the 12 border cells hold background)
    assert bap["targets"].tolist() == [2] * 4 + [0] * 12
    torch.testing.assert_close(bap["loss"], F.cross_entropy(bap["logits"], bap["targets"]))


def test_bap_downweights_background_inside_box():
    feats, boxes, bg = _scene()
    feats[0, :, 2:6, 2:4] = 0.0
    feats[0, 0, 2:6, 2:4] = 5.0  # left half of the box looks exactly like background
    out = bap_loss(feats, torch.randn(3, 4), boxes, torch.tensor([1]), bg, roi_size=1)
    A = out["attention"][0]
    assert torch.all(A[2:6, 2:4] == 1) and torch.all(A[2:6, 4:6] == 0)
    # BAP pools the right half only: no background (e0) component left; GAP keeps it.
    fboxes = boxes_to_feature_coords(boxes)
    bap = pool_boxes(feats, 1 - out["attention"], fboxes, 1)[0, 0]
    gap = pool_boxes(feats, torch.ones(1, 8, 8), fboxes, 1)[0, 0]
    assert abs(bap[0].item()) < 1e-4 and gap[0].item() > 1.0
    assert bap[1].item() > gap[1].item()  # the object's channel is no longer diluted


@pytest.mark.parametrize("n_bg, fallback", [(8, True), (9, False)])
def test_too_little_background_falls_back_to_gap(n_bg, fallback):
    # 8x8 input: 8 background pixels = 12.5 % (<= 0.125 -> GAP, no queries); 9 -> BAP.
    g = torch.Generator().manual_seed(0)
    feats = torch.rand(1, 3, 1, 1, generator=g).expand(1, 3, 1, 1).clone()
    bg = torch.zeros(1, 8, 8, dtype=torch.bool)
    bg.view(-1)[:n_bg] = True  # pixel (0, 0) is background in both cases
    boxes = torch.tensor([[0.0, 0, 1, 8, 8]])
    out = bap_loss(feats, torch.randn(2, 3), boxes, torch.tensor([1]), bg, grid_size=1, roi_size=1)
    if fallback:
        assert not bool(out["bap_images"][0])
        assert int(out["num_bg"]) == 0 and torch.all(out["attention"] == 0)
        assert out["targets"].tolist() == [1]
    else:
        assert bool(out["bap_images"][0]) and int(out["num_bg"]) == 1
        assert out["targets"].tolist() == [1, 0]
        torch.testing.assert_close(out["attention"], torch.ones(1, 1, 1))


def test_fallback_is_per_image_in_a_batch():
    feats, boxes, bg = _scene()
    feats2 = torch.cat([feats, feats])
    bg2 = torch.stack([bg[0], torch.zeros(64, 64, dtype=torch.bool)])  # image 1: no background
    boxes2 = torch.cat([boxes, torch.tensor([[1.0, 0, 0, 64, 64]])])
    out = bap_loss(feats2, torch.randn(3, 4), boxes2, torch.tensor([1, 2]), bg2)
    assert out["bap_images"].tolist() == [True, False]
    assert out["valid"][1].sum() == 0 and torch.all(out["attention"][1] == 0)
    assert out["targets"].tolist() == [1] * 4 + [2] * 4 + [0] * 12


def test_no_boxes_and_no_background_still_backprops():
    feats = torch.randn(1, 4, 8, 8, requires_grad=True)
    W = torch.randn(3, 4, requires_grad=True)
    out = bap_loss(feats, W, torch.zeros(0, 5), torch.zeros(0, dtype=torch.long),
                   torch.zeros(1, 64, 64, dtype=torch.bool))
    out["loss"].backward()
    assert out["loss"].item() == 0.0 and feats.grad is not None


def test_gradients_flow_through_attention_and_pooling():
    feats = torch.randn(2, 5, 6, 6, requires_grad=True)
    W = torch.randn(4, 5, 1, 1, requires_grad=True)
    bg = torch.ones(2, 48, 48, dtype=torch.bool)
    bg[:, 8:40, 8:32] = False
    boxes = torch.tensor([[0.0, 8, 8, 32, 40], [1.0, 8, 8, 32, 40]])
    out = bap_loss(feats, W, boxes, torch.tensor([1, 3]), bg)
    out["loss"].backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert W.grad.abs().sum() > 0


def test_gap_paper_has_no_background_samples():
    feats, boxes, bg = _scene()
    W = torch.randn(3, 4)
    gap = bap_loss(feats, W, boxes, torch.tensor([2]), bg, pooling="gap")
    paper = bap_loss(feats, W, boxes, torch.tensor([2]), bg, pooling="gap-paper")
    assert paper["targets"].tolist() == [2] * 4 and int(paper["num_bg"]) == 0
    assert torch.all(paper["attention"] == 0) and not bool(paper["bap_images"][0])
    # the same foreground bins as bana's gap, without its 12 background queries
    torch.testing.assert_close(paper["logits"], gap["logits"][:4])
    torch.testing.assert_close(paper["loss"], F.cross_entropy(gap["logits"][:4], gap["targets"][:4]))


def _amp_scene():
    g = torch.Generator().manual_seed(3)
    feats = torch.rand(2, 16, 12, 12, generator=g)  # non-negative, like ReLU features
    feats[:, :4] += 2.0  # a shared component: cosines near 1, where bf16 is coarsest
    bg = torch.ones(2, 96, 96, dtype=torch.bool)
    bg[0, 16:64, 24:72] = False
    bg[1, 40:90, 8:50] = False
    boxes = torch.tensor([[0, 24.0, 16.0, 72.0, 64.0], [1, 8.0, 40.0, 50.0, 90.0]])
    return feats, boxes, bg


def test_attention_and_pooling_are_fp32_under_autocast():
    feats, boxes, bg = _amp_scene()
    W = torch.randn(3, 16, generator=torch.Generator().manual_seed(4))
    ref = bap_loss(feats, W, boxes, torch.tensor([1, 2]), bg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = bap_loss(feats, W, boxes, torch.tensor([1, 2]), bg)
        # what the attention would be if computed in bf16: many values differ by > 1e-3
        q, v = background_queries(feats.bfloat16(), downsample_mask(bg, (12, 12), stride=8), 4)
        coarse = attention_map(feats.bfloat16(), q, v).float()
    assert amp["attention"].dtype == torch.float32 and amp["logits"].dtype == torch.float32
    assert (ref["attention"] > 0.9).float().mean() > 0.5  # the regime that matters
    assert (ref["attention"] - amp["attention"]).abs().max() < 1e-3
    torch.testing.assert_close(amp["logits"], ref["logits"], atol=1e-4, rtol=1e-4)
    assert (ref["attention"] - coarse).abs().max() > 1e-3  # the test can tell bf16 from fp32

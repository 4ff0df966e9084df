"""The S-only Mask R-CNN mask loss: hand-worked values, zero gradient outside S, and equality
with torchvision's own loss when S covers everything."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_loss

from banacli.instances.maskrcnn import RegionMaskRoIHeads, build_mask_rcnn, region_mask_loss


def _one_box_case():
    """One 4x4-pixel box at the origin, mask resolution M = 4: with aligned=True each RoI cell
    is exactly one pixel, so the loss can be written down by hand."""
    masks = torch.zeros(1, 6, 6)
    masks[0, 0:4, 0:2] = 1.0  # the box's target: its left two columns
    region = torch.zeros(6, 6)
    region[0:4, 0:2] = 1.0  # S: columns 0-1 of rows 0-3 (8 cells) ...
    region[0, 2] = 1.0  # ... plus one background cell (target 0): 9 cells in S
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    logits = torch.zeros(1, 3, 4, 4)  # 3 classes, the box is class 2
    logits[0, 2, 1, 1] = math.log(3.0)  # sigmoid = 3/4, target 1: BCE = log(4/3)
    logits[0, 2, 0, 2] = math.log(3.0)  # sigmoid = 3/4, target 0: BCE = log 4
    logits[0, 2, :, 3] = 50.0  # outside S, target 0: would cost 50 per cell if counted
    logits[0, 2, 3, 2] = -50.0
    logits[0, 1] = 7.0  # another class's channel: never used
    return logits.requires_grad_(True), boxes, masks, region


def test_value_equals_the_hand_computation():
    logits, boxes, masks, region = _one_box_case()
    loss = region_mask_loss(logits, [boxes], [masks], [region], [torch.tensor([2])], [torch.tensor([0])])
    # 9 cells in S: 7 at logit 0 (BCE log 2 whatever the target), log(4/3), log 4
    expected = (7 * math.log(2.0) + math.log(4.0 / 3.0) + math.log(4.0)) / 9
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_gradient_is_exactly_zero_outside_s():
    logits, boxes, masks, region = _one_box_case()
    loss = region_mask_loss(logits, [boxes], [masks], [region], [torch.tensor([2])], [torch.tensor([0])])
    loss.backward()
    g = logits.grad
    inside = region[:4, :4].bool()
    assert torch.all(g[0, 2][~inside] == 0)  # exactly, not approximately
    assert torch.all(g[0, [0, 1]] == 0)  # other classes' channels
    # inside S: d BCE / dz = (sigmoid(z) - t) / |S|
    t = masks[0, :4, :4]
    want = (torch.sigmoid(logits.detach()[0, 2]) - t) / 9
    torch.testing.assert_close(g[0, 2][inside], want[inside])


def test_logits_outside_s_do_not_change_the_loss():
    logits, boxes, masks, region = _one_box_case()
    args = ([boxes], [masks], [region], [torch.tensor([2])], [torch.tensor([0])])
    a = region_mask_loss(logits, *args)
    other = logits.detach().clone()
    other[0, 2][~region[:4, :4].bool()] = torch.randn(int((region[:4, :4] == 0).sum())) * 100
    assert region_mask_loss(other, *args).item() == a.item()


def test_empty_region_gives_zero_with_a_graph():
    logits, boxes, masks, _ = _one_box_case()
    loss = region_mask_loss(logits, [boxes], [masks], [torch.zeros(6, 6)], [torch.tensor([2])], [torch.tensor([0])])
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_without_region_it_is_torchvisions_loss():
    g = torch.Generator().manual_seed(0)
    masks = [(torch.rand(3, 40, 48, generator=g) > 0.5).to(torch.uint8), (torch.rand(2, 40, 48, generator=g) > 0.3).to(torch.uint8)]
    labels = [torch.tensor([1, 3, 2]), torch.tensor([2, 1])]
    xy = torch.rand(7, 2, generator=g) * 30
    wh = torch.rand(7, 2, generator=g) * 15 + 2
    props = [torch.cat([xy[:4], xy[:4] + wh[:4]], 1), torch.cat([xy[4:], xy[4:] + wh[4:]], 1)]
    matched = [torch.tensor([0, 2, 1, 0]), torch.tensor([1, 0, 1])]
    logits = torch.randn(7, 4, 28, 28, generator=g)
    ours = region_mask_loss(logits, props, masks, [None, None], labels, matched, aligned=False)
    theirs = maskrcnn_loss(logits, props, masks, labels, matched)
    torch.testing.assert_close(ours, theirs)
    # and a region of ones far larger than every box counts every cell too
    ones = [torch.ones(40, 48), torch.ones(40, 48)]
    inside = [torch.tensor([[1.0, 1.0, 20.0, 20.0]] * 4), torch.tensor([[2.0, 2.0, 30.0, 30.0]] * 3)]
    a = region_mask_loss(logits, inside, masks, ones, labels, matched, aligned=False)
    torch.testing.assert_close(a, maskrcnn_loss(logits, inside, masks, labels, matched))


def test_roi_heads_match_torchvision_when_every_cell_counts():
    """Same modules, same RNG: the subclass gives the stock RoIHeads' losses (mask loss included)."""
    torch.manual_seed(0)
    model = build_mask_rcnn("tiny", 3, min_size=64, max_size=64, aligned=False).train()
    ours = model.roi_heads
    assert isinstance(ours, RegionMaskRoIHeads)
    stock = RoIHeads(ours.box_roi_pool, ours.box_head, ours.box_predictor, 0.5, 0.5, 64, 0.25, None, 0.05, 0.5, 100,
                     mask_roi_pool=ours.mask_roi_pool, mask_head=ours.mask_head, mask_predictor=ours.mask_predictor).train()
    images = torch.rand(2, 3, 64, 64)
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 10:30, 12:28] = 1
    masks[1, 36:60, 30:50] = 1
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 30.0, 32.0], [28.0, 34.0, 52.0, 62.0]]),
                "labels": torch.tensor([1, 2]), "masks": masks} for _ in range(2)]
    feats = model.backbone(images)
    props = [t["boxes"] + torch.tensor([1.0, -1.0, 2.0, 0.0]) for t in targets]
    torch.manual_seed(5)
    _, a = ours(feats, [p.clone() for p in props], [(64, 64)] * 2, targets)
    torch.manual_seed(5)
    _, b = stock(feats, [p.clone() for p in props], [(64, 64)] * 2, targets)
    assert set(a) == set(b) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    # with S empty the mask loss is zero and no gradient reaches the mask predictor
    torch.manual_seed(5)
    _, c = ours(feats, [p.clone() for p in props], [(64, 64)] * 2,
                [dict(t, regions=torch.zeros(64, 64)) for t in targets])
    assert c["loss_mask"].item() == 0.0
    c["loss_mask"].backward()
    assert all(p.grad is None or torch.all(p.grad == 0) for p in ours.mask_predictor.parameters())


def test_transform_resizes_s_with_the_image_and_masks():
    model = build_mask_rcnn("tiny", 3, min_size=64, max_size=64)
    image = torch.rand(3, 32, 40)
    mask = torch.zeros(1, 32, 40, dtype=torch.uint8)
    mask[0, 4:20, 6:30] = 1
    target = {"boxes": torch.tensor([[6.0, 4.0, 30.0, 20.0]]), "labels": torch.tensor([1]), "masks": mask,
              "regions": mask[0].float()}
    images, targets = model.transform([image], [target])
    h, w = images.image_sizes[0]
    assert (h, w) == (64, 64) or max(h, w) == 64
    t = targets[0]
    assert t["regions"].shape == t["masks"].shape[1:] == (h, w)
    assert torch.equal(t["regions"].bool(), t["masks"][0].bool())  # S went where its pixels went

"""BAPClassifier: head init, SGD groups, and a short training run on synthetic boxes."""

from __future__ import annotations

import torch

from banacli.models import BAPClassifier, build_backbone, normalize


def test_classifier_head_is_bias_free_small_normal():
    net = BAPClassifier(build_backbone("vgg16"), num_classes=21)
    w = net.classifier.weight
    assert w.shape == (21, 1024, 1, 1) and net.classifier.bias is None
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001


def test_param_groups_follow_reference_multipliers():
    net = BAPClassifier(build_backbone("tiny"), num_classes=3)
    groups = {g["name"]: g for g in net.param_groups(1e-3, 5e-4)}
    assert groups["backbone_weights"]["lr"] == 1e-3 and groups["backbone_weights"]["weight_decay"] == 5e-4
    assert groups["backbone_biases"]["lr"] == 2e-3 and groups["backbone_biases"]["weight_decay"] == 0.0
    assert groups["classifier_weights"]["lr"] == 1e-2
    ids = [id(p) for g in groups.values() for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(net.parameters()))
    assert groups["classifier_weights"]["params"] == [net.classifier.weight]
    torch.optim.SGD(list(groups.values()), lr=1e-3, momentum=0.9)  # accepted as is


def _synthetic_batch(n: int = 4, size: int = 64, seed: int = 0):
    """Red (class 1) and green (class 2) squares on a striped grey texture, with loose boxes."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 3, size, size)
    boxes, labels = [], []
    bg = torch.ones(n, size, size, dtype=torch.bool)
    for i in range(n):
        stripes = 110 + 40 * torch.sin((xx + 2 * yy + 5 * i).float() / 3)
        images[i] = stripes + 15 * torch.randn(3, size, size, generator=g)
        for k, cls in enumerate((1, 2)):
            s = 12 + 2 * i
            x0, y0 = 6 + 30 * k, 8 + 4 * ((i + k) % 4)
            colour = torch.tensor([220.0, 30, 30]) if cls == 1 else torch.tensor([30.0, 200, 40])
            images[i, :, y0 : y0 + s, x0 : x0 + s] = colour.view(3, 1, 1)
            bx0, by0, bx1, by1 = x0 - 3, y0 - 3, min(x0 + s + 3, size), min(y0 + s + 3, size)
            boxes.append([i, bx0, by0, bx1, by1])
            labels.append(cls)
            bg[i, by0:by1, bx0:bx1] = False
    return images.clamp(0, 255), torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), bg


def test_tiny_classifier_loss_falls_on_synthetic_boxes():
    torch.manual_seed(0)
    net = BAPClassifier(build_backbone("tiny"), num_classes=3)
    images, boxes, labels, bg = _synthetic_batch()
    x = normalize(images, net.normalization)
    opt = torch.optim.SGD(net.param_groups(0.02, 5e-4), lr=0.02, momentum=0.9)
    net.train()
    losses = []
    for _ in range(60):
        out = net(x, boxes, labels, bg)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 0.9  # about ln 3 at the start
    assert last < 0.6 * first, f"loss did not fall: {losses[:5]} ... {losses[-5:]}"
    net.eval()  # without dropout: the loss has fallen to well under half its start
    with torch.no_grad():
        out = net(x, boxes, labels, bg)
    assert out["loss"].item() < 0.4 * first
    # foreground bins and background queries are mostly classified right (chance: 1/3)
    accuracy = (out["logits"].argmax(1) == out["targets"]).float().mean().item()
    assert accuracy > 0.8

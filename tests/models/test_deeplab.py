"""Every registered segmenter: builds, output shapes, no NaN, every parameter gets a
gradient, logits bounded by tau (cosine classifier, supp. Eq. 3)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from banacli.models.deeplab import SEG_MODELS, build_segmenter, upsample_logits

TAU = 20.0


@pytest.mark.parametrize("name", SEG_MODELS)
def test_segmenter_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    model = build_segmenter(name, 5, tau=TAU)
    model.train()
    size = 64 if name != "tiny" else 40
    x = torch.randn(1, 3, size, size)
    out = model(x)
    feat, logits = out["features"], out["logits"]
    h = -(-size // 8)  # output stride 8, ceil
    assert logits.shape == (1, 5, h, h)
    assert feat.shape == (1, model.feature_channels, h, h)
    assert torch.isfinite(logits).all() and torch.isfinite(feat).all()
    assert logits.abs().max() <= TAU + 1e-4
    assert model.classifier_weight.shape == (5, model.feature_channels)
    assert {"mean", "std"} <= set(model.normalization)

    up = upsample_logits(logits, (size, size))
    assert up.shape == (1, 5, size, size)
    loss = F.cross_entropy(up, torch.randint(0, 5, (1, size, size)))
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    zero = [n for n, p in model.named_parameters() if p.requires_grad and p.grad.abs().sum() == 0]
    assert not zero


def test_logits_are_tau_times_cosine() -> None:
    torch.manual_seed(0)
    model = build_segmenter("tiny", 3, tau=7.0).eval()
    out = model(torch.randn(2, 3, 32, 32))
    phi, w = out["features"], model.classifier_weight
    cos = torch.einsum("bchw,kc->bkhw", F.normalize(phi, dim=1), F.normalize(w, dim=1))
    assert torch.allclose(out["logits"], 7.0 * cos, atol=1e-5)
    assert model.tau == 7.0


def test_upsample_is_align_corners_bilinear() -> None:
    logits = torch.tensor([[[[0.0, 3.0]]]])
    up = upsample_logits(logits, (1, 4))
    assert up.flatten().tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0])  # corners kept


def test_param_groups_follow_the_reference_multipliers() -> None:
    model = build_segmenter("tiny", 4)
    groups = {g["name"]: g for g in model.param_groups(1e-3, 5e-4)}
    assert groups["backbone_weight"]["lr"] == pytest.approx(1e-3)
    assert groups["backbone_weight"]["weight_decay"] == 5e-4
    assert groups["backbone_bias"]["lr"] == pytest.approx(2e-3)
    assert groups["backbone_bias"]["weight_decay"] == 0.0
    assert groups["new_weight"]["lr"] == pytest.approx(1e-2)
    assert groups["new_weight"]["params"] == [model.classifier.weight]
    covered = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())
    assert len(set(covered)) == len(covered)
    torch.optim.SGD(list(groups.values()), lr=1e-3, momentum=0.9)  # accepted as is


def test_aspp_param_groups_put_head_and_norm_apart() -> None:
    model = build_segmenter("aspp", 3)
    groups = {g["name"]: g for g in model.param_groups(1.0, 0.1)}
    head = {id(p) for p in model.head.parameters()}
    assert head <= {id(p) for p in groups["new_weight"]["params"]}
    assert groups["backbone_norm"]["lr"] == 1.0 and groups["backbone_norm"]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_unknown_model_is_rejected() -> None:
    with pytest.raises(ValueError, match="largefov"):
        build_segmenter("deeplabv3", 21)


def test_cosine_classifier_and_nal_confidence_are_fp32_under_autocast():
    from banacli.models.deeplab import CosineClassifier
    from banacli.ops.nal import confidence_map

    torch.manual_seed(0)
    head = CosineClassifier(32, 4, tau=20.0)
    phi = torch.rand(2, 32, 6, 6) + 1.0  # similar directions: cosines near 1
    ref = head(phi)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = head(phi)
    assert amp.dtype == torch.float32
    torch.testing.assert_close(amp, ref, atol=1e-4, rtol=1e-4)
    target = torch.zeros(2, 6, 6, dtype=torch.long)
    s_ref = confidence_map(ref, target, tau=20.0)
    s_amp = confidence_map(amp, target, tau=20.0)
    assert (s_ref - s_amp).abs().max() < 1e-3


def test_tiny_segmenter_has_no_fc_dropout_and_the_tiny_classifier_keeps_it():
    # the tiny DeepLab trains without Dropout2d after fc6/fc7 (docs/results.md); stage 1 is unchanged
    import torch
    from torch import nn

    from banacli.models.backbones import build_backbone
    from banacli.models.deeplab import build_segmenter

    seg = build_segmenter("tiny", 3, weights=None).train()
    assert not any(isinstance(m, nn.Dropout2d) for m in seg.modules())
    x = torch.randn(2, 3, 48, 48)
    assert torch.equal(seg(x)["logits"], seg(x)["logits"])  # nothing random in training mode
    cls = build_backbone("tiny", weights=None)
    assert [m.p for m in cls.modules() if isinstance(m, nn.Dropout2d)] == [0.5, 0.5]
    assert [m.p for m in build_segmenter("largefov", 3, weights=None).modules()
            if isinstance(m, nn.Dropout2d)] == [0.5, 0.5]

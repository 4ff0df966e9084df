"""Backbone registry, VGG-16 layout, weight loading and normalisation."""

from __future__ import annotations

import math
import urllib.error

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from banacli.errors import BanaError
from banacli.models import BACKBONES, BAPClassifier, build_backbone
from banacli.models.normalize import CAFFE, TORCHVISION, normalize
from banacli.models.resnet import load_resnet_state
from banacli.models.vgg16 import vgg16_from_torchvision_state, vgg16_parameter_names

OUT_CHANNELS = {"vgg16": 1024, "resnet50": 2048, "resnet101": 2048, "tiny": 128, "tiny-bn": 128}


def test_registry_lists_every_backbone_with_expected_channels():
    assert set(BACKBONES) == set(OUT_CHANNELS)


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_stride_channels_and_gradients(name):
    size = 41  # odd on purpose: ceil(41 / 8) = 6 feature pixels
    net = BAPClassifier(build_backbone(name), num_classes=3)
    assert net.out_channels == OUT_CHANNELS[name] == net.backbone.out_channels
    assert net.normalization["bgr"] in (True, False)
    images = normalize(torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8), net.normalization)
    feats = net.features(images)
    assert feats.shape == (1, OUT_CHANNELS[name], math.ceil(size / 8), math.ceil(size / 8))
    assert torch.isfinite(feats).all()
    boxes = torch.tensor([[0.0, 8, 8, 32, 36]])
    bg = torch.ones(1, size, size, dtype=torch.bool)
    bg[0, 8:36, 8:32] = False
    out = net(images, boxes, torch.tensor([2]), bg)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing[:5]}"


def test_vgg16_parameter_names_shapes_and_order_match_spec():
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    names = [f"conv{b}_{i}" for b, n in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for i in range(1, n + 1)]
    expected = []
    in_ch = 3
    for name, out_ch in zip(names, widths):
        expected += [(f"{name}.weight", (out_ch, in_ch, 3, 3)), (f"{name}.bias", (out_ch,))]
        in_ch = out_ch
    expected += [("fc6.weight", (1024, 512, 3, 3)), ("fc6.bias", (1024,)),
                 ("fc7.weight", (1024, 1024, 1, 1)), ("fc7.bias", (1024,))]
    net = build_backbone("vgg16")
    got = [(n, tuple(p.shape)) for n, p in net.named_parameters()]
    assert got == expected
    assert [n for n, _ in expected] == vgg16_parameter_names()
    assert list(net.state_dict()) == [n for n, _ in expected]  # no buffers in between
    assert net.normalization == CAFFE and net.out_channels == 1024


def test_vgg16_topology_details():
    net = build_backbone("vgg16")
    assert [p.stride for p in net.pools] == [2, 2, 2, 1, 1]
    assert all(p.kernel_size == 3 and p.padding == 1 for p in net.pools)
    assert all(getattr(net, f"conv5_{i}").dilation == (2, 2) for i in (1, 2, 3))
    assert net.conv4_3.dilation == (1, 1) and net.fc6.dilation == (1, 1)
    lfov = build_backbone("vgg16", fc6_dilation=12)
    assert lfov.fc6.dilation == (12, 12) and lfov.fc6.padding == (12, 12)
    tiny = build_backbone("tiny", fc6_dilation=12)
    assert tiny(torch.zeros(1, 3, 64, 64)).shape == (1, 128, 8, 8)


def test_tiny_bn_is_tiny_with_batch_norm_and_no_dropout():
    torch.manual_seed(0)
    tiny = build_backbone("tiny")
    torch.manual_seed(0)
    bn = build_backbone("tiny-bn")
    names = [n for n, _ in tiny.named_parameters()]
    bn_names = [n for n, _ in bn.named_parameters()]
    assert bn_names[: len(names)] == names  # tiny's names and order first, then the norms
    assert all(n.split(".")[0].endswith("_bn") for n in bn_names[len(names):]) and len(bn_names) == len(names) + 30
    for n, p in tiny.named_parameters():  # the same random init of the shared parameters
        torch.testing.assert_close(dict(bn.named_parameters())[n], p)
    assert isinstance(bn.drop6, torch.nn.Identity) and isinstance(tiny.drop6, torch.nn.Dropout2d)
    assert bn.normalization == tiny.normalization == TORCHVISION
    # eval mode: each conv's output is normalised with the running statistics before the ReLU
    bn.eval()
    bn.conv1_1_bn.running_mean.fill_(1e6)  # every conv1_1 pre-activation far below zero ...
    assert bn(torch.zeros(1, 3, 16, 16)).shape == (1, 128, 2, 2)
    x = bn.relu(bn._conv("conv1_1", torch.randn(1, 3, 16, 16)))
    assert x.abs().max() == 0  # ... so the ReLU after it is zero everywhere


def test_dropout_is_a_choice_of_vgg_backbones_only():
    assert isinstance(build_backbone("tiny", dropout=0.0).drop6, torch.nn.Identity)
    assert build_backbone("tiny-bn", dropout=0.3).drop7.p == 0.3
    with pytest.raises(BanaError, match="dropout"):
        build_backbone("resnet50", dropout=0.0)


def test_normalize_caffe_and_torchvision_by_hand():
    px = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)  # R, G, B
    caffe = normalize(px, CAFFE).flatten()
    torch.testing.assert_close(caffe, torch.tensor([30 - 104.008, 20 - 116.669, 10 - 122.675]))
    tv = normalize(px.float(), TORCHVISION).flatten()
    torch.testing.assert_close(
        tv, torch.tensor([(10 - 123.675) / 58.395, (20 - 116.28) / 57.12, (30 - 103.53) / 57.375])
    )


def test_imagenet_weights_offline_is_one_line_bana_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    for name in ("vgg16", "resnet50"):
        with pytest.raises(BanaError) as err:
            build_backbone(name, weights="imagenet")
        msg = str(err.value)
        assert "\n" not in msg and "local path" in msg and name in msg
    with pytest.raises(BanaError, match="no ImageNet weights"):
        build_backbone("tiny", weights="imagenet")


def _torchvision_vgg16_features_state() -> dict[str, torch.Tensor]:
    # Only the conv part of torchvision's vgg16 (its 4096-wide fc layers would cost seconds).
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    return {f"features.{k}": v for k, v in features.state_dict().items()}


def test_load_local_torchvision_vgg16_file(tmp_path):
    sd = _torchvision_vgg16_features_state()
    sd["classifier.0.weight"] = torch.zeros(2, 2)  # extra keys of a full file are ignored
    path = tmp_path / "vgg16-tv.pth"
    torch.save(sd, path)
    net = build_backbone("vgg16", weights=path)
    assert torch.equal(net.conv1_1.weight, sd["features.0.weight"])
    assert torch.equal(net.conv3_3.bias, sd["features.14.bias"])
    assert torch.equal(net.conv5_3.weight, sd["features.28.weight"])
    assert net.normalization == TORCHVISION  # torchvision weights -> torchvision normalisation
    assert vgg16_from_torchvision_state(sd).keys() == {
        n for n in net.state_dict() if n.startswith("conv")
    }


def test_load_local_safetensors_in_our_naming(tmp_path):
    src = build_backbone("tiny")
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    net = build_backbone("tiny", weights=path)
    for (k, a), b in zip(src.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k


def test_bad_weights_files_are_bana_errors(tmp_path):
    with pytest.raises(BanaError, match="does not exist"):
        build_backbone("tiny", weights=tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(BanaError, match="junk.pth: not a PyTorch checkpoint"):
        build_backbone("tiny", weights=junk)
    # full-width VGG-16 weights into the tiny model: shape mismatch named in the message
    path = tmp_path / "vgg16-tv.pth"
    torch.save(_torchvision_vgg16_features_state(), path)
    with pytest.raises(BanaError, match="conv1_1.weight has shape"):
        build_backbone("tiny", weights=path)
    with pytest.raises(BanaError, match="unknown backbone"):
        build_backbone("vgg19")


def test_resnet_loads_torchvision_state_and_freezes_bn():
    ref = torchvision.models.resnet50(weights=None)
    sd = ref.state_dict()
    net = build_backbone("resnet50")
    load_resnet_state(net, sd, source="test")
    assert torch.equal(net.layer4[2].conv3.weight, sd["layer4.2.conv3.weight"])
    assert net.freeze_bn
    net.train()
    assert not net.bn1.training and net.layer1[0].conv1.training
    with pytest.raises(BanaError, match="not a torchvision ResNet"):
        load_resnet_state(build_backbone("resnet101"), sd, source="test")


def test_backbone_from_a_whole_bana_classifier_file(tmp_path):
    """seg.weights may name a stage-1 classifier: its backbone.* tensors initialise the backbone."""
    from banacli.artifacts import save_model
    from banacli.models.classifier import BAPClassifier

    cls = BAPClassifier(build_backbone("tiny"), 4)
    path = tmp_path / "cls" / "model.safetensors"
    save_model(path, cls.state_dict(), arch="bap-classifier/tiny", class_names=list("bxyz"), normalization={})
    net = build_backbone("tiny", weights=path, fc6_dilation=12)
    for k, v in net.state_dict().items():
        assert torch.equal(v, cls.backbone.state_dict()[k]), k

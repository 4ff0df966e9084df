"""--weights spellings, fc6/fc7 derived from torchvision's VGG-16, and what the sidecar records."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from banacli.errors import BanaError
from banacli.models.backbones import build_backbone, resolve_weights
from banacli.models.vgg16 import derive_fc_from_torchvision, vgg16_from_torchvision_state

V1 = torchvision.models.VGG16_Weights.IMAGENET1K_V1


@pytest.mark.parametrize("spec", ["imagenet", "IMAGENET1K_V1", "VGG16_Weights.IMAGENET1K_V1", "DEFAULT", "auto"])
def test_torchvision_spellings_name_the_same_enum(spec):
    assert resolve_weights("vgg16", spec) == ("torchvision", V1)


@pytest.mark.parametrize("spec", [None, "", "none", "null", "None", "NULL"])
def test_none_spellings_are_random_init(spec):
    assert resolve_weights("vgg16", spec) == ("none", None)
    assert build_backbone("tiny", weights=spec).init_weights["kind"] == "none"


def test_auto_is_random_for_tiny_and_imagenet_for_the_others():
    assert resolve_weights("tiny", "auto") == ("none", None)
    kind, enum = resolve_weights("resnet50", "auto")
    assert kind == "torchvision" and enum is torchvision.models.ResNet50_Weights.IMAGENET1K_V1
    kind, enum = resolve_weights("resnet101", "ResNet101_Weights.DEFAULT")
    assert enum is torchvision.models.ResNet101_Weights.DEFAULT


def test_bad_names_are_one_line_errors(tmp_path):
    with pytest.raises(BanaError, match="ResNet50_Weights are not weights of vgg16"):
        resolve_weights("vgg16", "ResNet50_Weights.IMAGENET1K_V1")
    with pytest.raises(BanaError, match="no VGG16_Weights.IMAGENET1K_V9.*IMAGENET1K_V1"):
        resolve_weights("vgg16", "IMAGENET1K_V9")
    with pytest.raises(BanaError, match="no ImageNet weights"):
        resolve_weights("tiny", "imagenet")
    with pytest.raises(BanaError, match="does not exist"):
        resolve_weights("tiny", str(tmp_path / "nope.pth"))


def test_a_local_file_wins_and_its_sha256_is_recorded(tmp_path):
    from banacli.artifacts import sha256_file

    src = build_backbone("tiny")
    path = tmp_path / "DEFAULT"  # a file that happens to carry an enum's name
    torch.save(src.state_dict(), path)
    assert resolve_weights("tiny", str(path)) == ("file", path)
    net = build_backbone("tiny", weights=str(path))
    assert net.init_weights["kind"] == "file" and net.init_weights["sha256"] == sha256_file(path)


def test_imagenet_offline_names_the_url_and_the_cache_file(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(BanaError) as err:
        build_backbone("vgg16", weights="VGG16_Weights.IMAGENET1K_V1")
    msg = str(err.value)
    assert "\n" not in msg and V1.url in msg and "local path" in msg and "checkpoints" in msg


def test_fc6_fc7_shapes_from_torchvision_sizes():
    # the real sizes on the meta device: shapes without 500 MB of memory
    sd = {"classifier.0.weight": torch.empty(4096, 25088, device="meta"),
          "classifier.0.bias": torch.empty(4096, device="meta"),
          "classifier.3.weight": torch.empty(4096, 4096, device="meta"),
          "classifier.3.bias": torch.empty(4096, device="meta")}
    fc = derive_fc_from_torchvision(sd)
    assert fc["fc6.weight"].shape == (1024, 512, 3, 3)
    assert fc["fc6.bias"].shape == (1024,)
    assert fc["fc7.weight"].shape == (1024, 1024, 1, 1)
    assert fc["fc7.bias"].shape == (1024,)
    # ... which are exactly the shapes of our VGG-16's fc6 (3x3 conv 512->1024) and fc7
    own = build_backbone("vgg16", weights=None).state_dict()
    for k, v in fc.items():
        assert tuple(own[k].shape) == tuple(v.shape), k


def test_fc6_fc7_hand_checked_values():
    # A small fake of torchvision's layout: fc6 Linear over a flattened (C=3, 7, 7) input with
    # 8 outputs; entry [o, c*49 + y*7 + x] = 1000*o + 49*c + 7*y + x. fc7 [o, k] = 100*o + k.
    n, c = 8, 3
    o = torch.arange(n, dtype=torch.float64)[:, None]
    w6 = 1000 * o + torch.arange(c * 49, dtype=torch.float64)[None, :]
    w7 = 100 * o + torch.arange(n, dtype=torch.float64)[None, :]
    sd = {"classifier.0.weight": w6, "classifier.0.bias": torch.arange(n, dtype=torch.float64) + 0.5,
          "classifier.3.weight": w7, "classifier.3.bias": -torch.arange(n, dtype=torch.float64)}
    fc = derive_fc_from_torchvision(sd)
    assert fc["fc6.weight"].shape == (2, 3, 3, 3)
    # kept filter 1 is torchvision filter 4; channel 2; tap (1, 2) is kernel position (3, 6):
    # 1000*4 + 49*2 + 7*3 + 6 = 4125
    assert fc["fc6.weight"][1, 2, 1, 2].item() == 4125.0
    assert fc["fc6.weight"][0, 0, 0, 0].item() == 0.0
    assert fc["fc6.bias"].tolist() == [0.5, 4.5]
    # fc7: kept outputs 0, 4 and kept inputs 0, 4 -> [[0, 4], [400, 404]]
    assert fc["fc7.weight"].flatten().tolist() == [0.0, 4.0, 400.0, 404.0]
    assert fc["fc7.bias"].tolist() == [0.0, -4.0]


def test_no_fc_layers_leave_fc6_fc7_random():
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    sd = {f"features.{k}": v for k, v in features.state_dict().items()}
    out = vgg16_from_torchvision_state(sd, with_fc=True)
    assert not any(k.startswith("fc") for k in out)

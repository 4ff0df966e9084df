"""Mask R-CNN construction: a local ResNet-50 weights file lands in the backbone (frozen batch
norm, as torchvision does), a whole-model file loads where shapes fit, and a saved model
rebuilds bit-exactly through load_instance_model."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.ops import FrozenBatchNorm2d

from banacli.artifacts import save_model
from banacli.errors import BanaError
from banacli.instances.maskrcnn import build_mask_rcnn, inst_arch, load_instance_model
from banacli.models.normalize import TORCHVISION


def test_resnet50_file_goes_into_the_backbone_and_round_trips(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet50()
    with torch.no_grad():
        resnet.bn1.running_mean.uniform_(-1, 1)  # something a fresh init would not have
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    model = build_mask_rcnn("resnet50_fpn", 4, weights=str(path), min_size=64, max_size=64)
    body = model.backbone.body
    assert isinstance(body.bn1, FrozenBatchNorm2d) and model.frozen_bn
    assert torch.equal(body.conv1.weight, resnet.conv1.weight)
    assert torch.equal(body.bn1.running_mean, resnet.bn1.running_mean)
    assert torch.equal(body.layer4[2].conv3.weight, resnet.layer4[2].conv3.weight)
    assert not body.conv1.weight.requires_grad and body.layer2[0].conv1.weight.requires_grad

    run = tmp_path / "run"
    save_model(run / "inst" / "model.safetensors", model.state_dict(), arch=inst_arch("resnet50_fpn"),
               class_names=["background", "a", "b", "c"], normalization=TORCHVISION,
               extra={"min_size": 64, "max_size": 64, "frozen_bn": True})
    again, meta = load_instance_model(run, "cpu")
    sd = again.state_dict()
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    assert meta["arch"] == "maskrcnn/resnet50_fpn"


def test_whole_model_file_loads_where_shapes_fit(tmp_path):
    torch.manual_seed(2)
    src = build_mask_rcnn("tiny", 6)
    path = tmp_path / "whole.pth"
    torch.save({"model": src.state_dict()}, path)
    dst = build_mask_rcnn("tiny", 3, weights=str(path))  # other class count: predictors keep their init
    assert torch.equal(dst.backbone.body[0].weight, src.backbone.body[0].weight)
    assert torch.equal(dst.roi_heads.mask_head[0][0].weight, src.roi_heads.mask_head[0][0].weight)
    assert dst.roi_heads.box_predictor.cls_score.weight.shape[0] == 3


def test_weights_errors_name_the_problem(tmp_path):
    with pytest.raises(BanaError, match="nope.pth"):
        build_mask_rcnn("resnet50_fpn", 3, weights=str(tmp_path / "nope.pth"))
    with pytest.raises(BanaError, match="tiny has no ImageNet"):
        build_mask_rcnn("tiny", 3, weights="imagenet")
    path = tmp_path / "vgg.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 3, 3)}, path)
    with pytest.raises(BanaError, match="not a ResNet-50 state dict"):
        build_mask_rcnn("resnet50_fpn", 3, weights=str(path))

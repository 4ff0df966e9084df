"""Backbone registry: ``build_backbone(name, weights=..., fc6_dilation=...)``.

Every backbone maps normalised (B, 3, H, W) images to (B, out_channels, ceil(H/8), ceil(W/8))
features (output stride 8, feature pixel i centred on input pixel 8i) and carries
``out_channels``, ``output_stride`` and ``normalization`` (the input convention its weights
expect, stored with every checkpoint).

``weights``:
- ``None``: random init.
- ``"imagenet"``: torchvision's ImageNet weights through its weight enums (downloaded into the
  torch hub cache, or read from it). Offline this is a one-line BanaError asking for a file.
- a path: a local ``.safetensors`` file or a torchvision-format state dict (``.pth``, read with
  ``torch.load(weights_only=True)``; nothing is unpickled).

Normalisation chosen per backbone and weights:

============ ============== ======================================================
backbone      weights        normalisation
============ ============== ======================================================
vgg16         None           CAFFE (the reference's convention)
vgg16         imagenet       TORCHVISION
vgg16         file           TORCHVISION if its keys are torchvision's (features.N),
                             CAFFE if they are ours / the authors' (conv1_1 ... fc7,
                             i.e. a Caffe-converted VGG-16)
resnet50/101  any            TORCHVISION (torchvision ResNet weights are RGB/std)
tiny          None or file   TORCHVISION (unit-variance inputs train from scratch)
============ ============== ======================================================
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from banacli.artifacts import read_state_dict
from banacli.errors import BanaError
from banacli.models.normalize import CAFFE, TORCHVISION
from banacli.models.resnet import ResNetBackbone, load_resnet_state
from banacli.models.tiny import tiny_vgg
from banacli.models.vgg16 import (
    VGG16,
    is_torchvision_vgg_state,
    load_vgg16_state,
    vgg16_from_torchvision_state,
)

BACKBONES: tuple[str, ...] = ("vgg16", "resnet50", "resnet101", "tiny")


def list_backbones() -> list[str]:
    return list(BACKBONES)


def _imagenet_enum(name: str):
    from torchvision import models as tvm

    return {
        "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
        "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1,
    }[name]


def download_imagenet_state(name: str) -> dict[str, Tensor]:
    """torchvision's ImageNet state dict for ``name`` (hub cache or download); BanaError offline."""
    if name not in ("vgg16", "resnet50", "resnet101"):
        raise BanaError(f"backbone {name!r} has no ImageNet weights: use weights=None (random init)")
    enum = _imagenet_enum(name)
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, hash mismatch, ...
        raise BanaError(
            f"could not fetch torchvision ImageNet weights for {name} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); offline? download "
            f"{enum.url} elsewhere and pass its local path as the weights"
        ) from err


def load_state_file(path: str | Path) -> dict[str, Tensor]:
    """Read a local weights file (.safetensors, or .pth/.pt via torch.load(weights_only=True)),
    dropping a DataParallel ``module.`` prefix."""
    if not Path(path).is_file():
        raise BanaError(f"weights file {path} does not exist (use 'imagenet', a file path, or none)")
    sd = read_state_dict(path)
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items()}
    if any(k.startswith("backbone.") for k in sd):
        # a whole network (e.g. a bana stage-1 classifier, RUN/cls/model.safetensors): its backbone
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    return sd


def build_backbone(
    name: str, *, weights: str | Path | None = None, fc6_dilation: int = 1
) -> nn.Module:
    """Build backbone ``name`` (one of BACKBONES); see the module docstring for ``weights``."""
    if name not in BACKBONES:
        raise BanaError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if weights is not None and str(weights) == "":
        weights = None
    imagenet = weights is not None and str(weights) == "imagenet"
    source = "torchvision ImageNet weights" if imagenet else str(weights)

    if name in ("vgg16", "tiny"):
        model: nn.Module = VGG16(fc6_dilation=fc6_dilation) if name == "vgg16" else tiny_vgg(fc6_dilation=fc6_dilation)
        model.normalization = dict(CAFFE if name == "vgg16" else TORCHVISION)
        if weights is not None:
            if name == "tiny" and imagenet:
                raise BanaError("backbone 'tiny' has no ImageNet weights: use weights=None (random init)")
            sd = download_imagenet_state(name) if imagenet else load_state_file(weights)
            if is_torchvision_vgg_state(sd):
                sd = vgg16_from_torchvision_state(sd)
                model.normalization = dict(TORCHVISION)
            elif name == "vgg16":
                model.normalization = dict(CAFFE)  # our / the authors' names: Caffe-converted
            load_vgg16_state(model, sd, source=source)
    else:
        if fc6_dilation != 1:
            raise BanaError(f"fc6_dilation applies to vgg16/tiny only, not {name}")
        model = ResNetBackbone(name)
        model.normalization = dict(TORCHVISION)
        if weights is not None:
            sd = download_imagenet_state(name) if imagenet else load_state_file(weights)
            load_resnet_state(model, sd, source=source)
    model.backbone_name = name
    return model

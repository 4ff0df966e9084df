"""Backbone registry: ``build_backbone(name, weights=..., fc6_dilation=...)``.

Every backbone maps normalised (B, 3, H, W) images to (B, out_channels, ceil(H/8), ceil(W/8))
features (output stride 8, feature pixel i centred on input pixel 8i) and carries
``out_channels``, ``output_stride`` and ``normalization`` (the input convention its weights
expect, stored with every checkpoint).

``weights`` (see :func:`resolve_weights`):
- ``None``, ``"none"``, ``"null"``: random init.
- ``"auto"`` (the config default): ImageNet for vgg16/resnet50/resnet101, random init for tiny(-bn).
- ``"imagenet"`` or a torchvision enum name — ``"IMAGENET1K_V1"``, ``"DEFAULT"``,
  ``"VGG16_Weights.IMAGENET1K_V1"`` — torchvision's weights through its weight enums
  (downloaded into the torch hub cache, or read from it). Offline this is a one-line BanaError
  naming the URL and where to put the file.
- a path: a local ``.safetensors`` file or a torchvision-format state dict (``.pth``, read with
  ``torch.load(weights_only=True)``; nothing is unpickled). An existing file wins over a name.

vgg16 from torchvision weights also gets fc6/fc7, derived from torchvision's fully connected
layers as DeepLab built ``vgg16_20M`` (:func:`banacli.models.vgg16.derive_fc_from_torchvision`).
The built module carries ``init_weights``: what initialised it (kind, name or path, sha256).

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
tiny, tiny-bn None or file   TORCHVISION (unit-variance inputs train from scratch)
============ ============== ======================================================
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision import models as tvm

from banacli.artifacts import read_state_dict, sha256_file
from banacli.errors import BanaError
from banacli.models.normalize import CAFFE, TORCHVISION
from banacli.models.resnet import ResNetBackbone, load_resnet_state
from banacli.models.tiny import tiny_vgg
from banacli.models.vgg16 import (
    FC6_TAPS,
    FC_SUBSAMPLE,
    VGG16,
    is_torchvision_vgg_state,
    load_vgg16_state,
    vgg16_from_torchvision_state,
)

BACKBONES: tuple[str, ...] = ("vgg16", "resnet50", "resnet101", "tiny", "tiny-bn")
# fc6/fc7 dropout when the caller does not choose: the reference 0.5, none for tiny-bn (models/tiny.py)
DEFAULT_DROPOUT: dict[str, float] = {"vgg16": 0.5, "tiny": 0.5, "tiny-bn": 0.0}
_log = logging.getLogger("bana")


def list_backbones() -> list[str]:
    return list(BACKBONES)


def _imagenet_enum(name: str):
    return {
        "vgg16": tvm.VGG16_Weights.IMAGENET1K_V1,
        "resnet50": tvm.ResNet50_Weights.IMAGENET1K_V1,
        "resnet101": tvm.ResNet101_Weights.IMAGENET1K_V1,
    }[name]


_ENUM_CLASS = {"vgg16": "VGG16_Weights", "resnet50": "ResNet50_Weights", "resnet101": "ResNet101_Weights"}
_ENUM_RE = re.compile(r"(?:([A-Za-z0-9]+_Weights)\.)?([A-Z][A-Z0-9_]*)")
NO_WEIGHTS = ("none", "null")


def resolve_weights(name: str, weights: str | Path | None) -> tuple[str, Any]:
    """What ``weights`` means for backbone ``name``: ``("none", None)``, ``("file", Path)`` or
    ``("torchvision", enum member)``; a BanaError for a name that is neither."""
    if weights is None:
        return "none", None
    text = str(weights).strip()
    if text.lower() in ("", *NO_WEIGHTS):
        return "none", None
    if text.lower() == "auto":
        return ("none", None) if name in ("tiny", "tiny-bn") else ("torchvision", _imagenet_enum(name))
    if Path(text).is_file():
        return "file", Path(text)
    match = _ENUM_RE.fullmatch(text)
    if text.lower() == "imagenet" or match:
        if name not in _ENUM_CLASS:
            raise BanaError(f"backbone {name!r} has no ImageNet weights: use weights=None (random init)")
        if text.lower() == "imagenet":
            return "torchvision", _imagenet_enum(name)
        cls_name, member = match.groups()
        expected = _ENUM_CLASS[name]
        if cls_name is not None and cls_name != expected:
            raise BanaError(f"weights {text}: {cls_name} are not weights of {name}; use {expected}.<NAME>")

        enum_cls = getattr(tvm, expected)
        try:
            return "torchvision", enum_cls[member] if member != "DEFAULT" else enum_cls.DEFAULT
        except KeyError:
            known = ", ".join(["DEFAULT", *enum_cls.__members__])
            raise BanaError(f"weights {text}: torchvision has no {expected}.{member} (known: {known})") from None
    raise BanaError(f"weights file {text} does not exist (use imagenet, a torchvision name such as "
                    f"IMAGENET1K_V1, a file path, or none)")


def _hub_file(enum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(enum.url)


def download_imagenet_state(name: str, enum=None) -> dict[str, Tensor]:
    """torchvision's state dict for ``name`` (hub cache or download); BanaError offline."""
    if name not in ("vgg16", "resnet50", "resnet101"):
        raise BanaError(f"backbone {name!r} has no ImageNet weights: use weights=None (random init)")
    enum = enum or _imagenet_enum(name)
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # URLError, socket errors, hash mismatch, ...
        raise BanaError(
            f"could not fetch torchvision ImageNet weights for {name} ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else 'no detail'}); offline? download "
            f"{enum.url} elsewhere and pass its local path as the weights, or copy it to {_hub_file(enum)}"
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
    name: str, *, weights: str | Path | None = None, fc6_dilation: int = 1, dropout: float | None = None
) -> nn.Module:
    """Build backbone ``name`` (one of BACKBONES); see the module docstring for ``weights``.
    ``fc6_dilation`` and ``dropout`` (of fc6/fc7; None = DEFAULT_DROPOUT) apply to vgg16 and the
    tiny backbones only."""
    if name not in BACKBONES:
        raise BanaError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    if dropout is not None and name not in DEFAULT_DROPOUT:
        raise BanaError(f"dropout applies to {', '.join(DEFAULT_DROPOUT)} only, not {name}")
    dropout = DEFAULT_DROPOUT.get(name, 0.5) if dropout is None else float(dropout)
    kind, what = resolve_weights(name, weights)
    info: dict[str, Any] = {"weights": None if weights is None else str(weights), "kind": kind}
    if kind == "torchvision":
        source = f"torchvision {type(what).__name__}.{what.name}"
        info["name"] = f"{type(what).__name__}.{what.name}"
    else:
        source = str(what)
        if kind == "file":
            info["path"] = str(what)
    sd = None
    if kind != "none":
        if kind == "torchvision":
            sd = download_imagenet_state(name, what)
            hub = _hub_file(what)
            info["sha256"] = sha256_file(hub) if hub.is_file() else None
        else:
            sd = load_state_file(what)
            info["sha256"] = sha256_file(what)

    if name in ("vgg16", "tiny", "tiny-bn"):
        model: nn.Module = (VGG16(fc6_dilation=fc6_dilation, dropout=dropout) if name == "vgg16"
                            else tiny_vgg(fc6_dilation=fc6_dilation, dropout=dropout, batch_norm=name == "tiny-bn"))
        model.normalization = dict(CAFFE if name == "vgg16" else TORCHVISION)
        if sd is not None:
            if is_torchvision_vgg_state(sd):
                sd = vgg16_from_torchvision_state(sd, with_fc=name == "vgg16")
                model.normalization = dict(TORCHVISION)
                if name == "vgg16":
                    derived = "fc6.weight" in sd
                    info["fc6_fc7"] = "derived" if derived else "random"
                    _log.info(
                        "%s: fc6/fc7 %s", source,
                        f"derived from classifier.0/classifier.3 as DeepLab's vgg16_20M (filters 0::{FC_SUBSAMPLE}, "
                        f"taps {list(FC6_TAPS)}; our indices, not checked against the DeepLab release)"
                        if derived else "left at random init (the weights hold no 4096-wide fully connected layers)")
            elif name == "vgg16":
                model.normalization = dict(CAFFE)  # our / the authors' names: Caffe-converted
            load_vgg16_state(model, sd, source=source)
    else:
        if fc6_dilation != 1:
            raise BanaError(f"fc6_dilation applies to vgg16/tiny only, not {name}")
        model = ResNetBackbone(name)
        model.normalization = dict(TORCHVISION)
        if sd is not None:
            load_resnet_state(model, sd, source=source)
    _log.info("backbone %s: %s", name, "random init" if kind == "none" else f"weights {source}"
              + (f" (sha256 {info['sha256'][:12]}...)" if info.get("sha256") else ""))
    model.backbone_name = name
    model.init_weights = info
    return model

"""Importing checkpoints of the authors' public BANA release (github.com/cvlab-yonsei/BANA).

Their stage-1 classifier (``models/ClsNet.py``, class ``Labeler``) and stage-3
DeepLab-LargeFOV (``models/SegNet.py``) are both ``backbone = VGG16(dilation)`` +
``classifier = Conv2d(1024, K, 1, bias=False)``, saved as a plain PyTorch state dict:

========================================  ========================================  ==================
their key                                  our key                                   shape (VGG-16)
========================================  ========================================  ==================
``backbone.conv1_1.weight`` / ``.bias``    ``backbone.conv1_1.weight`` / ``.bias``   (64, 3, 3, 3) / (64,)
... ``conv1_2`` ... ``conv5_3``            same names under ``backbone.``            as VGG-16
``backbone.fc6.weight`` / ``.bias``        ``backbone.fc6.weight`` / ``.bias``       (1024, 512, 3, 3) / (1024,)
``backbone.fc7.weight`` / ``.bias``        ``backbone.fc7.weight`` / ``.bias``       (1024, 1024, 1, 1) / (1024,)
``classifier.weight``                      ``classifier.weight``                     (K, 1024, 1, 1)
========================================  ========================================  ==================

Prefixes are normalised first: any number of leading ``module.`` (``nn.DataParallel``) are
stripped, and bare backbone names (``conv1_1.weight``, as in a saved ``model.backbone``) get
``backbone.``. fc6's dilation (1 in the classifier, 12 in LargeFOV) is not a parameter; it
follows from the architecture written to the sidecar (``bap-classifier/vgg16`` or
``segnet/largefov``). For stage 3 their classifier weight W becomes the weight of our cosine
classifier: their inference computes ``TEMP * cos(phi, W)`` with TEMP = 20, which is ours
with ``tau = 20``. Their inputs are Caffe-normalised (BGR, mean subtracted), so the sidecar
records the Caffe normalisation.

Files are read with ``torch.load(weights_only=True)`` (or as safetensors): nothing is unpickled.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from banacli.artifacts import read_state_dict
from banacli.errors import ArtifactError

RELEASE = "cvlab-yonsei/BANA"
KINDS = ("cls", "seg")
_MODULE_PREFIX = "module."

__all__ = ["KINDS", "RELEASE", "authors_key_map", "normalize_keys", "read_checkpoint", "map_authors_state",
           "target_shapes", "target_arch", "classifier_outputs"]


def target_arch(kind: str, name: str) -> str:
    """Sidecar arch of the converted model: ``bap-classifier/<backbone>`` or ``segnet/<model>``."""
    from banacli.runs import cls_arch, seg_arch  # loads PIL

    return cls_arch(name) if kind == "cls" else seg_arch(name)


def _build(kind: str, name: str, num_classes: int) -> torch.nn.Module:
    """Our network for ``kind`` (cls: backbone vgg16/tiny; seg: model largefov/tiny), random init."""
    from banacli.models.backbones import build_backbone  # loads torch
    from banacli.models.classifier import BAPClassifier  # loads torch
    from banacli.models.deeplab import build_segmenter  # loads torch

    if kind == "cls":
        return BAPClassifier(build_backbone(name, weights=None), num_classes)
    return build_segmenter(name, num_classes, weights=None)


def target_shapes(kind: str, name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = _build(kind, name, num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def authors_key_map() -> dict[str, str]:
    """Their key -> our key (after prefix normalisation); identical names for both kinds."""
    from banacli.models.vgg16 import vgg16_parameter_names  # loads torch

    table = {f"backbone.{n}": f"backbone.{n}" for n in vgg16_parameter_names()}
    table["classifier.weight"] = "classifier.weight"
    return table


def normalize_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Strip leading ``module.`` prefixes; put bare VGG-16 names (``conv1_1.weight``) under ``backbone.``."""
    from banacli.models.vgg16 import vgg16_parameter_names  # loads torch

    bare = set(vgg16_parameter_names())
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        k = key
        while k.startswith(_MODULE_PREFIX):
            k = k[len(_MODULE_PREFIX):]
        if k in bare:
            k = "backbone." + k
        out[k] = value
    return out


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """A plain state dict from ``path``; see :func:`banacli.artifacts.read_state_dict`."""
    return read_state_dict(path)


def _listing(keys: list[str], limit: int = 6) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def _natural(key: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key)]


def map_authors_state(
    state: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], *, source: str, arch: str
) -> dict[str, Tensor]:
    """Rename their keys to ours and check every name and shape against ``shapes``.

    Raises one ArtifactError line listing the missing and unexpected keys, or the first
    parameter whose shape does not fit. Floating tensors are returned as float32.
    """
    table = authors_key_map()
    normalized = normalize_keys(state)
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, value in normalized.items():
        ours = table.get(key)
        if ours is None or ours not in shapes:
            unexpected.append(key)
        else:
            mapped[ours] = value
    missing = sorted((k for k in shapes if k not in mapped), key=_natural)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected {_listing(sorted(unexpected, key=_natural))}")
        raise ArtifactError(f"{source}: does not fit {arch}: {'; '.join(parts)}")
    for key in shapes:
        got = tuple(mapped[key].shape)
        if got != tuple(shapes[key]):
            raise ArtifactError(f"{source}: {key} has shape {got}, {arch} needs {tuple(shapes[key])}")
    return {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in
            ((k, mapped[k]) for k in shapes)}


def classifier_outputs(state: Mapping[str, Tensor], source: str) -> int:
    """K, the number of classes (background included), from their ``classifier.weight``."""
    w = normalize_keys(state).get("classifier.weight")
    if w is None or w.dim() != 4:
        raise ArtifactError(f"{source}: no classifier.weight of shape (K, C, 1, 1); not a BANA checkpoint")
    return int(w.shape[0])

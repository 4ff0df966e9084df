"""Dataset readers (PASCAL VOC layout), the synthetic generator, joint transforms, palette.

See docs/data.md for the layout, the box convention and the behaviour on bad input.
Names are imported lazily, so ``import banacli.data.synthetic`` does not pull in torchvision.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "palette": ("PALETTE", "VOID", "colorize", "load_label_png", "overlay", "save_label_png"),
    "transforms": ("JointAugment", "collate_boxes", "sample_to_tensors", "to_tensor_sample"),
    "voc": ("VOC_CLASSES", "Sample", "VOCDataset", "load_sample", "read_split", "resolve_classes"),
    "synthetic": ("SYNTH_CLASSES", "box_as_mask", "box_baseline_miou", "generate"),
}  # fmt: skip
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"banacli.data.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'banacli.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

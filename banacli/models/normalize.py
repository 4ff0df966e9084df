"""Input normalisation: the convention travels with the checkpoint, it is never guessed.

Means and stds are in 0..255 units and listed in the channel order seen *after* the optional
RGB->BGR swap (so ``CAFFE["mean"]`` is B, G, R).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from banacli.errors import BanaError

# Caffe-converted VGG-16 (the authors' / AffinityNet initialisation): BGR, mean only.
CAFFE: dict[str, Any] = {"mean": [104.008, 116.669, 122.675], "std": [1.0, 1.0, 1.0], "bgr": True}
# torchvision ImageNet weights: RGB, mean/std of (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) x 255.
TORCHVISION: dict[str, Any] = {
    "mean": [123.675, 116.28, 103.53],
    "std": [58.395, 57.12, 57.375],
    "bgr": False,
}

NORMALIZATIONS: dict[str, dict[str, Any]] = {"caffe": CAFFE, "torchvision": TORCHVISION}


def check_normalization(norm: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``norm`` as a plain dict after checking its keys and values (one-line BanaError)."""
    try:
        mean = [float(v) for v in norm["mean"]]
        std = [float(v) for v in norm["std"]]
        bgr = bool(norm["bgr"])
    except (KeyError, TypeError, ValueError) as err:
        raise BanaError(f"bad normalisation {dict(norm)!r}: need mean[3], std[3], bgr") from err
    if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
        raise BanaError(f"bad normalisation {dict(norm)!r}: need 3 means and 3 positive stds")
    return {"mean": mean, "std": std, "bgr": bgr}


def normalize(images: Tensor, norm: Mapping[str, Any]) -> Tensor:
    """(B, 3, H, W) RGB images in 0..255 (uint8 or float) -> normalised float32 tensor."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images, got {tuple(images.shape)}")
    norm = check_normalization(norm)
    x = images.float() if not images.is_floating_point() else images
    if norm["bgr"]:
        x = x.flip(1)  # RGB -> BGR
    mean = torch.tensor(norm["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def denormalize(images: Tensor, norm: Mapping[str, Any]) -> Tensor:
    """Inverse of :func:`normalize`: back to RGB floats in 0..255 (for visualisation)."""
    norm = check_normalization(norm)
    mean = torch.tensor(norm["mean"], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    x = images * std + mean
    return x.flip(1) if norm["bgr"] else x


def mean_rgb(norm: Mapping[str, Any]) -> tuple[float, float, float]:
    """The normalisation's mean colour in RGB order (the padding colour of augmented crops)."""
    mean = list(norm["mean"])
    return tuple(mean[::-1] if norm.get("bgr") else mean)

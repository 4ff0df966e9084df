"""Multi-scale, flipped inference for the segmenters (docs/method.md, "Evaluation").

Logits (already tau-scaled cosines) are averaged over the scales and their horizontal
flips at the input resolution, then turned into probabilities with one softmax. DenseCRF,
if wanted, is the caller's step: ``banacli.ops.crf.dense_crf(image, probs, CRFParams(...))``.
The model should be in ``eval()`` mode; this function does not change its mode.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from banacli.models.normalize import normalize

DEFAULT_SCALES = (1.0, 0.5, 0.75, 1.5)

__all__ = ["DEFAULT_SCALES", "image_probs", "predict_logits", "predict_probs"]


def predict_logits(
    model: nn.Module,
    image: Tensor,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """Mean logits over ``scales`` (and horizontal flips) at the input size.

    ``image``: normalised float (3, H, W) or (B, 3, H, W). Each scale resizes the input
    bilinearly (align_corners=True) to round(s * H) x round(s * W), runs the model, and
    upsamples its logits back to H x W (bilinear, align_corners=True); flipped passes are
    un-flipped before averaging. Returns (K, H, W) or (B, K, H, W) to match the input.
    """
    if not scales:
        raise ValueError("scales must not be empty")
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image  # (B, 3, H, W)
    if x.dim() != 4:
        raise ValueError(f"image must be (3, H, W) or (B, 3, H, W), got {tuple(image.shape)}")
    b, _, h, w = x.shape
    total: Tensor | None = None
    count = 0
    with torch.no_grad():
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=True)
            if flip:
                xs = torch.cat([xs, xs.flip(-1)], dim=0)  # (2B, 3, h', w'): one pass for both
            logits = model(xs)["logits"]
            logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=True)
            if flip:
                logits = logits[:b] + logits[b:].flip(-1)
                count += 2
            else:
                count += 1
            total = logits if total is None else total + logits
    assert total is not None
    mean = total / count
    return mean[0] if single else mean


def predict_probs(
    model: nn.Module,
    image: Tensor,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """Class probabilities (K, H, W) (or (B, K, H, W)): softmax over the averaged logits."""
    logits = predict_logits(model, image, scales=scales, flip=flip)
    return torch.softmax(logits, dim=-3)


def image_probs(
    model: nn.Module,
    image: np.ndarray,
    normalization,
    device: torch.device | str,
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
) -> Tensor:
    """One (H, W, 3) uint8 RGB image -> (K, H, W) class probabilities on ``device``: the image
    normalised with the model's ``normalization``, then :func:`predict_probs` (predict, eval, API)."""
    x = normalize(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].to(device), normalization)
    return predict_probs(model, x, scales=scales, flip=flip)[0]

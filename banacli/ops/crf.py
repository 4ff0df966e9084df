"""Fully connected CRF (Krähenbühl & Koltun, NIPS 2011) on top of per-pixel probabilities.

A thin, validated wrapper around ``pydensecrf``: the unary is ``-log(prob)`` with the
probabilities clipped to ``[UNARY_CLIP, 1]``, one Gaussian (smoothness) kernel and one
bilateral (appearance) kernel on the original RGB image, ``iterations`` mean-field steps.
The defaults are the reference pseudo-label setting (docs/method.md, "Stage 2 — pseudo labels", step 7):
``DCRF = [bi_w 4, bi_xy 55, bi_rgb 3, pos_w 3, pos_xy 3]``, 10 iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from banacli.errors import ConfigError, DataError

__all__ = ["CRFParams", "UNARY_CLIP", "crf_labels", "dense_crf"]

UNARY_CLIP = 1e-5
"""Probabilities are clipped to at least this before ``-log`` (as ``pydensecrf.utils``)."""


@dataclass(frozen=True)
class CRFParams:
    """DenseCRF kernel parameters (all must be positive).

    bi_w / bi_xy / bi_rgb: compatibility weight, spatial and colour standard deviations of
    the bilateral kernel; pos_w / pos_xy: weight and spatial std of the Gaussian kernel.
    """

    bi_w: float = 4
    bi_xy: float = 55
    bi_rgb: float = 3
    pos_w: float = 3
    pos_xy: float = 3
    iterations: int = 10

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ConfigError(f"crf.{f.name} must be a number, got {value!r}")
            if not np.isfinite(value) or value <= 0:
                raise ConfigError(f"crf.{f.name} must be positive, got {value!r}")
        if int(self.iterations) != self.iterations:
            raise ConfigError(f"crf.iterations must be an integer, got {self.iterations!r}")

    @classmethod
    def from_list(cls, values: list[float] | tuple[float, ...], iterations: int = 10) -> "CRFParams":
        """Build from the reference's ``[bi_w, bi_xy, bi_rgb, pos_w, pos_xy]`` list."""
        if len(values) != 5:
            raise ConfigError(f"crf list needs 5 values [bi_w, bi_xy, bi_rgb, pos_w, pos_xy], got {list(values)}")
        bi_w, bi_xy, bi_rgb, pos_w, pos_xy = values
        return cls(bi_w, bi_xy, bi_rgb, pos_w, pos_xy, iterations)


def dense_crf(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """Refine per-pixel class probabilities with a DenseCRF.

    image: (H, W, 3) uint8 RGB. probs: (n, H, W) probabilities (each pixel's column should
    sum to 1; values are clipped to [1e-5, 1] before ``-log``). Returns the CRF marginals,
    float32 (n, H, W).
    """
    import pydensecrf.densecrf as dcrf  # local: the C extension is only needed here

    image = np.asarray(image)
    probs = np.asarray(probs)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"dense_crf needs an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2] or probs.shape[0] < 1:
        raise DataError(f"dense_crf: probs of shape {probs.shape} do not match image {image.shape[:2]}")
    if not np.all(np.isfinite(probs)):
        raise DataError("dense_crf: probabilities contain NaN or inf")
    n, height, width = probs.shape

    clipped = np.clip(probs.astype(np.float32, copy=False), UNARY_CLIP, 1.0)
    unary = np.ascontiguousarray((-np.log(clipped)).reshape(n, -1), dtype=np.float32)
    crf = dcrf.DenseCRF2D(width, height, n)
    crf.setUnaryEnergy(unary)
    crf.addPairwiseGaussian(sxy=float(params.pos_xy), compat=float(params.pos_w))
    crf.addPairwiseBilateral(
        sxy=float(params.bi_xy),
        srgb=float(params.bi_rgb),
        rgbim=np.ascontiguousarray(image),
        compat=float(params.bi_w),
    )
    marginals = crf.inference(int(params.iterations))
    return np.asarray(marginals, dtype=np.float32).reshape(n, height, width)


def crf_labels(image: np.ndarray, probs: np.ndarray, params: CRFParams = CRFParams()) -> np.ndarray:
    """DenseCRF then argmax: (H, W) uint8 class ids (predict, eval and the Python API)."""
    return dense_crf(image, probs, params).argmax(0).astype(np.uint8)

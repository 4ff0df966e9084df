"""Joint transforms of an image, its boxes and its label masks, and a box-aware collate.

Training augmentation (docs/method.md, "Stage 1" and "Stage 3"): random scale in 0.5–1.5, horizontal flip,
colour jitter (brightness, contrast, saturation 0.5), pad with the mean colour to at least
the crop size and random-crop ``crop_size`` x ``crop_size``. Boxes follow every geometric
step; boxes cropped away are dropped with their labels. Masks are padded with 255 (void) and
``valid`` marks the real image pixels, so padding is neither background nor foreground.

Boxes use the convention of ``banacli.data.voc`` (0-based ``x0, y0, x1, y1``, exclusive end).

Randomness comes from torch: pass a ``torch.Generator`` for a reproducible stream, or leave it
out to use the global torch RNG, which DataLoader seeds differently in every worker (a shared
generator would be copied into each worker and repeat the same augmentations there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from banacli.data.palette import VOID
from banacli.data.voc import Sample

# keys of the per-box tensors that collate_boxes concatenates
PER_BOX_KEYS = ("labels", "keep", "difficult")
_RESERVED = {"image", "boxes", "labels", "valid", "keep", "id", "difficult"}


def _resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    if (h, w) == image.shape[:2]:
        return image
    shrink = h < image.shape[0] and w < image.shape[1]
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _resize_mask(mask: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    h, w = size_hw
    if (h, w) == mask.shape[:2]:
        return mask
    # nearest with pixel centres aligned, so a mask and its scaled box agree within a pixel
    return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT)


def _check_inputs(
    image: np.ndarray, boxes: Any, labels: Any, masks: Mapping[str, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    out = {}
    for key, m in (masks or {}).items():
        if key in _RESERVED:
            raise ValueError(f"mask name {key!r} is reserved")
        m = np.asarray(m)
        if m.shape != image.shape[:2] or m.dtype != np.uint8:
            raise ValueError(
                f"mask {key!r} must be {image.shape[:2]} uint8, got {m.shape} {m.dtype}"
            )
        out[key] = m
    return image, boxes, labels, out


def _sample_masks(sample: Sample) -> dict[str, np.ndarray]:
    return {"gt": sample.gt} if sample.gt is not None else {}


class JointAugment:
    """Random scale, flip, colour jitter, pad and crop of an image with its boxes and masks.

    ``aug(image, boxes, labels, masks)`` returns a dict with
    ``image`` (3, S, S) uint8, ``boxes`` (K', 4) float32, ``labels`` (K',) int64, ``keep``
    (K',) int64 (the index of each kept box in the input), every mask of ``masks`` under its
    own key as (S, S) uint8 with 255 on padding, and ``valid`` (S, S) bool (False on padding).
    """

    def __init__(
        self,
        crop_size: int,
        *,
        scale: tuple[float, float] = (0.5, 1.5),
        flip: bool = True,
        jitter: float = 0.5,
        mean_rgb: Sequence[float] = (124, 117, 104),
        min_box_size: float = 1.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        if not (0 < scale[0] <= scale[1]):
            raise ValueError(f"scale range must be 0 < lo <= hi, got {scale}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        if generator is not None and seed is not None:
            raise ValueError("give either generator or seed, not both")
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        self.crop_size = int(crop_size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.flip = flip
        self.jitter = float(jitter)
        self.mean_rgb = tuple(int(round(v)) for v in mean_rgb)
        self.min_box_size = float(min_box_size)
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def _randint(self, high: int) -> int:
        """Uniform in 0..high (inclusive)."""
        return int(torch.randint(0, high + 1, (), generator=self.generator))

    def sample_params(self, height: int, width: int) -> dict[str, Any]:
        """Draw the random parameters for an image of ``height`` x ``width``.

        ``scaled_hw`` the size after scaling, ``flip``, ``jitter`` (brightness, contrast,
        saturation factors), ``jitter_order`` (the order they are applied in) and ``offset``
        (y, x) of the crop window in the scaled, padded image.
        """
        S = self.crop_size
        s = self.scale[0] + (self.scale[1] - self.scale[0]) * self._rand()
        nh, nw = max(1, round(height * s)), max(1, round(width * s))
        flip = self.flip and self._rand() < 0.5
        j = self.jitter
        lo, hi = max(0.0, 1.0 - j), 1.0 + j
        factors = tuple(lo + (hi - lo) * self._rand() for _ in range(3)) if j else (1.0, 1.0, 1.0)
        order = tuple(torch.randperm(3, generator=self.generator).tolist()) if j else ()
        oy, ox = self._randint(max(nh, S) - S), self._randint(max(nw, S) - S)
        return {"scale": s, "scaled_hw": (nh, nw), "flip": flip, "jitter": factors,
                "jitter_order": order, "offset": (oy, ox)}

    def __call__(
        self,
        image: np.ndarray,
        boxes: Any,
        labels: Any,
        masks: Mapping[str, np.ndarray] | None = None,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Augment; ``params`` (from ``sample_params``) replays a given draw."""
        image, boxes, labels, masks = _check_inputs(image, boxes, labels, masks)
        h, w = image.shape[:2]
        S = self.crop_size
        p = params if params is not None else self.sample_params(h, w)

        # scale
        nh, nw = p["scaled_hw"]
        image = _resize_image(image, (nh, nw))
        masks = {k: _resize_mask(m, (nh, nw)) for k, m in masks.items()}
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, nw)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, nh)

        # horizontal flip
        if p["flip"]:
            # a copy, not a view: numpy calls a reversed 1-px-wide view contiguous, so
            # ascontiguousarray keeps its negative stride, which torch.from_numpy refuses
            image = image[:, ::-1].copy()
            masks = {k: m[:, ::-1] for k, m in masks.items()}
            boxes = np.stack([nw - boxes[:, 2], boxes[:, 1], nw - boxes[:, 0], boxes[:, 3]], axis=1)

        # colour jitter on the real pixels only (before padding)
        img_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, nh, nw)
        ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation)
        for k in p["jitter_order"]:
            img_t = ops[k](img_t, p["jitter"][k])

        # pad bottom/right to at least S, then crop S x S at the offset
        oy, ox = p["offset"]
        out_img = torch.tensor(self.mean_rgb, dtype=torch.uint8).view(3, 1, 1).repeat(1, S, S)
        valid = torch.zeros(S, S, dtype=torch.bool)
        # the part of the real image inside the crop window [oy, oy+S) x [ox, ox+S)
        y1, x1 = min(nh, oy + S), min(nw, ox + S)
        ch, cw = max(0, y1 - oy), max(0, x1 - ox)
        out_img[:, :ch, :cw] = img_t[:, oy:y1, ox:x1]
        valid[:ch, :cw] = True
        out: dict[str, torch.Tensor] = {"image": out_img}
        for k, m in masks.items():
            mm = np.full((S, S), VOID, dtype=np.uint8)
            mm[:ch, :cw] = m[oy:y1, ox:x1]
            out[k] = torch.from_numpy(mm)

        boxes = boxes - np.array([ox, oy, ox, oy], dtype=np.float32)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, cw)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, ch)
        keep = np.flatnonzero(
            (boxes[:, 2] - boxes[:, 0] >= self.min_box_size)
            & (boxes[:, 3] - boxes[:, 1] >= self.min_box_size)
        )
        out["boxes"] = torch.from_numpy(np.ascontiguousarray(boxes[keep], dtype=np.float32))
        out["labels"] = torch.from_numpy(labels[keep].copy())
        out["keep"] = torch.from_numpy(keep.astype(np.int64))
        out["valid"] = valid
        return out

    def apply(self, sample: Sample) -> dict[str, Any]:
        """Augment a ``Sample``; its ground truth (if any) is the mask ``gt``. Adds ``id``."""
        out: dict[str, Any] = self(sample.image, sample.boxes, sample.labels, _sample_masks(sample))
        if sample.difficult is not None:
            out["difficult"] = torch.from_numpy(sample.difficult[out["keep"].numpy()].copy())
        out["id"] = sample.id
        return out


def to_tensor_sample(
    image: np.ndarray,
    boxes: Any,
    labels: Any,
    masks: Mapping[str, np.ndarray] | None = None,
    *,
    size: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """The deterministic (evaluation) path: same output as ``JointAugment``, no randomness.

    With ``size=(H', W')`` the image and masks are resized to it (boxes follow); otherwise
    the full resolution is kept. ``valid`` is all True.
    """
    image, boxes, labels, masks = _check_inputs(image, boxes, labels, masks)
    h, w = image.shape[:2]
    if size is not None:
        nh, nw = int(size[0]), int(size[1])
        image = _resize_image(image, (nh, nw))
        masks = {k: _resize_mask(m, (nh, nw)) for k, m in masks.items()}
        boxes = boxes * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
        h, w = nh, nw
    boxes = boxes.copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
    out: dict[str, torch.Tensor] = {
        "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
    }
    for k, m in masks.items():
        out[k] = torch.from_numpy(np.ascontiguousarray(m))
    keep = np.arange(len(boxes))
    out["boxes"] = torch.from_numpy(np.ascontiguousarray(boxes, dtype=np.float32))
    out["labels"] = torch.from_numpy(labels.copy())
    out["keep"] = torch.from_numpy(keep.astype(np.int64))
    out["valid"] = torch.ones(h, w, dtype=torch.bool)
    return out


def sample_to_tensors(sample: Sample, *, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """``to_tensor_sample`` for a ``Sample``; its ground truth (if any) is ``gt``. Adds ``id``."""
    out: dict[str, Any] = to_tensor_sample(
        sample.image, sample.boxes, sample.labels, _sample_masks(sample), size=size
    )
    if sample.difficult is not None:
        out["difficult"] = torch.from_numpy(sample.difficult.copy())
    out["id"] = sample.id
    return out



def collate_boxes(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack images, masks and ``valid``; concatenate boxes as (N, 5) ``[b, x0, y0, x1, y1]``.

    Per-box tensors (``labels``, ``keep``, ``difficult``) are concatenated in the same order;
    non-tensor values (``id``) become lists. Images of different sizes cannot be stacked:
    use a fixed ``size`` in ``to_tensor_sample`` or a batch size of 1.
    """
    if not batch:
        raise ValueError("empty batch")
    out: dict[str, Any] = {}
    keys = list(batch[0].keys())
    for key in keys:
        vals = [item[key] for item in batch]
        if key == "boxes":
            rows = []
            for i, bx in enumerate(vals):
                idx = torch.full((bx.shape[0], 1), float(i), dtype=torch.float32)
                rows.append(torch.cat([idx, bx.to(torch.float32)], dim=1))
            out["boxes"] = torch.cat(rows, dim=0) if rows else torch.zeros(0, 5)
        elif key in PER_BOX_KEYS:
            out[key] = torch.cat(vals, dim=0)
        elif isinstance(vals[0], torch.Tensor):
            shapes = {tuple(v.shape) for v in vals}
            if len(shapes) > 1:
                raise ValueError(
                    f"cannot stack {key!r} of shapes {sorted(shapes)}; "
                    "use a fixed size or batch size 1"
                )
            out[key] = torch.stack(vals, dim=0)
        else:
            out[key] = list(vals)
    return out

"""Boxes and the pixels they cover: every box -> pixel / crop / mask conversion of bana.

A box is float ``x0, y0, x1, y1`` in 0-based pixel coordinates with an exclusive end (the
datasets convert VOC's 1-based inclusive boxes on reading: ``x0 = xmin - 1, x1 = xmax``).

Two conventions (``labels.box_convention``, :data:`BOX_CONVENTIONS`):

* ``voc`` (:func:`box_extents`): a box covers every pixel it touches: columns ``floor(x0) ..
  ceil(x1) - 1`` and rows ``floor(y0) .. ceil(y1) - 1``, clipped to the image; a box that
  would cover no pixel (x1 <= x0 after rounding) is widened to one pixel. Integer boxes
  are used as they are.
* ``authors`` (:func:`authors_extents`): the authors' stage-2 slices ``[ymin:ymax, xmin:xmax]``
  of the 1-based VOC values after a float32 normalise / denormalise round trip truncated by
  ``.long()``; it drops the box's first row and column (docs/method.md, "Box convention").

:func:`foreground_extents` picks one by name. :func:`box_pixel_ranges` is the touched-pixel
range without the one-pixel widening (crops, crowd regions, the label export);
:func:`definite_background` / :func:`definite_background_tensor` the mask M of pixels in no
box (numpy for one image, torch for a batch); :func:`union_mask` the pixels of a set of extents;
:func:`paint_order` the "smaller box on top" order of the Box baseline and the instance masks.
Pure numpy / torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from banacli.errors import ConfigError, DataError

__all__ = [
    "BOX_CONVENTIONS", "authors_extents", "box_extents", "box_pixel_ranges", "check_box_labels",
    "definite_background", "definite_background_tensor", "foreground_extents", "paint_order", "union_mask",
]

BOX_CONVENTIONS = ("voc", "authors")


def box_extents(boxes: np.ndarray | Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Float (K, 4) boxes -> int64 (K, 4) pixel extents ``x0, y0, x1, y1`` (exclusive end).

    floor for the start, ceil for the end, clipped to the image; at least one pixel wide
    and high. Raises DataError for a box that lies wholly outside the image.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not np.all(np.isfinite(b)):
        raise DataError("boxes contain NaN or inf")
    x0 = np.clip(np.floor(b[:, 0]), 0, width).astype(np.int64)
    y0 = np.clip(np.floor(b[:, 1]), 0, height).astype(np.int64)
    x1 = np.clip(np.ceil(b[:, 2]), 0, width).astype(np.int64)
    y1 = np.clip(np.ceil(b[:, 3]), 0, height).astype(np.int64)
    outside = (b[:, 2] < 0) | (b[:, 3] < 0) | (b[:, 0] >= width) | (b[:, 1] >= height)
    if outside.any():
        k = int(np.flatnonzero(outside)[0])
        raise DataError(f"box {k} {b[k].tolist()} lies outside the {width}x{height} image")
    x0 = np.minimum(x0, width - 1)
    y0 = np.minimum(y0, height - 1)
    x1 = np.maximum(x1, x0 + 1)
    y1 = np.maximum(y1, y0 + 1)
    return np.stack([x0, y0, x1, y1], axis=1)


def check_box_labels(labels: np.ndarray | Sequence[int], n_boxes: int) -> np.ndarray:
    """(K,) box labels as int64, checked: one per box, integers in 1..254 (uint8, 255 = void)."""
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != n_boxes:
        raise DataError(f"{n_boxes} boxes but {lab.shape[0]} labels")
    if lab.size and (not np.all(lab == np.round(lab)) or lab.min() < 1 or lab.max() > 254):
        raise DataError(f"box labels must be integers in 1..254, got {sorted(set(lab.tolist()))}")
    return lab.astype(np.int64)


def authors_extents(boxes: np.ndarray | Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """The authors' foreground extents of 0-based exclusive-end boxes: int64 (K, 4)
    ``x0, y0, x1, y1`` to slice as ``[y0:y1, x0:x1]`` (possibly empty).

    Their loader keeps VOC's 1-based values ``xmin = x0 + 1, ymin = y0 + 1, xmax = x1, ymax =
    y1`` as float32, normalises them with ``v / n - 1`` (n = (size - 1) / 2, numpy float32),
    denormalises with ``b * n + n`` (torch float32) and truncates with ``.long()``; stage 2 then
    slices ``[ymin:ymax, xmin:xmax]``, which drops the box's first row and column, and a
    truncated coordinate (27 -> 26 for some sizes) moves an edge by one more pixel.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    xml = np.stack([b[:, 0] + 1, b[:, 1] + 1, b[:, 2], b[:, 3]], axis=1).astype(np.float32)
    sizes = (int(width), int(height), int(width), int(height))
    out = np.empty(xml.shape, dtype=np.int64)
    for j in range(4):  # column by column, with each library's own float32 arithmetic
        n = (sizes[j] - 1) / 2  # a Python float, as theirs: numpy and torch then stay in float32
        normed = xml[:, j] / n - 1  # numpy: float32 array with a python float stays float32
        t = torch.from_numpy(np.ascontiguousarray(normed, dtype=np.float32))
        out[:, j] = (t * n + n).long().numpy()  # torch: float32 arithmetic, truncation toward 0
    lim = np.array([width, height, width, height])
    return np.clip(out, 0, lim)


def foreground_extents(boxes: np.ndarray | Sequence[Sequence[float]], height: int, width: int,
                       convention: str = "voc") -> np.ndarray:
    """The extents a box's class owns (CAM support, CRF and retrieval class masks)."""
    if convention == "authors":
        return authors_extents(boxes, height, width)
    if convention != "voc":
        raise ConfigError(f"box_convention must be one of {', '.join(BOX_CONVENTIONS)}, got {convention!r}")
    return box_extents(boxes, height, width)


def box_pixel_ranges(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """(K, 4) int64 ``c0, r0, c1, r1``: the pixel columns c0..c1-1 and rows r0..r1-1 a box touches.

    A pixel counts as touched when the box overlaps any part of it, so for integer boxes the
    range is exactly ``x0 .. x1-1``; fractional boxes (after scaling) round outwards.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    lo = np.floor(b[:, :2])
    hi = np.ceil(b[:, 2:])
    out = np.concatenate([lo, hi], axis=1).astype(np.int64)
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    return out


def definite_background(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """M: (H, W) bool, True where a pixel lies in no box (any overlap counts as inside)."""
    r = box_pixel_ranges(boxes, height, width)
    cols = np.arange(width)
    rows = np.arange(height)
    in_cols = (cols[None, :] >= r[:, 0:1]) & (cols[None, :] < r[:, 2:3])  # (K, W)
    in_rows = (rows[None, :] >= r[:, 1:2]) & (rows[None, :] < r[:, 3:4])  # (K, H)
    inside = in_rows.T.astype(np.float32) @ in_cols.astype(np.float32)  # (H, W) box count
    return inside == 0


def union_mask(ext: np.ndarray, height: int, width: int, select: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: the pixels of the extents ``ext`` (those with ``select[k]`` when given)."""
    mask = np.zeros((height, width), dtype=bool)
    for k, (x0, y0, x1, y1) in enumerate(ext):
        if select is None or select[k]:
            mask[y0:y1, x0:x1] = True
    return mask


def definite_background_tensor(boxes: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """M = valid & (in no box): (H, W) bool, or (B, H, W) with ``boxes`` (N, 5) batched.

    ``boxes`` is (K, 4) ``x0, y0, x1, y1`` for one image, or (N, 5) ``[b, x0, y0, x1, y1]``
    (from ``collate_boxes``) with ``valid`` (B, H, W). A pixel any box overlaps is inside.
    Padding is not background: it is False in M.
    """
    batched = valid.dim() == 3
    if batched != (boxes.shape[-1] == 5):
        raise ValueError("use (N, 5) boxes with (B, H, W) valid, or (K, 4) boxes with (H, W)")
    H, W = valid.shape[-2:]
    b = boxes.to(torch.float32)
    coords = b[:, 1:] if batched else b
    x0 = coords[:, 0:1].floor()
    y0 = coords[:, 1:2].floor()
    x1 = coords[:, 2:3].ceil()
    y1 = coords[:, 3:4].ceil()
    cols = torch.arange(W, device=b.device, dtype=torch.float32)[None, :]
    rows = torch.arange(H, device=b.device, dtype=torch.float32)[None, :]
    in_cols = ((cols >= x0) & (cols < x1)).to(torch.float32)  # (K, W)
    in_rows = ((rows >= y0) & (rows < y1)).to(torch.float32)  # (K, H)
    if not batched:
        inside = in_rows.T @ in_cols > 0  # (H, W)
        return valid & ~inside
    B = valid.shape[0]
    onehot = torch.zeros(B, b.shape[0], device=b.device, dtype=torch.float32)
    if b.shape[0]:
        onehot[b[:, 0].long(), torch.arange(b.shape[0], device=b.device)] = 1.0
    # (B, H, W): count of boxes of image b covering each pixel
    inside = torch.einsum("bk,kh,kw->bhw", onehot, in_rows, in_cols) > 0
    return valid & ~inside


def paint_order(ext: np.ndarray, *, ties: str = "later") -> np.ndarray:
    """(K,) indices to paint extents in so that smaller boxes end on top: largest area first.

    Among boxes of equal area the one listed later ends on top with ``ties="later"`` (the Box
    baseline: a stable sort on -area) or the one listed first with ``ties="first"`` (instance
    masks: input order reversed among equal areas).
    """
    ext = np.asarray(ext).reshape(-1, 4)
    area = (ext[:, 2] - ext[:, 0]) * (ext[:, 3] - ext[:, 1])
    if ties == "later":
        return np.argsort(-area, kind="stable")
    if ties == "first":
        return np.lexsort((-np.arange(len(ext)), -area))
    raise ValueError(f"ties must be 'later' or 'first', got {ties!r}")

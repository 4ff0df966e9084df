"""Baseline pseudo-label generators from boxes (paper Table 1: "Box" and "GrabCut").

Pure functions ``(image, boxes, labels) -> uint8 (H, W) label map`` with class 0 for the
background; the stage that uses them registers them by name. Boxes follow the convention
of :func:`banacli.boxes.box_extents` (0-based, exclusive end, floor/ceil to pixels).
Where boxes overlap, the smaller box is drawn on top (boxes sorted by area, descending,
ties kept in input order).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from banacli.errors import DataError
from banacli.boxes import box_extents, check_box_labels, paint_order

__all__ = ["box_labeler", "grabcut_labeler", "GRABCUT_MIN_SIDE"]

GRABCUT_MIN_SIDE = 4
"""Boxes narrower or lower than this many pixels are labelled as whole boxes: GrabCut's
colour models need a few samples inside and outside the rectangle."""


def _prepare(image: np.ndarray, boxes, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
    ext = box_extents(boxes, image.shape[0], image.shape[1])
    lab = check_box_labels(labels, len(ext))
    order = paint_order(ext, ties="later")  # largest first, so smaller boxes end on top
    return image, ext[order], lab[order]


def box_labeler(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
) -> np.ndarray:
    """Every pixel of a box gets its class; smaller boxes over larger ones."""
    image, ext, lab = _prepare(image, boxes, labels)
    out = np.zeros(image.shape[:2], dtype=np.uint8)
    for (x0, y0, x1, y1), c in zip(ext, lab):
        out[y0:y1, x0:x1] = c
    return out


def grabcut_labeler(
    image: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
    iterations: int = 5,
) -> np.ndarray:
    """OpenCV GrabCut per box (GC_INIT_WITH_RECT), combined with smaller boxes on top.

    Each box is segmented on its own from the whole image; its (probable) foreground
    pixels inside the box get the box's class, painted largest box first. Pixels outside
    all boxes, and box pixels no GrabCut claims, are background. A box smaller than
    ``GRABCUT_MIN_SIDE`` on a side, one that covers the whole image (no background
    samples), one where OpenCV fails, or one whose GrabCut foreground is empty falls
    back to the whole box (an annotated box always holds an object).
    """
    import cv2  # local: only the GrabCut baseline needs OpenCV

    if int(iterations) < 1:
        raise DataError(f"grabcut iterations must be >= 1, got {iterations}")
    image, ext, lab = _prepare(image, boxes, labels)
    height, width = image.shape[:2]
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    out = np.zeros((height, width), dtype=np.uint8)
    for (x0, y0, x1, y1), c in zip(ext, lab):
        fg = np.zeros((height, width), dtype=bool)
        fg[y0:y1, x0:x1] = True
        small = (x1 - x0) < GRABCUT_MIN_SIDE or (y1 - y0) < GRABCUT_MIN_SIDE
        whole = x0 == 0 and y0 == 0 and x1 == width and y1 == height
        if not (small or whole):
            mask = np.zeros((height, width), dtype=np.uint8)
            bgd = np.zeros((1, 65), dtype=np.float64)
            fgd = np.zeros((1, 65), dtype=np.float64)
            rect = (int(x0), int(y0), int(x1 - x0), int(y1 - y0))
            try:
                cv2.grabCut(bgr, mask, rect, bgd, fgd, int(iterations), cv2.GC_INIT_WITH_RECT)
                cut = (mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)
                cut[:, :x0] = cut[:, x1:] = False
                cut[:y0, :] = cut[y1:, :] = False
                if cut.any():
                    fg = cut
            except cv2.error:
                pass  # keep the whole box
        # Smaller boxes come later and overwrite; inside this box, pixels GrabCut calls
        # background stay whatever a larger box gave them (or background).
        out[fg] = c
    return out

"""Instance masks from a semantic label map and the boxes it was made from.

A box's instance mask is the set of pixels inside the box (the extents of
:func:`banacli.boxes.box_extents`: 0-based, exclusive end, rounded outwards) that the
label map gives the box's class. Where several boxes of one class overlap, a pixel of that
class belongs to the **smallest** of them (by pixel area; ties go to the box listed first) —
the same "smaller box on top" rule as the Box baseline (:mod:`banacli.ops.labelers`): a
small object overlapping a large one of its class is usually in front of it. Pixels of a
box's class inside no box stay unassigned; a box may end up with an empty mask.

Pure numpy, no I/O: gen-labels (instance pseudo masks), train-inst (mask targets) and eval
use the one rule.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from banacli.boxes import box_extents, check_box_labels, paint_order

__all__ = ["box_instance_masks", "instance_owner"]


def instance_owner(
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
    height: int,
    width: int,
) -> np.ndarray:
    """The rule in index form: an (L, H, W) int64 array, L = max label + 1, where
    ``owner[c, y, x]`` is the index of the box of class ``c`` that owns pixel (y, x) for
    class ``c``, or -1 when no box of class ``c`` covers it.
    """
    ext = box_extents(boxes, height, width)
    lab = check_box_labels(labels, len(ext))
    n_cls = int(lab.max()) + 1 if len(lab) else 1
    owner = np.full((n_cls, height, width), -1, dtype=np.int64)
    # Paint the largest boxes first so smaller ones overwrite them; among equal areas the first wins.
    order = paint_order(ext, ties="first")
    for k in order:
        x0, y0, x1, y1 = ext[k]
        owner[lab[k], y0:y1, x0:x1] = k
    return owner


def box_instance_masks(
    label: np.ndarray,
    boxes: np.ndarray | Sequence[Sequence[float]],
    labels: np.ndarray | Sequence[int],
) -> np.ndarray:
    """(K, H, W) bool: for each box, the pixels of its class inside it that it owns.

    ``label`` is an (H, W) class-id map (0 background, 1..L, 255 void — void is never part
    of a mask). Overlaps of same-class boxes: the smallest box wins (module docstring).
    """
    label = np.asarray(label)
    h, w = label.shape
    lab = check_box_labels(labels, len(np.asarray(boxes, dtype=np.float64).reshape(-1, 4)))
    owner = instance_owner(boxes, lab, h, w)
    masks = np.zeros((len(lab), h, w), dtype=bool)
    for k, c in enumerate(lab):
        masks[k] = (owner[c] == k) & (label == c)
    return masks

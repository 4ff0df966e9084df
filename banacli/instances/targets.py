"""Training targets of the instance model: per-box masks and the region S the mask loss is
taken over, from the pseudo labels (Ycrf / Yret) or from ground truth (VOC SegmentationObject)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from banacli.data.palette import load_label_png
from banacli.errors import DataError
from banacli.ops.instances import box_instance_masks

__all__ = ["gt_instance_targets", "pseudo_instance_targets"]


def pseudo_instance_targets(
    ycrf: np.ndarray, yret: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *, region: str = "s"
) -> tuple[np.ndarray, np.ndarray | None]:
    """(masks (K, H, W) bool from Ycrf by the box rule, S (H, W) bool or None for ``region="all"``)."""
    masks = box_instance_masks(ycrf, boxes, labels)
    if region == "all":
        return masks, None
    return masks, (ycrf == yret) & (ycrf != 255)


def gt_instance_targets(
    path: Path, n_boxes: int, shape_hw: tuple[int, int], *, region: str = "s"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Masks from a VOC SegmentationObject PNG (instance k+1 = box k); S = non-void pixels."""
    if not path.is_file():
        raise DataError(f"{path}: instance mask not found (inst.targets=gt needs SegmentationObject/ID.png)")
    obj = load_label_png(path)
    if obj.shape != tuple(shape_hw):
        raise DataError(f"{path}: mask is {obj.shape[1]}x{obj.shape[0]}, image is {shape_hw[1]}x{shape_hw[0]}")
    ids = np.unique(obj[(obj != 0) & (obj != 255)])
    if ids.size and int(ids.max()) > n_boxes:
        raise DataError(f"{path}: instance {int(ids.max())} but the annotation has {n_boxes} boxes")
    masks = np.stack([obj == k + 1 for k in range(n_boxes)]) if n_boxes else np.zeros((0, *obj.shape), bool)
    return masks, (None if region == "all" else obj != 255)

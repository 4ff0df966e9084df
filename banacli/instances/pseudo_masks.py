"""Instance pseudo masks: RUN/labels/instances_<SET>.json from the label PNGs gen-labels wrote.

For every box of every image and every label set (``Ycrf``, ``Yret``; ``Box``, ``GrabCut`` for
the baseline labelers) the instance mask is the pixels of the box's class inside the box, with
same-class overlaps given to the smallest box (:mod:`banacli.ops.instances`, the one rule).
Written in COCO's result format, a JSON list of::

    {"image_id": ..., "category_id": ..., "segmentation": {"size": [H, W], "counts": "..."},
     "score": ..., "bbox": [x, y, w, h]}

* ``image_id``: COCO data: the image's id in the annotation file; VOC data: the image id
  string (``2007_000032``), which pycocotools accepts as well.
* ``category_id``: the dataset's own ids: COCO category ids (mapped back from 1..L); VOC: 1..L.
* ``segmentation``: compressed RLE (pycocotools), ``counts`` as a string.
* ``bbox``: the annotated box (``[x, y, w, h]``), for reference; COCOeval's segm mode ignores it.
* ``score``: the agreement of the two label sets on this instance, IoU(mask in Ycrf, mask in
  Yret) in [0, 1] — the same for both files. Ranking instances by it puts first those whose
  pseudo mask the two sets agree on (the reliable region S of the paper's NAL, per instance).
  A labeler with one label set gives score 1.0 to every instance (ties keep input order).
  An instance whose two masks are both empty has IoU 0.

Boxes whose mask is empty in a set are left out of that set's file (there is nothing to rank);
``instances.json`` beside them counts them. The class-agnostic setting (``labels.class_agnostic``,
paper Table 2 "VOC-to-COCO") changes nothing here: Ycrf and Yret still carry each box's class,
taken from the annotation, so the same writer serves it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from banacli.artifacts import atomic_write_json
from banacli.boxes import box_pixel_ranges
from banacli.data.palette import load_label_png
from banacli.data.synth_coco import encode_mask
from banacli.ops.instances import box_instance_masks

__all__ = ["box_results", "dataset_image_id", "instance_results", "mask_iou", "result_entry", "write_instance_results"]


def dataset_image_id(ds, sample_id: str) -> Any:
    """The ``image_id`` of result JSON: COCO's integer id, or VOC's id string."""
    coco_ids = getattr(ds, "coco_ids", None)
    return coco_ids[sample_id] if coco_ids is not None else sample_id


def dataset_category_id(ds, label: int) -> int:
    """1..L -> the dataset's own category id (COCO: the file's id; VOC: unchanged)."""
    back = getattr(ds, "label_to_category", None)
    return int(back[int(label)]) if back is not None else int(label)


def result_entry(ds, sid: str, label: int, mask: np.ndarray, score: float, box) -> dict[str, Any]:
    """One COCO result (module docstring) of a (H, W) bool mask of class ``label`` in image ``sid``."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return {"image_id": dataset_image_id(ds, sid), "category_id": dataset_category_id(ds, label),
            "segmentation": encode_mask(mask), "score": float(score), "bbox": [x0, y0, x1 - x0, y1 - y0]}


def mask_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(K,) IoU of (K, H, W) bool masks pairwise along K; 0 where both are empty."""
    inter = (a & b).reshape(len(a), -1).sum(1)
    union = (a | b).reshape(len(a), -1).sum(1)
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def instance_results(ds, label_dirs: dict[str, Path]) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Result lists for each label set of ``label_dirs`` ({name: folder of ID.png}) and the count
    of empty masks left out per set."""
    names = list(label_dirs)
    results: dict[str, list[dict]] = {n: [] for n in names}
    empty = dict.fromkeys(names, 0)
    for i, sid in enumerate(ds.ids):
        maps = {n: load_label_png(Path(d) / f"{sid}.png") for n, d in label_dirs.items()}
        boxes, labels = ds.box_labels(i, *maps[names[0]].shape)  # no image decode needed
        masks = {n: box_instance_masks(m, boxes, labels) for n, m in maps.items()}
        score = mask_iou(masks[names[0]], masks[names[-1]]) if len(names) >= 2 else np.ones(len(labels))
        for n in names:
            for k, (box, lab) in enumerate(zip(boxes, labels)):
                if not masks[n][k].any():
                    empty[n] += 1
                    continue
                results[n].append(result_entry(ds, sid, int(lab), masks[n][k], score[k], box))
    return results, empty


def box_results(ds) -> list[dict]:
    """The Box baseline as instances: each box's full rectangle, score 1.0."""
    out = []
    for i in range(len(ds)):
        s = ds.load(i)
        for (c0, r0, c1, r1), box, lab in zip(box_pixel_ranges(s.boxes, s.height, s.width), s.boxes, s.labels):
            m = np.zeros((s.height, s.width), dtype=bool)
            m[r0:r1, c0:c1] = True
            out.append(result_entry(ds, s.id, int(lab), m, 1.0, box))
    return out


def write_instance_results(ctx, ds, out_dirs: dict[str, Path]) -> dict[str, Path]:
    """gen-labels' hook: RUN/labels/instances_<SET>.json for every label set just written, and
    RUN/labels/instances.json (split, image count, empty masks per set)."""
    results, empty = instance_results(ds, out_dirs)
    root = Path(ctx.stage_dir)
    written = {}
    for name, items in results.items():
        written[name] = root / f"instances_{name}.json"
        atomic_write_json(written[name], items)
    atomic_write_json(root / "instances.json", {
        "split": ds.split, "format": getattr(ds, "format", "voc"), "images": len(ds),
        "files": {n: p.name for n, p in written.items()}, "empty_masks_left_out": empty,
        "score": "IoU of the instance's masks in the first and last label set (1.0 with one set)",
    })
    ctx.info(f"gen-labels: instance masks in {', '.join(str(p) for p in written.values())}")
    return written

"""The synthetic set in MS-COCO layout (``bana synth --format coco``), and VOC -> COCO JSON.

``generate_coco`` draws the same images as :func:`banacli.data.synthetic.generate` (same seed, same
pixels, same boxes) into a temporary VOC folder and converts it with ``voc_to_coco``::

    OUT/annotations/instances_train.json, OUT/train/ID.jpg
    OUT/annotations/instances_val.json,   OUT/val/ID.jpg      (when val > 0)

Every object becomes one annotation: ``bbox`` ``[x, y, w, h]`` from its box, ``segmentation``
its ground-truth instance mask (SegmentationObject) as compressed RLE, ``area`` the mask's pixel
count, ``iscrowd`` 0. Category ids are deliberately not contiguous (``1, 3, 5, ...`` by default
for the synthetic set) so that every consumer exercises the id mapping. Image ids are 1-based
positions over train then val.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from banacli.artifacts import atomic_write_bytes, atomic_write_json
from banacli.errors import DataError

__all__ = ["encode_mask", "generate_coco", "voc_instances", "voc_to_coco"]


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool -> COCO compressed RLE with ``counts`` as str (JSON-ready)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def voc_instances(root: str | os.PathLike, image_id: str, classes: Sequence[str]):
    """One VOC image's objects: (sample, (K, H, W) bool instance masks from SegmentationObject).

    Instance value k (1..K) of ROOT/SegmentationObject/ID.png is the k-th <object> of the XML
    (VOC's convention); 0 is background and 255 the void border (in no mask).
    """
    from banacli.data.palette import load_label_png  # loads PIL
    from banacli.data.voc import load_sample  # loads torch

    s = load_sample(root, image_id, classes, with_gt=False)
    path = Path(root) / "SegmentationObject" / f"{image_id}.png"
    if not path.is_file():
        raise DataError(f"{path}: instance mask (SegmentationObject) not found")
    obj = load_label_png(path)
    if obj.shape != s.image.shape[:2]:
        raise DataError(f"{path}: mask is {obj.shape[1]}x{obj.shape[0]}, image is {s.width}x{s.height}")
    top = int(obj[obj != 255].max(initial=0))
    if top > len(s.labels):
        raise DataError(f"{path}: instance value {top} but the XML lists {len(s.labels)} objects")
    masks = np.stack([obj == k + 1 for k in range(len(s.labels))]) if len(s.labels) else np.zeros((0, *obj.shape), bool)
    return s, masks


def voc_to_coco(
    voc_root: str | os.PathLike,
    out: str | os.PathLike,
    splits: Sequence[str],
    classes: Sequence[str] | None = None,
    *,
    category_ids: Sequence[int] | None = None,
    copy_images: bool = True,
) -> dict[str, Path]:
    """Write OUT/annotations/instances_SPLIT.json (+ OUT/SPLIT/ images) for each VOC split.

    Needs SegmentationObject/ for the masks. ``category_ids[i]`` is the COCO id of class i + 1
    (default 1..L). Returns ``{split: json path}``.
    """
    from banacli.data.voc import find_image, read_split, resolve_classes  # loads torch

    names = resolve_classes(voc_root, classes)
    cat_ids = list(category_ids) if category_ids is not None else list(range(1, len(names) + 1))
    if len(cat_ids) != len(names) or len(set(cat_ids)) != len(cat_ids):
        raise DataError(f"{out}: need {len(names)} distinct category ids, got {cat_ids}")
    out = Path(out)
    written: dict[str, Path] = {}
    image_no = ann_no = 0
    for split in splits:
        images, anns = [], []
        for image_id in read_split(voc_root, split):
            s, masks = voc_instances(voc_root, image_id, names)
            src = find_image(voc_root, image_id)
            image_no += 1
            images.append({"id": image_no, "file_name": src.name, "width": s.width, "height": s.height})
            if copy_images:
                atomic_write_bytes(out / split / src.name, src.read_bytes())
            for k, (box, lab) in enumerate(zip(s.boxes.tolist(), s.labels.tolist())):
                ann_no += 1
                x0, y0, x1, y1 = box
                anns.append({
                    "id": ann_no, "image_id": image_no, "category_id": int(cat_ids[lab - 1]),
                    "bbox": [x0, y0, x1 - x0, y1 - y0], "area": int(masks[k].sum()),
                    "segmentation": encode_mask(masks[k]), "iscrowd": 0,
                })
        # categories listed in reverse id order on purpose: readers must sort, not trust the order
        cats = [{"id": int(c), "name": n, "supercategory": "shape"} for c, n in zip(cat_ids, names)][::-1]
        path = out / "annotations" / f"instances_{split}.json"
        atomic_write_json(path, {"info": {"description": f"converted from {voc_root} by bana"},
                                 "images": images, "annotations": anns, "categories": cats})
        written[split] = path
    return written


def generate_coco(out: str | os.PathLike, *, images: int, size: int, seed: int, val: int = 0,
                  progress: Any = None, **synth_kwargs: Any) -> dict[str, Any]:
    """``banacli.data.synthetic.generate`` in COCO layout (module docstring). Returns its summary
    plus ``annotations``: the JSON paths."""
    from banacli.data.synthetic import SYNTH_CLASSES, generate  # loads torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".voc-", dir=out) as tmp:
        summary = generate(tmp, images=images, size=size, seed=seed, val=val, progress=progress, **synth_kwargs)
        splits = ["train", "val"] if val else ["train"]
        paths = voc_to_coco(tmp, out, splits, list(SYNTH_CLASSES),
                            category_ids=[2 * i + 1 for i in range(len(SYNTH_CLASSES))])
    summary["root"] = str(out)
    summary["format"] = "coco"
    summary["annotations"] = {k: str(v) for k, v in paths.items()}
    return summary

"""MS-COCO layout reader (pycocotools): images, boxes, crowd regions, optional masks.

Layout (ROOT is the folder holding these; SPLIT is e.g. ``train2017`` or ``val``)::

    ROOT/annotations/instances_SPLIT.json     COCO "instances" JSON (images, annotations, categories)
    ROOT/SPLIT/FILE_NAME                      the images, ``file_name`` of each JSON image entry

Other layouts: ``data.annotations`` and ``data.images`` name the JSON file and the image
folder; ``{split}`` in either is replaced by the split (``/coco/ann/instances_{split}.json``).

Box convention. COCO's ``bbox`` is ``[x, y, w, h]`` in continuous pixel coordinates (pixel
column ``i`` covers ``[i, i + 1)``), so it converts once, here, to the internal
``x0, y0, x1, y1 = x, y, x + w, y + h`` (0-based, exclusive end, see banacli/data/voc.py)
without any ±1. Boxes are clipped to the image; one with no area left is an error, like VOC.

Class ids. COCO category ids are not contiguous (1..90 for 80 classes). The categories are
sorted by id and numbered 1..L (``category_to_label``); ``label_to_category`` maps back on
output. ``data.classes``, when given, must name the same categories and fixes their order.

Crowd boxes (``iscrowd: 1``) are not objects: they get no box and no label. Their pixels are
not definite background either: ``Sample.ignore`` is True inside every crowd box (its pixel
range, rounded outwards) and outside every object box; the background mask M leaves those
pixels out, and gen-labels writes 255 (void) there.

Sample ids are the image file names without suffix (``000000391895``); pseudo-label PNGs use
them. ``coco_ids`` maps them back to COCO's integer image ids for result JSON.

Bad input follows the VOC reader's rules: an image without (non-crowd) annotations, a
degenerate box, an unknown category id or a missing image file is a one-line DataError with
``data.on_error=raise``, and a counted skip with ``on_error=skip``. Annotations are checked
when the dataset is opened (the JSON is in memory anyway); image files lazily in ``raise``
mode, up front in ``skip`` mode. Whatever ``on_error`` says, the file is refused when two image
entries share an ``id`` (pycocotools would give the second the first one's boxes) or when a
``file_name`` leads out of ROOT and the image folder (absolute, or climbing out with ``..``).
Annotations whose ``image_id`` names no image are ignored with one warning line that counts them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from banacli.boxes import box_pixel_ranges, definite_background
from banacli.data.palette import VOID
from banacli.data.voc import (
    Sample,
    _SampleDataset,
    _check_class_names,
    check_image,
    read_image,
    reduced_size,
    shrink_sample,
)
from banacli.errors import DataError
from banacli.data.voc import VOCDataset

ANNOTATION_TEMPLATE = "annotations/instances_{split}.json"
IMAGE_TEMPLATE = "{split}"

__all__ = [
    "COCODataset", "annotation_file", "image_folder", "is_coco", "load_coco_json", "xywh_to_xyxy",
    "xyxy_to_xywh",
]


def annotation_file(root: str | os.PathLike, split: str, template: str | None = None) -> Path:
    """The instances JSON of ``split``: ``template`` (``{split}`` filled in; relative to ROOT
    unless absolute) or ROOT/annotations/instances_SPLIT.json."""
    return Path(root) / (template or ANNOTATION_TEMPLATE).format(split=split)


def image_folder(root: str | os.PathLike, split: str, template: str | None = None) -> Path:
    return Path(root) / (template or IMAGE_TEMPLATE).format(split=split)


def is_coco(root: str | os.PathLike, annotations: str | None = None) -> bool:
    """Auto-detection: an explicit ``data.annotations``, or ROOT/annotations/instances_*.json
    without ROOT/JPEGImages/ (VOC's image folder; not Annotations/, which a case-insensitive
    file system cannot tell from annotations/)."""
    if annotations:
        return True
    root = Path(root)
    return any((root / "annotations").glob("instances_*.json")) and not (root / "JPEGImages").is_dir()


def xywh_to_xyxy(bbox: Sequence[float]) -> tuple[float, float, float, float]:
    """COCO ``[x, y, w, h]`` -> internal ``x0, y0, x1, y1`` (exclusive end): no ±1."""
    x, y, w, h = (float(v) for v in bbox)
    return x, y, x + w, y + h


def xyxy_to_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def load_coco_json(path: Path):
    """A pycocotools ``COCO`` object of ``path``; DataError when missing or malformed."""
    from pycocotools.coco import COCO

    if not path.is_file():
        have = sorted(p.name for p in path.parent.glob("instances_*.json")) if path.parent.is_dir() else []
        hint = f" (here: {', '.join(have)})" if have else ""
        raise DataError(f"{path}: COCO annotation file not found{hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read COCO JSON ({exc})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "categories")):
        raise DataError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    data.setdefault("annotations", [])
    first_entry: dict[Any, int] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
            raise DataError(f"{path}: image entry {i + 1} needs 'id' and 'file_name'")
        try:
            j = first_entry.setdefault(img["id"], i)
        except TypeError:  # a list or dict as id
            raise DataError(f"{path}: image entry {i + 1}: id {img['id']!r} is not a number") from None
        if j != i:  # pycocotools would give the later entry the earlier one's annotations
            other = data["images"][j]
            raise DataError(f"{path}: image entries {j + 1} ({other['file_name']}) and {i + 1} ({img['file_name']}) "
                            f"both have id {img['id']!r}; image ids must be unique")
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not all(k in ann for k in ("id", "image_id", "category_id", "bbox")):
            raise DataError(f"{path}: annotation entry {i + 1} needs 'id', 'image_id', 'category_id' and 'bbox'")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


class COCODataset(_SampleDataset):
    """A map-style dataset over one COCO instances file, with VOCDataset's interface.

    ``ids`` are the sample ids (file stems) of the usable images, ``skipped`` the
    ``(id, reason)`` of those left out (``on_error="skip"``), ``load(i)`` a ``Sample`` whose
    ``gt`` (with ``with_gt``) is the semantic map painted from the instance masks (larger
    instances first, so smaller ones end on top; crowd regions 255), or None when the
    annotations carry no ``segmentation``.
    """

    format = "coco"

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        classes: Sequence[str] | None = None,
        *,
        transform: Callable[[Sample], Any] | None = None,
        with_gt: bool = True,
        on_error: Literal["raise", "skip"] = "raise",
        check_images: Literal["header", "decode"] = "header",
        annotations: str | None = None,
        images: str | None = None,
        max_side: int | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        self.split = split
        self.ann_path = annotation_file(self.root, split, annotations)
        self.image_dir = image_folder(self.root, split, images)
        self.coco = load_coco_json(self.ann_path)
        cats = sorted(self.coco.dataset["categories"], key=lambda c: c["id"])
        if not cats:
            raise DataError(f"{self.ann_path}: no categories")
        names = _check_class_names([str(c.get("name", "")) for c in cats], f"{self.ann_path} categories")
        by_name = {n: c["id"] for n, c in zip(names, cats)}
        if classes is not None:
            order = _check_class_names(classes, "data.classes")
            if sorted(order) != sorted(names):
                raise DataError(f"{self.ann_path}: data.classes ({', '.join(order[:5])}…) do not name the file's "
                                f"{len(names)} categories ({', '.join(names[:5])}…)")
            names = order
        self.classes = list(names)
        self.class_ids = {n: i + 1 for i, n in enumerate(self.classes)}
        #: COCO category id -> label 1..L, and back
        self.category_to_label = {int(by_name[n]): i + 1 for i, n in enumerate(self.classes)}
        self.label_to_category = {v: k for k, v in self.category_to_label.items()}
        self.transform = transform
        self.with_gt = with_gt
        self.on_error = on_error
        self.max_side = max_side
        self.notify = notify
        self.notes: list[str] = []
        self._reported: set[str] = set()

        self._img: dict[str, dict] = {}
        self.coco_ids: dict[str, int] = {}
        for img in sorted(self.coco.dataset["images"], key=lambda d: d["id"]):
            self._check_inside(img)
            sid = Path(str(img["file_name"])).stem
            if sid in self._img:
                raise DataError(f"{self.ann_path}: images {self._img[sid]['id']} and {img['id']} share the file "
                                f"name stem {sid!r}")
            self._img[sid] = img
            self.coco_ids[sid] = img["id"]
        self.all_ids = list(self._img)
        if not self.all_ids:
            raise DataError(f"{self.ann_path}: no images")
        self._note_orphans()
        self.skipped: list[tuple[str, str]] = []
        self._parsed: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]] = {}
        self.ids: list[str] = []
        for sid in self.all_ids:
            try:
                self._parsed[sid] = self._parse(sid)
                if on_error == "skip":
                    self._check_file(sid, check_images)
                self.ids.append(sid)
            except DataError as exc:
                if on_error == "raise":
                    raise
                self.skipped.append((sid, str(exc)))
        if not self.ids:
            first = self.skipped[0][1] if self.skipped else ""
            raise DataError(f"{self.ann_path}: no usable images (first problem: {first})")

    # ------------------------------------------------------------------ per image

    @property
    def _source(self) -> Path:
        return self.ann_path

    def _check_inside(self, img: dict) -> None:
        """DataError unless ``file_name`` stays under the dataset root or the image folder (an
        absolute path or one climbing out with ``..`` could make bana read any file on disk).
        Decided on the names, not on resolved links, so a dataset whose image folder is a link
        still works."""
        name = str(img["file_name"])
        target = os.path.normpath(self.image_dir / name)
        for top in {os.path.normpath(self.root), os.path.normpath(self.image_dir)}:
            if target.startswith(top.rstrip(os.sep) + os.sep):
                return
        raise DataError(f"{self.ann_path}: image {img['id']}: file_name {name!r} points outside {self.image_dir}; "
                        f"images must lie under the dataset root {self.root} (or the folder data.images names)")

    def _note_orphans(self) -> None:
        """A warning in ``notes`` for annotations whose ``image_id`` names no image: they are ignored."""
        known = {img["id"] for img in self._img.values()}
        orphans = [a for a in self.coco.dataset["annotations"] if a["image_id"] not in known]
        if orphans:
            shown = ", ".join(f"annotation {a['id']} -> image_id {a['image_id']!r}" for a in orphans[:3])
            more = f", … ({len(orphans)} in all)" if len(orphans) > 3 else ""
            self.notes.append(f"warning: {self.ann_path}: {len(orphans)} annotation(s) name no image of the file "
                              f"({shown}{more}); they are ignored")

    def image_path(self, image_id: str) -> Path:
        return self.image_dir / str(self._img[image_id]["file_name"])

    def _size(self, sid: str) -> tuple[int, int] | None:
        img = self._img[sid]
        try:
            w, h = int(img.get("width", 0)), int(img.get("height", 0))
        except (TypeError, ValueError):
            raise DataError(f"{self.ann_path}: image {img['id']}: width/height are not numbers") from None
        return (w, h) if w > 0 and h > 0 else None

    def _parse(self, sid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict]]:
        """(boxes unclipped (K, 4), labels (K,), crowd boxes (C, 4), the non-crowd annotations)."""
        img = self._img[sid]
        where = f"{self.ann_path}: image {img['id']} ({img['file_name']})"
        boxes, labels, crowd, objs = [], [], [], []
        for ann in self.coco.imgToAnns.get(img["id"], []):
            cat = ann["category_id"]
            if cat not in self.category_to_label:
                raise DataError(f"{where}: annotation {ann['id']} has unknown category id {cat!r}")
            try:
                box = xywh_to_xyxy(ann["bbox"])
            except (TypeError, ValueError):
                raise DataError(f"{where}: annotation {ann['id']}: bbox must be 4 numbers [x, y, w, h]") from None
            if not np.all(np.isfinite(box)):
                raise DataError(f"{where}: annotation {ann['id']}: bbox is not finite")
            if ann.get("iscrowd", 0):
                crowd.append(box)
                continue
            if box[2] <= box[0] or box[3] <= box[1]:
                raise DataError(f"{where}: annotation {ann['id']}: bbox {ann['bbox']} has zero or negative size")
            boxes.append(box)
            labels.append(self.category_to_label[cat])
            objs.append(ann)
        if not boxes:
            raise DataError(f"{where}: no (non-crowd) annotations")
        size = self._size(sid)
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if size is not None:
            self._clip(b, *size, where, objs)
        return b, np.asarray(labels, dtype=np.int64), np.asarray(crowd, dtype=np.float32).reshape(-1, 4), objs

    def _clip(self, boxes: np.ndarray, w: int, h: int, where: str, objs: list[dict]) -> np.ndarray:
        c = boxes.copy()
        c[:, [0, 2]] = np.clip(c[:, [0, 2]], 0, w)
        c[:, [1, 3]] = np.clip(c[:, [1, 3]], 0, h)
        bad = (c[:, 2] - c[:, 0] <= 0) | (c[:, 3] - c[:, 1] <= 0)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: annotation {objs[k]['id']}: bbox {objs[k]['bbox']} lies outside the "
                            f"{w}x{h} image")
        return c

    def _check_file(self, sid: str, how: str) -> None:
        path = self.image_path(sid)
        if how == "decode":
            h, w = read_image(path).shape[:2]
        else:
            w, h = check_image(path, scan=True)
        size = self._size(sid)
        if size is not None and size != (w, h):
            raise DataError(f"{path}: image is {w}x{h} but {self.ann_path} says {size[0]}x{size[1]}")

    def box_labels(self, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (clipped to ``width`` x ``height``) and labels of item ``index`` without decoding its image."""
        sid = self.ids[index]
        boxes, labels, _, objs = self._parsed[sid]
        return self._clip(boxes, width, height, f"{self.ann_path}: image {self._img[sid]['id']}", objs), labels.copy()

    def instance_masks(self, image_id: str, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(K, H, W) bool ground-truth masks of the non-crowd annotations (box order) and (K,)
        bool telling which had a ``segmentation``."""
        from pycocotools import mask as mask_utils

        objs = self._parsed[image_id][3]
        masks = np.zeros((len(objs), height, width), dtype=bool)
        has = np.zeros(len(objs), dtype=bool)
        for k, ann in enumerate(objs):
            seg = ann.get("segmentation")
            if not seg:
                continue
            rle = _to_rle(seg, height, width)
            masks[k] = mask_utils.decode(rle).astype(bool)
            has[k] = True
        return masks, has

    def _semantic(self, sid: str, height: int, width: int) -> np.ndarray | None:
        masks, has = self.instance_masks(sid, height, width)
        if not has.any():
            return None
        labels = self._parsed[sid][1]
        gt = np.zeros((height, width), dtype=np.uint8)
        for k in np.argsort(-masks.reshape(len(masks), -1).sum(1), kind="stable"):
            gt[masks[k]] = labels[k]
        img = self._img[sid]
        for ann in self.coco.imgToAnns.get(img["id"], []):
            if ann.get("iscrowd", 0) and ann.get("segmentation"):
                gt[mask_of(ann["segmentation"], height, width)] = VOID
        return gt

    def load(self, index: int) -> Sample:
        sid = self.ids[index]
        boxes, labels, crowd, objs = self._parsed[sid]
        path = self.image_path(sid)
        if not path.is_file():
            raise DataError(f"{path}: image file not found")
        image = read_image(path)
        h, w = image.shape[:2]
        size = self._size(sid)
        if size is not None and size != (w, h):
            raise DataError(f"{path}: image is {w}x{h} but {self.ann_path} says {size[0]}x{size[1]}")
        where = f"{self.ann_path}: image {self._img[sid]['id']}"
        boxes = self._clip(boxes, w, h, where, objs)
        ignore = crowd_ignore(crowd, boxes, h, w)
        gt = self._semantic(sid, h, w) if self.with_gt else None
        sample = Sample(id=sid, image=image, boxes=boxes, labels=labels.copy(), gt=gt,
                        difficult=np.zeros(len(labels), dtype=bool), orig_hw=(h, w), ignore=ignore)
        if not self.max_side:
            return sample
        sample = shrink_sample(sample, self.max_side)
        self._note_reduced(sample)
        return sample

    def background_fraction(self, index: int) -> float:
        """Fraction of the image's pixels outside every box and crowd region (no decoding when
        the JSON gives the size)."""
        sid = self.ids[index]
        size = self._size(sid) or check_image(self.image_path(sid))
        w, h = size
        h2, w2 = reduced_size(h, w, 500)
        boxes, _ = self.box_labels(index, h, w)
        scale = np.array([w2 / w, h2 / h, w2 / w, h2 / h], np.float32)
        crowd = self._parsed[sid][2]
        m = definite_background(np.concatenate([boxes, crowd]) * scale, h2, w2)
        return float(m.mean())

    def digest(self) -> str:
        """sha256 over the annotation file and the ids used: the input's identity."""
        h = hashlib.sha256()
        h.update(self.ann_path.read_bytes())
        for sid in self.ids:
            h.update(sid.encode())
        return h.hexdigest()


def _to_rle(seg: Any, height: int, width: int) -> dict:
    from pycocotools import mask as mask_utils

    if isinstance(seg, list):  # polygons
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def mask_of(seg: Any, height: int, width: int) -> np.ndarray:
    """(H, W) bool of a COCO ``segmentation`` (polygons, RLE or uncompressed RLE)."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_to_rle(seg, height, width)).astype(bool)


def crowd_ignore(crowd: np.ndarray, boxes: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """(H, W) bool: inside a crowd box and outside every object box; None without crowd boxes."""
    if len(crowd) == 0:
        return None
    ign = np.zeros((height, width), dtype=bool)
    for c0, r0, c1, r1 in box_pixel_ranges(crowd, height, width):
        ign[r0:r1, c0:c1] = True
    for c0, r0, c1, r1 in box_pixel_ranges(boxes, height, width):
        ign[r0:r1, c0:c1] = False
    return ign if ign.any() else None


def data_format(root: str | os.PathLike, data: Any) -> str:
    """'voc' or 'coco' for ``--data ROOT`` and the ``data`` config section (``data.format``)."""
    fmt = getattr(data, "format", "auto")
    if fmt == "auto":
        return "coco" if is_coco(root, getattr(data, "annotations", None)) else "voc"
    return fmt


def open_data(root: str | os.PathLike, split: str, data: Any, *, with_gt: bool = True, **kwargs: Any):
    """The one entry point of every stage: a VOCDataset or a COCODataset (same interface) for
    ``split`` of ``root`` as the ``data`` section (format, classes, on_error, annotations,
    images) says."""

    on_error = kwargs.pop("on_error", data.on_error)
    if data_format(root, data) == "coco":
        return COCODataset(root, split, data.classes, with_gt=with_gt, on_error=on_error,
                           annotations=data.annotations, images=data.images, **kwargs)
    return VOCDataset(root, split, data.classes, with_gt=with_gt, on_error=on_error, **kwargs)

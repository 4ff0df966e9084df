"""A run's pseudo labels in the formats dataset tools and annotation tools import (``bana export-labels``).

Input: the label PNGs gen-labels wrote, ``RUN/labels/<SET>/<ID>.png`` (0 background, 1..L the
classes, 255 void), listed by ``RUN/labels/<method>.manifest.json`` (split, dataset digest,
label sets), and the dataset's boxes. Each box's instance mask is computed exactly as gen-labels'
``instances_<SET>.json``: the pixels of its class inside the box, same-class overlaps going to
the smaller box (:func:`banacli.ops.instances.box_instance_masks`). The label set is one of the
method's outputs (``Ycrf``, ``Yret``; ``Box``, ``GrabCut``) or ``agreement``: the first set where
the first two agree and 255 (void) where they differ (the paper's reliable region S).

A box whose mask came out empty is never dropped silently. ``fallback`` says what it gets:

* ``box``: its box as the mask: the pixels inside the box that the label set calls background
  and no smaller empty box took (so it never takes another object's or void pixels, and
  SegmentationClass / SegmentationObject stay consistent); with no such pixel it stays empty;
* ``empty``: an empty mask (COCO: area 0 and an all-zero RLE; elsewhere no region);
* ``skip``: no mask (COCO: the annotation is left as it was in the input file; a COCO file
  built from VOC leaves it out; VOC / YOLO / Label Studio: no region for it).

Each case is counted and listed in the report the command prints.

Formats (OUT defaults to RUN/export_labels/FORMAT):

* ``coco``: OUT/annotations/instances_SPLIT.json (with ``copy_images`` the images in
  OUT/images/SPLIT/, where datumaro and mmdet look). For COCO data the user's own file with every
  image, category, annotation id and extra field kept, each non-crowd annotation of a labelled
  image given ``segmentation`` (compressed RLE, or polygons with ``polygons``) and ``area`` (the
  pixel count of that segmentation). For VOC data a complete instances file built from the XMLs:
  image ids 1..N in split order, category ids 1..L in class order, annotation ids 1.. in box order.
* ``voc``: OUT/SegmentationClass/ID.png (the label set; 255 where it says void) and
  OUT/SegmentationObject/ID.png (instance k = the k-th box, in annotation order; 255 on void
  and on class pixels no box owns), both with the VOC palette; OUT/ImageSets/Segmentation/SPLIT.txt
  and OUT/labelmap.txt (class names and colours, as datumaro reads them; void is the last line,
  ``ignored``, as in datumaro's own VOC label map).
* ``yolo``: OUT/labels/SPLIT/ID.txt, one line ``class x1 y1 x2 y2 ...`` per outer contour of each
  mask (class 0..L-1, coordinates divided by width / height), and OUT/data.yaml with the names.
* ``labelstudio``: OUT/tasks.json, one task per image, ``data.image`` from ``image_url``, one
  prediction holding a rectangle per box and its mask (brush RLE, or polygons with ``polygons``);
  OUT/label_config.xml, a labeling config with the matching tag names and labels.

Every file is written atomically; a file that exists already is an error unless ``force``.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np

from banacli.errors import ArtifactError, ConfigError, DataError
from banacli.runs import RunDir
from banacli.artifacts import atomic_path, atomic_write_text
from banacli.boxes import box_pixel_ranges
from banacli.data.palette import PALETTE, VOID, load_label_png, save_label_png
from banacli.data.voc import check_image
from banacli.interop.labelstudio import brush_result, polygon_results, rectangle_result
from banacli.interop.masks import coco_rle_area, mask_to_coco_rle, mask_to_polygons, polygons_to_mask
from banacli.ops.instances import box_instance_masks

FORMATS = ("coco", "voc", "yolo", "labelstudio")
FALLBACKS = ("box", "empty", "skip")
AGREEMENT = "agreement"
MAX_VOC_INSTANCES = 254  # SegmentationObject values 1..254; 255 is void
VOID_NAME = "ignored"  # void's name in datumaro's VOC label map

__all__ = [
    "AGREEMENT", "FALLBACKS", "FORMATS", "ExportReport", "ImageLabels", "LabelSet", "export_labels",
    "image_labels", "open_label_set", "read_label_map",
]


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class LabelSet:
    """One label set of a gen-labels run: its name and the folder(s) of ID.png it is read from."""

    method: str
    name: str  # "Ycrf", "Yret", "agreement", "Box", ...
    dirs: tuple[Path, ...]  # one folder, or the two sets whose agreement is taken
    manifest: dict[str, Any]
    manifest_path: Path

    @property
    def split(self) -> str:
        return str(self.manifest.get("split"))


def open_label_set(run_dir: str | os.PathLike, method: str, which: str | None) -> LabelSet:
    """The label set ``which`` (case-insensitive; None: the method's first output) of
    RUN/labels/<method>.manifest.json; ArtifactError naming the file when it is not there."""
    run = RunDir(run_dir)
    path = run.manifest(method)
    if not path.is_file():
        found = run.manifest_methods()
        hint = f" (this run has: {', '.join(found)}; choose with --method)" if found else " (run bana gen-labels first)"
        raise ArtifactError(f"{path}: no pseudo labels of method {method!r} in this run{hint}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        outputs = [str(o) for o in manifest["outputs"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"{path}: not a gen-labels manifest ({exc})") from None
    if not outputs:
        raise ArtifactError(f"{path}: lists no label sets")
    choices = [*outputs, *([AGREEMENT] if len(outputs) >= 2 else [])]
    want = outputs[0] if which is None else str(which)
    if want.lower() == AGREEMENT:
        if len(outputs) < 2:
            raise ConfigError(f"--labels agreement needs two label sets; {method} has {', '.join(outputs)}")
        return LabelSet(method, AGREEMENT, (run.label_set(outputs[0]), run.label_set(outputs[1])), manifest, path)
    for name in outputs:
        if name.lower() == want.lower():
            return LabelSet(method, name, (run.label_set(name),), manifest, path)
    raise ConfigError(f"--labels {want!r}: {method} wrote {', '.join(choices)}")


def read_label_map(labels: LabelSet, image_id: str) -> np.ndarray:
    """(H, W) uint8 label map of one image in this set; DataError naming a missing PNG."""

    maps = [load_label_png(d / f"{image_id}.png") for d in labels.dirs]
    if len(maps) == 1:
        return maps[0]
    a, b = maps
    if a.shape != b.shape:
        raise DataError(f"{labels.dirs[1] / (image_id + '.png')}: is {b.shape[1]}x{b.shape[0]}, "
                        f"{labels.dirs[0] / (image_id + '.png')} is {a.shape[1]}x{a.shape[0]}")
    out = a.copy()
    out[a != b] = VOID
    return out


@dataclass
class ImageLabels:
    """One image's labels as the exports use them."""

    id: str
    index: int
    height: int
    width: int
    boxes: np.ndarray  # (K, 4) float32 x0, y0, x1, y1 (0-based, exclusive end), clipped
    labels: np.ndarray  # (K,) int64 1..L
    label_map: np.ndarray  # (H, W) uint8 0, 1..L, 255 void
    masks: np.ndarray  # (K, H, W) bool, after the fallback
    status: list[str]  # per box: "mask", or the fallback taken for an empty mask ("box", "empty", "skip")


def image_labels(ds, labels: LabelSet, index: int, fallback: str) -> ImageLabels:
    """Read one image's label PNG and cut it into the boxes' instance masks."""

    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, not {fallback!r}")
    sid = ds.ids[index]
    label = read_label_map(labels, sid)
    h, w = label.shape
    bad = (label >= len(ds.class_names)) & (label != 255)
    if bad.any():
        raise ArtifactError(f"{labels.dirs[0] / (sid + '.png')}: label value {int(label[bad][0])} is not a class id "
                            f"(0..{len(ds.class_names) - 1}) or 255")
    image_path = ds.image_path(sid)
    iw, ih = check_image(image_path)
    if (ih, iw) != (h, w):
        raise DataError(f"{labels.dirs[0] / (sid + '.png')}: label is {w}x{h} but {image_path} is {iw}x{ih}; "
                        "the labels were made from another image")
    boxes, labs = ds.box_labels(index, h, w)
    masks = box_instance_masks(label, boxes, labs) if len(labs) else np.zeros((0, h, w), bool)
    status = ["mask"] * len(labs)
    empty = np.flatnonzero(~masks.reshape(len(labs), -1).any(1))
    ranges = box_pixel_ranges(boxes, h, w)
    area = (ranges[:, 2] - ranges[:, 0]) * (ranges[:, 3] - ranges[:, 1])
    claimed = np.zeros((h, w), bool)
    for k in empty[np.argsort(area[empty], kind="stable")]:  # smaller boxes first, as gen-labels' rule
        status[k] = fallback
        if fallback == "box":  # the box's pixels the label set calls background, not yet claimed
            c0, r0, c1, r1 = ranges[k]
            masks[k, r0:r1, c0:c1] = (label[r0:r1, c0:c1] == 0) & ~claimed[r0:r1, c0:c1]
            claimed |= masks[k]
            if not masks[k].any():  # nothing in the box is background: no pixel to give it
                status[k] = "empty"
    return ImageLabels(sid, index, h, w, boxes, labs, label, masks, status)


# ----------------------------------------------------------------------------- report


@dataclass
class ExportReport:
    """What an export wrote and what it could not; ``lines()`` is what the command prints."""

    format: str
    out: Path
    label_set: str
    method: str
    split: str
    fallback: str
    images: int = 0
    boxes: int = 0
    masks: int = 0  # boxes given a non-empty mask (including box fallbacks)
    files: list[Path] = field(default_factory=list)
    main_file: Path | None = None
    empty: list[tuple[str, int, str]] = field(default_factory=list)  # (image id, box number 1.., fallback)
    not_exported: list[str] = field(default_factory=list)  # one line each
    notes: list[str] = field(default_factory=list)

    def count(self, img: ImageLabels) -> None:
        self.images += 1
        self.boxes += len(img.status)
        for k, s in enumerate(img.status):
            if s != "mask":
                self.empty.append((img.id, k + 1, s))
        self.masks += sum(s in ("mask", "box") for s in img.status)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format, "out": str(self.out), "method": self.method, "labels": self.label_set,
            "split": self.split, "fallback": self.fallback, "images": self.images, "boxes": self.boxes,
            "masks": self.masks, "files": len(self.files), "main_file": str(self.main_file or self.out),
            "empty_masks": [{"image": i, "box": k, "fallback": f} for i, k, f in self.empty],
            "not_exported": self.not_exported, "notes": self.notes,
        }

    def lines(self, max_listed: int = 5) -> list[str]:
        where = self.main_file or self.out
        files = f"{len(self.files)} file" + ("s" if len(self.files) != 1 else "")
        out = [f"export-labels: wrote {self.format} to {where} ({files}): {self.images} images, "
               f"{self.boxes} boxes, {self.masks} masks from {self.method} {self.label_set} (split {self.split})"]
        if self.empty:
            what = {"box": "written as their box", "empty": "written as empty masks",
                    "skip": "written without a mask"}[self.fallback]
            shown = ", ".join(f"{i} box {k}" for i, k, _ in self.empty[:max_listed])
            more = f", … ({len(self.empty) - max_listed} more)" if len(self.empty) > max_listed else ""
            out.append(f"export-labels: {len(self.empty)} boxes had an empty mask, {what} (--fallback "
                       f"{self.fallback}): {shown}{more}")
        if self.not_exported:
            out.append(f"export-labels: could not export {len(self.not_exported)}:")
            out += [f"  {line}" for line in self.not_exported[:max_listed]]
            if len(self.not_exported) > max_listed:
                out.append(f"  … and {len(self.not_exported) - max_listed} more (all in the report JSON)")
        out += [f"export-labels: {n}" for n in self.notes]
        return out


# ----------------------------------------------------------------------------- writing


class _Writer:
    """Atomic writes under OUT, refusing to overwrite an existing file unless ``force``."""

    def __init__(self, out: Path, force: bool, report: ExportReport, skipped: set[str]) -> None:
        self.out, self.force, self.report = out, force, report
        self.skipped = skipped  # ids gen-labels left out (already reported)

    def check(self, paths: Sequence[Path]) -> None:
        if self.force:
            return
        existing = [p for p in paths if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more files)" if len(existing) > 1 else ""
            raise ArtifactError(f"{existing[0]}: exists{more}; use --force to overwrite, or --out another folder")

    def text(self, path: Path, text: str) -> None:
        atomic_write_text(path, text)
        self.report.files.append(path)

    def json(self, path: Path, obj: Any) -> None:
        self.text(path, json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")

    def png(self, path: Path, label: np.ndarray) -> None:
        save_label_png(path, label)
        self.report.files.append(path)

    def copy(self, src: Path, dst: Path) -> None:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
        self.report.files.append(dst)


def _images(ds, labels: LabelSet, fallback: str, progress: Callable[[str], None] | None) -> Iterator[ImageLabels]:
    for i in range(len(ds)):
        img = image_labels(ds, labels, i, fallback)
        if progress is not None:
            progress(img.id)
        yield img


def _box_xywh(box: Sequence[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _segmentation(mask: np.ndarray, status: str, polygons: bool) -> tuple[Any, int]:
    """(COCO segmentation, area) of one mask: RLE, or polygons (an all-zero RLE when there is none)."""

    if polygons and status != "empty":
        polys = mask_to_polygons(mask)
        if polys:
            return polys, int(polygons_to_mask(polys, *mask.shape).sum())
    rle = mask_to_coco_rle(mask)
    return rle, coco_rle_area(rle)


def _export_coco(ds, labels, cfg: "ExportOptions", w: _Writer, progress) -> None:
    out = w.out / "annotations" / f"instances_{ds.split}.json"
    images = {sid: ds.image_path(sid) for sid in ds.ids} if cfg.copy_images else {}
    w.check([out, *(w.out / "images" / ds.split / p.name for p in images.values())])
    w.report.main_file = out
    if getattr(ds, "format", "voc") == "coco":
        doc = _coco_from_users_file(ds, labels, cfg, w, progress)
    else:
        doc = _coco_from_voc(ds, labels, cfg, w, progress)
    for src in images.values():
        w.copy(src, w.out / "images" / ds.split / src.name)
    w.json(out, doc)


def _coco_from_users_file(ds, labels, cfg, w: _Writer, progress) -> dict:
    try:
        doc = json.loads(Path(ds.ann_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{ds.ann_path}: cannot read COCO JSON ({exc})") from None
    by_image: dict[Any, list[dict]] = {}
    for ann in doc.get("annotations", []):
        if not ann.get("iscrowd", 0):
            by_image.setdefault(ann["image_id"], []).append(ann)
    done: set[Any] = set()
    for img in _images(ds, labels, cfg.fallback, progress):
        coco_id = ds.coco_ids[img.id]
        anns = by_image.get(coco_id, [])
        if len(anns) != len(img.status):  # the reader's box order is the file's non-crowd order
            raise DataError(f"{ds.ann_path}: image {coco_id} has {len(anns)} non-crowd annotations but the "
                            f"dataset reader gave {len(img.status)} boxes")
        for k, ann in enumerate(anns):
            if ds.label_to_category[int(img.labels[k])] != ann["category_id"]:
                raise DataError(f"{ds.ann_path}: annotation {ann['id']}: category does not match box {k + 1}")
            if img.status[k] == "skip":
                continue
            ann["segmentation"], ann["area"] = _segmentation(img.masks[k], img.status[k], cfg.polygons)
            if img.status[k] != "mask":
                ann["bana_fallback"] = img.status[k]
        done.add(coco_id)
        w.report.count(img)
    left = [img for img in doc.get("images", []) if img.get("id") not in done and by_image.get(img.get("id"))
            and Path(str(img.get("file_name"))).stem not in w.skipped]  # images with boxes not exported
    for img in left:
        n = len(by_image[img.get("id")])
        w.report.not_exported.append(f"image {img.get('id')} ({img.get('file_name')}): {n} annotations kept "
                                     "unchanged, no labels (left out by the dataset reader or gen-labels)")
    return doc


def _coco_from_voc(ds, labels, cfg, w: _Writer, progress) -> dict:
    images, anns = [], []
    ann_id = 0
    for n, img in enumerate(_images(ds, labels, cfg.fallback, progress), start=1):
        images.append({"id": n, "file_name": ds.image_path(img.id).name, "width": img.width,
                       "height": img.height, "bana_id": img.id})
        for k, (box, lab) in enumerate(zip(img.boxes, img.labels)):
            if img.status[k] == "skip":
                continue
            ann_id += 1
            seg, area = _segmentation(img.masks[k], img.status[k], cfg.polygons)
            ann = {"id": ann_id, "image_id": n, "category_id": int(lab), "bbox": _box_xywh(box),
                   "area": area, "segmentation": seg, "iscrowd": 0}
            if img.status[k] != "mask":
                ann["bana_fallback"] = img.status[k]
            anns.append(ann)
        w.report.count(img)
    if cfg.fallback == "skip" and w.report.empty:
        w.report.notes.append(f"{len(w.report.empty)} boxes with empty masks are not in the COCO file "
                              "(--fallback skip)")
    cats = [{"id": i, "name": name, "supercategory": ""} for i, name in enumerate(ds.classes, start=1)]
    info = {"description": f"bana export-labels: {labels.method} {labels.name} of {ds.root} [{ds.split}]"}
    return {"info": info, "images": images, "annotations": anns, "categories": cats}


def _voc_labelmap(class_names: Sequence[str]) -> str:
    """datumaro's labelmap.txt: every class with its palette colour, and void (255) last under the
    name datumaro's own VOC label map gives it (it reads a colour it does not know as an error)."""
    lines = ["# label:color_rgb:parts:actions"]
    for i, name in [*enumerate(class_names), (VOID, VOID_NAME)]:
        r, g, b = (int(v) for v in PALETTE[i])
        lines.append(f"{name}:{r},{g},{b}::")
    return "\n".join(lines) + "\n"


def voc_object_map(img: ImageLabels) -> np.ndarray:
    """(H, W) uint8 SegmentationObject: k+1 on box k's mask, 255 on void and on class pixels no
    box owns, 0 elsewhere."""
    obj = np.zeros((img.height, img.width), np.uint8)
    obj[img.label_map != 0] = VOID
    for k in range(min(len(img.status), MAX_VOC_INSTANCES)):
        if img.status[k] in ("mask", "box"):
            obj[img.masks[k]] = k + 1  # the masks are disjoint
    return obj


def voc_class_map(img: ImageLabels) -> np.ndarray:
    """(H, W) uint8 SegmentationClass: the label set, plus the box-fallback masks (on its background)."""
    cls = img.label_map.copy()
    for k, s in enumerate(img.status):
        if s == "box":
            cls[img.masks[k]] = img.labels[k]
    return cls


def _export_voc(ds, labels, cfg, w: _Writer, progress) -> None:
    targets = [w.out / d / f"{sid}.png" for sid in ds.ids for d in ("SegmentationClass", "SegmentationObject")]
    split_file = w.out / "ImageSets" / "Segmentation" / f"{ds.split}.txt"
    targets += [split_file, w.out / "labelmap.txt"]
    if cfg.copy_images:
        targets += [w.out / "JPEGImages" / ds.image_path(sid).name for sid in ds.ids]
    w.check(targets)
    w.report.main_file = w.out
    for img in _images(ds, labels, cfg.fallback, progress):
        w.png(w.out / "SegmentationClass" / f"{img.id}.png", voc_class_map(img))
        w.png(w.out / "SegmentationObject" / f"{img.id}.png", voc_object_map(img))
        if len(img.status) > MAX_VOC_INSTANCES:
            w.report.not_exported.append(f"{img.id}: boxes {MAX_VOC_INSTANCES + 1}..{len(img.status)} have no "
                                         f"SegmentationObject value (VOC holds {MAX_VOC_INSTANCES} instances)")
        if cfg.copy_images:
            src = ds.image_path(img.id)
            w.copy(src, w.out / "JPEGImages" / src.name)
        w.report.count(img)
    w.text(split_file, "".join(f"{sid}\n" for sid in ds.ids))
    w.text(w.out / "labelmap.txt", _voc_labelmap(ds.class_names))


def yolo_lines(img: ImageLabels) -> list[str]:
    """One ``class x1 y1 ...`` line per outer contour of each box's mask (class = label - 1)."""
    lines = []
    for k, s in enumerate(img.status):
        if s not in ("mask", "box"):
            continue
        for poly in mask_to_polygons(img.masks[k]):
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2) / (img.width, img.height)
            lines.append(" ".join([str(int(img.labels[k]) - 1), *(f"{v:.6f}" for v in np.clip(xy, 0, 1).ravel())]))
    return lines


def _export_yolo(ds, labels, cfg, w: _Writer, progress) -> None:
    import yaml  # only the YOLO export writes data.yaml

    targets = [w.out / "labels" / ds.split / f"{sid}.txt" for sid in ds.ids] + [w.out / "data.yaml"]
    if cfg.copy_images:
        targets += [w.out / "images" / ds.split / ds.image_path(sid).name for sid in ds.ids]
    w.check(targets)
    w.report.main_file = w.out
    polygons = 0
    for img in _images(ds, labels, cfg.fallback, progress):
        lines = yolo_lines(img)
        polygons += len(lines)
        w.text(w.out / "labels" / ds.split / f"{img.id}.txt", "".join(f"{ln}\n" for ln in lines))
        if cfg.copy_images:
            src = ds.image_path(img.id)
            w.copy(src, w.out / "images" / ds.split / src.name)
        w.report.count(img)
    data = {"path": ".", "train": f"images/{ds.split}", "val": f"images/{ds.split}",
            "names": {i: n for i, n in enumerate(ds.classes)}}
    w.text(w.out / "data.yaml", yaml.safe_dump(data, sort_keys=False))
    w.report.notes.append(f"{w.report.masks} masks as {polygons} polygons (one line per outer contour; holes filled)")


def label_config_xml(class_names: Sequence[str], cfg: "ExportOptions") -> str:
    """A Label Studio labeling config matching the exported tasks' tag names and labels."""

    tag = "PolygonLabels" if cfg.polygons else "BrushLabels"
    labels = "".join(f"    <Label value={quoteattr(n)}/>\n" for n in class_names)
    return (f"<View>\n  <Image name={quoteattr(cfg.ls_image)} value=\"$image\"/>\n"
            f"  <RectangleLabels name={quoteattr(cfg.ls_boxes)} toName={quoteattr(cfg.ls_image)}>\n{labels}"
            f"  </RectangleLabels>\n  <{tag} name={quoteattr(cfg.ls_masks)} toName={quoteattr(cfg.ls_image)}>\n"
            f"{labels}  </{tag}>\n</View>\n")


def labelstudio_task(ds, img: ImageLabels, cfg: "ExportOptions", model_version: str) -> dict:
    """One Label Studio task: the image URL, and a prediction with a rectangle and a mask per box."""

    path = Path(ds.image_path(img.id))
    try:
        rel = path.resolve().relative_to(Path(ds.root).resolve()).as_posix()
    except ValueError:
        rel = path.name
    url = cfg.image_url.format(path=rel, file=path.name, id=img.id)
    names = ds.class_names
    result = []
    for k, (box, lab) in enumerate(zip(img.boxes, img.labels)):
        name = names[int(lab)]
        result.append(rectangle_result(box, name, img.width, img.height, from_name=cfg.ls_boxes,
                                       to_name=cfg.ls_image, result_id=f"box{k + 1}"))
        if img.status[k] not in ("mask", "box"):
            continue
        if cfg.polygons:
            result += polygon_results(img.masks[k], name, from_name=cfg.ls_masks, to_name=cfg.ls_image,
                                      result_id=f"mask{k + 1}")
        else:
            result.append(brush_result(img.masks[k], name, from_name=cfg.ls_masks, to_name=cfg.ls_image,
                                       result_id=f"mask{k + 1}"))
    return {"data": {"image": url, "bana_id": img.id},
            "predictions": [{"model_version": model_version, "result": result}]}


def _export_labelstudio(ds, labels, cfg, w: _Writer, progress) -> None:
    tasks_path, config_path = w.out / "tasks.json", w.out / "label_config.xml"
    w.check([tasks_path, config_path])
    w.report.main_file = tasks_path
    version = f"bana-{labels.name}" if labels.method == "bana" else f"bana-{labels.method}-{labels.name}"
    tasks = []
    for img in _images(ds, labels, cfg.fallback, progress):
        tasks.append(labelstudio_task(ds, img, cfg, version))
        w.report.count(img)
    w.json(tasks_path, tasks)
    w.text(config_path, label_config_xml(ds.classes, cfg))


_EXPORTERS = {"coco": _export_coco, "voc": _export_voc, "yolo": _export_yolo, "labelstudio": _export_labelstudio}


@dataclass(frozen=True)
class ExportOptions:
    """What the exporters read (the stage's config section has these fields and more)."""

    format: str = "coco"
    fallback: str = "box"
    polygons: bool = False
    copy_images: bool = False
    image_url: str = "/data/local-files/?d={path}"
    ls_image: str = "image"
    ls_boxes: str = "box"
    ls_masks: str = "mask"
    force: bool = False


def export_labels(ds, labels: LabelSet, out: str | os.PathLike, options: ExportOptions, *,
                  skipped: dict[str, str] | None = None,
                  progress: Callable[[str], None] | None = None) -> ExportReport:
    """Write ``labels`` of dataset ``ds`` in ``options.format`` under ``out``; returns the report.

    ``skipped``: {image id: reason} of the images gen-labels left out on purpose (they are
    reported, not exported). Any other image without a label PNG is an error naming the file.
    """
    if options.format not in _EXPORTERS:
        raise ConfigError(f"--format {options.format!r}: expected one of {', '.join(FORMATS)}")
    if options.fallback not in FALLBACKS:
        raise ConfigError(f"--fallback {options.fallback!r}: expected one of {', '.join(FALLBACKS)}")
    if labels.split != ds.split:
        raise ArtifactError(f"{labels.manifest_path}: labels are of split {labels.split!r}, not {ds.split!r}")
    out = Path(out)
    report = ExportReport(format=options.format, out=out, label_set=labels.name, method=labels.method,
                          split=ds.split, fallback=options.fallback)
    skipped = dict(skipped or {})
    if skipped:
        ds = _without(ds, set(skipped))
        report.not_exported += [f"{sid}: skipped by gen-labels ({why})" for sid, why in sorted(skipped.items())]
    for sid in ds.ids:  # every label PNG is there before anything is written
        for d in labels.dirs:
            if not (d / f"{sid}.png").is_file():
                raise DataError(f"{d / (sid + '.png')}: label file not found (gen-labels did not finish this "
                                "image; rerun bana gen-labels)")
    _EXPORTERS[options.format](ds, labels, options, _Writer(out, options.force, report, set(skipped)),
                                 progress)
    return report


class _Subset:
    """A dataset view without some ids (images gen-labels skipped), same interface for the exporters."""

    def __init__(self, ds, drop: set[str]) -> None:
        self._ds = ds
        self._index = [i for i, sid in enumerate(ds.ids) if sid not in drop]
        self.ids = [ds.ids[i] for i in self._index]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ds, name)

    def __len__(self) -> int:
        return len(self.ids)

    def box_labels(self, index: int, height: int, width: int):
        return self._ds.box_labels(self._index[index], height, width)


def _without(ds, drop: set[str]):
    return _Subset(ds, drop) if drop & set(ds.ids) else ds

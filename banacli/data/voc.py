"""PASCAL VOC layout reader: images, boxes, optional ground-truth masks.

Layout (ROOT is the folder holding these)::

    ROOT/JPEGImages/ID.jpg                    the image (.jpeg / .png also accepted)
    ROOT/Annotations/ID.xml                   VOC XML: <size>, <object><name>, <bndbox>
    ROOT/SegmentationClass/ID.png             optional ground truth (or SegmentationClassAug/)
    ROOT/ImageSets/Segmentation/SPLIT.txt     one image id per line
    ROOT/classes.txt                          optional: the object class names, one a line

Box convention. Internally a box is ``x0, y0, x1, y1`` (float32) in 0-based pixel coordinates
with an exclusive end: it covers pixel columns ``x0 .. x1-1`` and rows ``y0 .. y1-1``, and its
area is ``(x1-x0) * (y1-y0)``. This is torchvision's XYXY format. VOC's 1-based inclusive
``xmin .. xmax`` converts once, here, at load time: ``x0 = xmin - 1``, ``x1 = xmax`` (same for y).
Boxes that stick out of the image are clipped to it; a box wholly outside the image or with no
area left is an error.

Class ids: 0 background, 1..L the object classes in the order of ``resolve_classes``, 255 void.

Images are read with PIL. Grayscale (L, 1, I;16), palette (P), RGBA/LA and CMYK images are
converted to RGB (alpha is dropped, not composited); EXIF orientation is ignored because VOC
boxes refer to the stored pixel grid.

The definite-background mask M (True where a pixel lies in no box) is computed from the boxes
(``definite_background``); there is no mask folder.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
import io

import numpy as np
from PIL import Image

from banacli.boxes import definite_background
from banacli.data.palette import VOID, load_label_png
from banacli.errors import DataError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip

IMAGE_DIR = "JPEGImages"
ANNOTATION_DIR = "Annotations"
GT_DIRS = ("SegmentationClass", "SegmentationClassAug")
SPLIT_DIR = Path("ImageSets") / "Segmentation"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
_BACKGROUND_NAMES = {"background", "__background__", "_background_", "bg"}


# ----------------------------------------------------------------------------- classes, splits


def _check_class_names(names: Sequence[str], where: str) -> list[str]:
    names = [str(n).strip() for n in names]
    if not names:
        raise DataError(f"{where}: no class names")
    for i, n in enumerate(names):
        if not n:
            raise DataError(f"{where}: class {i + 1} has an empty name")
        if n.lower() in _BACKGROUND_NAMES:
            raise DataError(
                f"{where}: {n!r} listed as a class; list only object classes "
                "(background is class 0 implicitly)"
            )
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{where}: duplicate class names {', '.join(dup)}")
    if len(names) > 254:
        raise DataError(f"{where}: {len(names)} classes; at most 254 fit in an 8-bit label map")
    return names


def resolve_classes(root: str | os.PathLike, classes: Sequence[str] | None = None) -> list[str]:
    """The object class names: ``classes`` if given, else ROOT/classes.txt, else the 20 of VOC.

    classes.txt holds one name per line; blank lines and lines starting with '#' are ignored.
    """
    if classes is not None:
        return _check_class_names(classes, "classes")
    path = Path(root) / "classes.txt"
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: cannot read ({exc})") from None
        names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
        return _check_class_names(names, str(path))
    return list(VOC_CLASSES)


def split_path(root: str | os.PathLike, split: str) -> Path:
    return Path(root) / SPLIT_DIR / f"{split}.txt"


def check_image_id(image_id: str, where: str) -> str:
    """The one check every image id passes before it becomes part of a file name.

    An id names files inside ROOT/JPEGImages, ROOT/Annotations and the run directory, so it
    must be a plain file name: no path separator, not ``.``/``..``, no whitespace or control
    characters. ``where`` (e.g. ``split.txt:12``) starts the error message.
    """
    why = None
    if not image_id:
        why = "is empty"
    elif "/" in image_id or "\\" in image_id:
        why = "holds a path separator"
    elif image_id in (".", ".."):
        why = "is '.' or '..'"
    elif any(ch.isspace() for ch in image_id):
        why = "holds whitespace"
    elif any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in image_id):
        why = "holds a control character"
    if why is not None:
        raise DataError(f"{where}: image id {image_id!r} {why}; an id must be a plain file name "
                        "(no folders, spaces or control characters)")
    return image_id


_SPLIT_FLAGS = {"-1", "0", "1"}  # ImageSets/Main style: "ID FLAG"


def read_split_checked(root: str | os.PathLike, split: str) -> tuple[list[str], list[str]]:
    """(ids, notes) of ROOT/ImageSets/Segmentation/SPLIT.txt: one id a line, each checked by
    ``check_image_id``; a second token is allowed only as a VOC flag (-1, 0, 1). An id listed
    twice is used once, and ``notes`` holds a warning line naming the file and the lines."""
    path = split_path(root, split)
    if not path.is_file():
        have = sorted(p.stem for p in path.parent.glob("*.txt")) if path.parent.is_dir() else []
        hint = f" (splits here: {', '.join(have)})" if have else ""
        raise DataError(f"{path}: split file not found{hint}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    first_line: dict[str, int] = {}
    dups: list[tuple[str, int, int]] = []
    for n, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        tokens = text.split()
        if len(tokens) > 1 and not (len(tokens) == 2 and tokens[1] in _SPLIT_FLAGS):
            check_image_id(text, f"{path}:{n}")  # reports the whitespace
        image_id = check_image_id(tokens[0], f"{path}:{n}")
        if image_id in first_line:
            dups.append((image_id, first_line[image_id], n))
        else:
            first_line[image_id] = n
    ids = list(first_line)
    if not ids:
        raise DataError(f"{path}: split file lists no image ids")
    notes = []
    if dups:
        i, a, b = dups[0]
        more = f" and {len(dups) - 1} more" if len(dups) > 1 else ""
        notes.append(f"warning: {path}: id {i!r} is listed twice (lines {a} and {b}){more}; "
                     "each id is used once")
    return ids, notes


def read_split(root: str | os.PathLike, split: str) -> list[str]:
    """Image ids of ROOT/ImageSets/Segmentation/SPLIT.txt, checked and without duplicates
    (see ``read_split_checked``)."""
    return read_split_checked(root, split)[0]


# ----------------------------------------------------------------------------- samples


@dataclass
class Sample:
    """One image with its boxes. ``labels`` are class ids 1..L, one per box."""

    id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (K, 4) float32 x0, y0, x1, y1 (0-based, exclusive end)
    labels: np.ndarray  # (K,) int64 in 1..L
    gt: np.ndarray | None = None  # (H, W) uint8, 0 background, 1..L, 255 void
    difficult: np.ndarray | None = None  # (K,) bool, VOC's <difficult> flag
    orig_hw: tuple[int, int] | None = None  # (H, W) of the file; differs from image's when reduced
    #: (H, W) bool or None: pixels that are neither objects to label nor definite background
    #: (COCO ``iscrowd`` regions, see banacli/data/coco.py); VOC samples have None.
    ignore: np.ndarray | None = None

    @property
    def reduced(self) -> bool:
        """True when the image was shrunk to ``data.max_side`` (see ``shrink_sample``)."""
        return self.orig_hw is not None and self.orig_hw != self.image.shape[:2]

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def background(self) -> np.ndarray:
        """The definite-background mask M of this sample, (H, W) bool (ignored pixels excluded)."""
        m = definite_background(self.boxes, self.height, self.width)
        return m if self.ignore is None else m & ~self.ignore



# ----------------------------------------------------------------------------- files


def find_image(root: str | os.PathLike, image_id: str) -> Path:
    check_image_id(image_id, str(Path(root) / IMAGE_DIR))
    base = Path(root) / IMAGE_DIR
    for suffix in IMAGE_SUFFIXES:
        p = base / f"{image_id}{suffix}"
        if p.is_file():
            return p
    raise DataError(f"{base / (image_id + '.jpg')}: image file not found")


def annotation_path(root: str | os.PathLike, image_id: str) -> Path:
    check_image_id(image_id, str(Path(root) / ANNOTATION_DIR))
    return Path(root) / ANNOTATION_DIR / f"{image_id}.xml"


def read_annotation_bytes(path: Path) -> bytes:
    """The raw bytes of an annotation file (for hashing); DataError when missing or unreadable."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation ({exc.strerror or exc})") from None


def find_gt(root: str | os.PathLike, image_id: str) -> Path | None:
    check_image_id(image_id, str(root))
    for d in GT_DIRS:
        p = Path(root) / d / f"{image_id}.png"
        if p.is_file():
            return p
    return None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB; other modes are converted. DataError when unreadable or truncated."""
    try:
        with Image.open(path) as img:
            img.load()
            fmt = img.format
            if img.mode != "RGB":
                if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                    arr = np.array(img).astype(np.float64)
                    top = 65535.0 if arr.max(initial=0) > 255 else 255.0
                    g = np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
                    return np.repeat(g[:, :, None], 3, axis=2)
                img = img.convert("RGB")
            arr = np.asarray(img, dtype=np.uint8).copy()
        if fmt == "JPEG" and _jpeg_is_cut(path, arr):
            raise DataError(f"{path}: JPEG data is cut short (the file ends with an end-of-image "
                            "marker, but image data is missing before it; the missing part would "
                            "decode as a flat grey area)")
        return arr
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def _decode_bytes(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return np.asarray(img)


def _jpeg_is_cut(path: str | os.PathLike, arr: np.ndarray, pad: int = 256) -> bool:
    """True when a decoded JPEG ran out of scan data before its end-of-image marker.

    libjpeg fills the blocks it has no data for with flat blocks and only warns (PIL keeps
    quiet), so a file cut in half with an EOI marker appended decodes "fine". Cheap gate: the
    last 16x16 MCU of a cut file is flat. Confirmation: decode again with zero bytes inserted
    before the final marker; a complete scan ignores them, a cut one decodes them as image data,
    so the two decodes differ only when data was missing.
    """
    h, w = arr.shape[:2]
    block = arr[((h - 1) // 16) * 16 :, ((w - 1) // 16) * 16 :]
    if not (block == block[:1, :1]).all():
        return False
    with open(path, "rb") as fh:
        data = fh.read()
    end = data.rfind(b"\xff\xd9")
    if end < 0:
        return False
    try:
        padded = _decode_bytes(data[:end] + b"\x00" * pad + data[end:])
        plain = _decode_bytes(data)
    except (OSError, SyntaxError, ValueError):
        return True
    return padded.shape != plain.shape or bool((padded != plain).any())


def _jpeg_scan_is_suspect(path: str | os.PathLike) -> bool:
    """The cheap gate of :func:`_jpeg_is_cut` at 1/8 scale: True when the bottom-right corner of
    a draft decode (libjpeg's DCT scaling, about half the cost of a full decode) is flat, as the
    blocks libjpeg fills in for missing scan data are. The decision itself is the full test of
    ``read_image``; this only spares that for images whose corner has any texture."""
    with Image.open(path) as img:
        img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
        small = np.asarray(img)
    h, w = small.shape[:2]
    corner = small[max(0, h - 2) :, max(0, w - 2) :]
    return bool((corner == corner[:1, :1]).all())


def check_image(path: str | os.PathLike, *, scan: bool = False) -> tuple[int, int]:
    """Cheap check of an image file; returns (width, height).

    Reads the header only, unless a JPEG does not end with its end-of-image marker, in which
    case it is decoded fully to tell a truncated file from one with trailing bytes. With
    ``scan`` (``data.on_error=skip``'s up-front check), a JPEG that does end with the marker is
    also checked for scan data cut short before it (:func:`_jpeg_scan_is_suspect`), so such a
    file is skipped up front instead of stopping the run when it is loaded.
    """
    try:
        with Image.open(path) as img:
            size = img.size
            fmt = img.format
            if fmt == "PNG":
                img.verify()  # checks the chunk CRCs without decoding
        if fmt == "JPEG":
            with open(path, "rb") as fh:
                fh.seek(max(0, os.path.getsize(path) - 16))
                tail = fh.read()
            if b"\xff\xd9" not in tail or (scan and _jpeg_scan_is_suspect(path)):
                read_image(path)  # decodes fully; DataError when truncated or cut short
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return size


@dataclass
class Annotation:
    """Boxes of one XML file, converted to the internal convention but not yet clipped."""

    boxes: np.ndarray  # (K, 4) float32
    labels: np.ndarray  # (K,) int64
    difficult: np.ndarray  # (K,) bool
    size: tuple[int, int] | None  # (width, height) from <size>, when present and non-zero


def _known(classes: Sequence[str]) -> str:
    shown = ", ".join(classes[:8])
    more = f", … ({len(classes)} classes)" if len(classes) > 8 else ""
    return shown + more


def parse_annotation(path: str | os.PathLike, class_ids: dict[str, int]) -> Annotation:
    """Parse a VOC XML file. ``class_ids`` maps each class name to its id 1..L."""
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except (ET.ParseError, OSError) as exc:
        raise DataError(f"{path}: cannot parse annotation XML ({exc})") from None

    size = None
    el = root.find("size")
    if el is not None:
        try:
            w, h = int(float(el.findtext("width", "0"))), int(float(el.findtext("height", "0")))
        except ValueError:
            raise DataError(f"{path}: <size> is not numeric") from None
        if w > 0 and h > 0:
            size = (w, h)

    boxes, labels, difficult = [], [], []
    for i, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DataError(f"{path}: object {i} has no <name>")
        if name not in class_ids:
            raise DataError(
                f"{path}: unknown class {name!r} (object {i}); known: {_known(list(class_ids))}"
            )
        bb = obj.find("bndbox")
        if bb is None:
            raise DataError(f"{path}: object {i} ({name}) has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float(bb.findtext(k, "")) for k in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DataError(
                f"{path}: object {i} ({name}): <bndbox> needs numeric xmin, ymin, xmax, ymax"
            ) from None
        if not all(np.isfinite([xmin, ymin, xmax, ymax])):
            raise DataError(f"{path}: object {i} ({name}): <bndbox> is not finite")
        # VOC: 1-based, inclusive -> 0-based, exclusive end
        boxes.append((xmin - 1.0, ymin - 1.0, xmax, ymax))
        labels.append(class_ids[name])
        difficult.append((obj.findtext("difficult") or "0").strip() in ("1", "true", "True"))
    if not boxes:
        raise DataError(f"{path}: no <object> boxes in the annotation")
    return Annotation(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray(labels, dtype=np.int64),
        difficult=np.asarray(difficult, dtype=bool),
        size=size,
    )


def clip_boxes(boxes: np.ndarray, width: int, height: int, where: str | os.PathLike) -> np.ndarray:
    """Clip boxes to the image; DataError when one lies wholly outside or has no area."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    c = b.copy()
    c[:, [0, 2]] = np.clip(c[:, [0, 2]], 0, width)
    c[:, [1, 3]] = np.clip(c[:, [1, 3]], 0, height)
    bad = (c[:, 2] - c[:, 0] <= 0) | (c[:, 3] - c[:, 1] <= 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        x0, y0, x1, y1 = (float(v) for v in b[i])
        vx = f"xmin={x0 + 1:g} ymin={y0 + 1:g} xmax={x1:g} ymax={y1:g}"
        if x1 <= x0 or y1 <= y0:
            why = "has zero or negative size"
        else:
            why = f"lies outside the {width}x{height} image"
        raise DataError(f"{where}: box {i + 1} ({vx}) {why}")
    return c


def _check_size(ann: Annotation, width: int, height: int, xml: Path, image: Path) -> None:
    if ann.size is not None and ann.size != (width, height):
        raise DataError(
            f"{xml}: <size> says {ann.size[0]}x{ann.size[1]} but {image} is {width}x{height}"
        )


def load_sample(
    root: str | os.PathLike,
    image_id: str,
    classes: Sequence[str],
    *,
    with_gt: bool = True,
    annotation: Annotation | None = None,
    max_side: int | None = None,
) -> Sample:
    """Read one image, its boxes and (if ``with_gt`` and present) its ground-truth mask.

    With ``max_side``, an image whose longer side exceeds it is shrunk (``shrink_sample``);
    ``Sample.orig_hw`` keeps the file's size so outputs can be written at full size.
    """
    class_ids = {name: i + 1 for i, name in enumerate(classes)}
    xml = annotation_path(root, image_id)
    img_path = find_image(root, image_id)
    ann = annotation if annotation is not None else parse_annotation(xml, class_ids)
    image = read_image(img_path)
    h, w = image.shape[:2]
    _check_size(ann, w, h, xml, img_path)
    boxes = clip_boxes(ann.boxes, w, h, xml)
    gt = None
    if with_gt:
        gt_path = find_gt(root, image_id)
        if gt_path is not None:
            gt = load_label_png(gt_path)
            if gt.shape != (h, w):
                raise DataError(f"{gt_path}: mask is {gt.shape[1]}x{gt.shape[0]}, image is {w}x{h}")
            counts = np.bincount(gt.ravel(), minlength=256)
            bad = np.flatnonzero(counts[len(classes) + 1 : VOID]) + len(classes) + 1
            if bad.size:
                raise DataError(
                    f"{gt_path}: label value {int(bad[0])} is neither a class id "
                    f"(0..{len(classes)}) nor void (255)"
                )
    sample = Sample(
        id=image_id, image=image, boxes=boxes, labels=ann.labels.copy(), gt=gt,
        difficult=ann.difficult.copy(), orig_hw=(h, w),
    )
    return shrink_sample(sample, max_side) if max_side else sample


def reduced_size(height: int, width: int, max_side: int | None) -> tuple[int, int]:
    """(H, W) after scaling the longer side down to ``max_side`` (unchanged when it fits)."""
    if not max_side or max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink_image(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """(H, W, 3) uint8 resized to ``hw`` with PIL's antialiased bilinear filter."""
    if image.shape[:2] == tuple(hw):
        return image
    return np.array(Image.fromarray(image).resize((hw[1], hw[0]), Image.BILINEAR))


def shrink_sample(sample: Sample, max_side: int | None) -> Sample:
    """Scale a sample so its longer side is at most ``max_side``: the image bilinear, the boxes
    by the same factors, the ground truth nearest. ``orig_hw`` keeps the file's size."""
    h, w = sample.image.shape[:2]
    nh, nw = reduced_size(h, w, max_side)
    if (nh, nw) == (h, w):
        return sample
    boxes = sample.boxes.astype(np.float32) * np.array([nw / w, nh / h, nw / w, nh / h], np.float32)
    return Sample(
        id=sample.id, image=shrink_image(sample.image, (nh, nw)), boxes=boxes, labels=sample.labels,
        gt=None if sample.gt is None else resize_label(sample.gt, (nh, nw)), difficult=sample.difficult,
        orig_hw=sample.orig_hw or (h, w),
        ignore=None if sample.ignore is None else resize_label(sample.ignore, (nh, nw)),
    )


def resize_label(label: np.ndarray, hw: tuple[int, int] | None) -> np.ndarray:
    """A label map resized to ``hw`` by nearest neighbour (pixel centres); unchanged (the same
    array) when it already has that size or ``hw`` is None. Used to write labels of a reduced
    image at the file's full size, and to read full-size labels at a reduced size."""
    if hw is None or label.shape[:2] == tuple(hw):
        return label
    h, w = label.shape[:2]
    H, W = int(hw[0]), int(hw[1])
    rows = np.minimum(((np.arange(H) + 0.5) * (h / H)).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * (w / W)).astype(np.int64), w - 1)
    return np.ascontiguousarray(label[rows][:, cols])


# ----------------------------------------------------------------------------- dataset


class _SampleDataset:
    """What VOCDataset and COCODataset share: the class names, len/getitem, the note on a
    shrunk image, and summary(). Subclasses set ``classes``, ``ids``, ``all_ids``, ``skipped``,
    ``split``, ``transform``, ``max_side``, ``notify``, ``_reported`` and define ``load`` and
    ``_source`` (what summary() names)."""

    @property
    def class_names(self) -> list[str]:
        """Names of all label ids, background first: ``["background", *classes]``."""
        return ["background", *self.classes]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> Any:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    def _note_reduced(self, sample: Sample) -> None:
        """One ``notify`` line per image processed below its size (``data.max_side``)."""
        if sample.reduced and self.notify is not None and sample.id not in self._reported:
            self._reported.add(sample.id)
            (h, w), (rh, rw) = sample.orig_hw, sample.image.shape[:2]
            self.notify(f"{sample.id}: {w}x{h} image processed at reduced size {rw}x{rh} "
                        f"(data.max_side={self.max_side}); outputs are written at {w}x{h}")

    def summary(self, max_listed: int = 5) -> str:
        """One line (plus one per listed problem) on what was read and what was skipped."""
        head = f"{self._source} [{self.split}]: {len(self.ids)} images, {len(self.classes)} classes"
        if not self.skipped:
            return head
        lines = [f"{head}; skipped {len(self.skipped)} of {len(self.all_ids)}:"]
        lines += [f"  {reason}" for _, reason in self.skipped[:max_listed]]
        if len(self.skipped) > max_listed:
            lines.append(f"  … and {len(self.skipped) - max_listed} more")
        return "\n".join(lines)


class VOCDataset(_SampleDataset):
    """A map-style (torch) dataset over ROOT/ImageSets/Segmentation/SPLIT.txt.

    ``dataset[i]`` is a ``Sample``, or ``transform(sample)`` when a transform is given (e.g.
    ``JointAugment(...).apply`` or ``transforms.sample_to_tensors``).

    ``on_error="raise"`` (default) reads lazily and raises DataError on the first bad item.
    ``on_error="skip"`` checks every item up front (the XML is parsed, the image header read,
    the ground-truth file opened) and leaves bad ones out; ``skipped`` lists ``(id, reason)``
    and ``summary()`` reports them. ``check_images="decode"`` decodes every image in that
    check, which also catches corrupt image data the header check cannot see.

    ``max_side`` shrinks images whose longer side exceeds it (``shrink_sample``) and
    ``notify`` gets one line per such image; ``notes`` holds warnings about the split file
    (an id listed twice is used once).
    """

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
        max_side: int | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', not {on_error!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset folder not found")
        self.split = split
        self.classes = resolve_classes(self.root, classes)
        self.class_ids = {name: i + 1 for i, name in enumerate(self.classes)}
        self.transform = transform
        self.with_gt = with_gt
        self.on_error = on_error
        self.max_side = max_side
        self.notify = notify
        self._reported: set[str] = set()
        self.all_ids, self.notes = read_split_checked(self.root, split)
        self.skipped: list[tuple[str, str]] = []
        self._annotations: dict[str, Annotation] = {}
        if on_error == "skip":
            self.ids = []
            for image_id in self.all_ids:
                try:
                    self._annotations[image_id] = self._check(image_id, check_images)
                    self.ids.append(image_id)
                except DataError as exc:
                    self.skipped.append((image_id, str(exc)))
            if not self.ids:
                first = self.skipped[0][1] if self.skipped else ""
                raise DataError(
                    f"{split_path(root, split)}: no usable images (first problem: {first})"
                )
        else:
            self.ids = list(self.all_ids)

    format = "voc"

    @property
    def _source(self) -> Path:
        return self.root

    def image_path(self, image_id: str) -> Path:
        return find_image(self.root, image_id)

    def box_labels(self, index: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """Boxes (clipped to ``width`` x ``height``) and labels of item ``index`` without decoding its image."""
        image_id = self.ids[index]
        ann = self._annotations.get(image_id) or parse_annotation(annotation_path(self.root, image_id), self.class_ids)
        return clip_boxes(ann.boxes, width, height, annotation_path(self.root, image_id)), ann.labels.copy()

    def _check(self, image_id: str, how: str) -> Annotation:
        xml = annotation_path(self.root, image_id)
        img_path = find_image(self.root, image_id)
        ann = parse_annotation(xml, self.class_ids)
        if how == "decode":
            h, w = read_image(img_path).shape[:2]
        else:
            w, h = check_image(img_path, scan=True)
        _check_size(ann, w, h, xml, img_path)
        clip_boxes(ann.boxes, w, h, xml)
        if self.with_gt:
            gt = find_gt(self.root, image_id)
            if gt is not None:
                try:
                    with Image.open(gt) as im:
                        gsize = im.size
                except (OSError, SyntaxError, ValueError) as exc:
                    raise DataError(f"{gt}: cannot read label image ({exc})") from None
                if gsize != (w, h):
                    raise DataError(f"{gt}: mask is {gsize[0]}x{gsize[1]}, image is {w}x{h}")
        return ann

    def background_fraction(self, index: int) -> float:
        """Fraction of the image's pixels outside every box (from the XML and the image header;
        no decoding). Images at or below ``cls.bg_fallback`` give BAP no background queries."""
        image_id = self.ids[index]
        ann = self._annotations.get(image_id) or parse_annotation(annotation_path(self.root, image_id), self.class_ids)
        w, h = check_image(find_image(self.root, image_id))
        h2, w2 = reduced_size(h, w, 500)  # the fraction hardly depends on the grid; keep it cheap
        boxes = clip_boxes(ann.boxes, w, h, annotation_path(self.root, image_id))
        boxes = boxes * np.array([w2 / w, h2 / h, w2 / w, h2 / h], np.float32)
        return float(definite_background(boxes, h2, w2).mean())

    def load(self, index: int) -> Sample:
        image_id = self.ids[index]
        sample = load_sample(
            self.root, image_id, self.classes, with_gt=self.with_gt,
            annotation=self._annotations.get(image_id), max_side=self.max_side,
        )
        self._note_reduced(sample)
        return sample

"""A procedural box-annotated dataset in PASCAL VOC layout, for demos and tests.

Each image has a background of 2–4 regions (Voronoi cells with wobbly borders), each with its
own colour and texture (flat noise, soft stripes, a gradient or blotches), and 1–4 objects of
five classes. A class has its own shape and texture and a hue band (jittered per object):

    ring      disc or annulus, smooth with radial shading        red
    star      5- or 6-pointed star, dotted                       yellow
    triangle  triangle, fine stripes along its base              blue
    blob      wobbly closed curve, speckled                      green
    bar       slanted bar, high-contrast diagonal stripes        purple

Shapes fill only part of their box (about 40–80%), objects often overlap, and now and then a
background region takes the colour of an object class, so "box as mask" pseudo labels are
clearly imperfect while the classes stay easy to tell apart by appearance.
With ``context=P`` a share P of the images draw their whole background from the "habitat" of
the class of one of their objects (a texture family and hue range per class, see
:data:`HABITATS` and docs/synthetic.md): the paper's situation where backgrounds go with classes.
Boxes are the tight boxes of the *visible* object pixels (VOC practice), so the box of an
instance in SegmentationObject equals its annotated box. Labels have no void border.

Everything is drawn from ``numpy.random.default_rng([seed, index])``: the same seed gives the
same files, and image ``i`` does not depend on how many images are generated.
"""

from __future__ import annotations

import colorsys
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from banacli.artifacts import atomic_write_bytes, atomic_write_text
from banacli.boxes import box_pixel_ranges, paint_order
from banacli.data.palette import VOID, save_label_png
from banacli.data.voc import (
    ANNOTATION_DIR,
    IMAGE_DIR,
    SPLIT_DIR,
    VOCDataset,
)
from banacli.errors import DataError

SYNTH_CLASSES: tuple[str, ...] = ("ring", "star", "triangle", "blob", "bar")
_HUES = {"ring": 0.0, "star": 52.0, "triangle": 218.0, "blob": 120.0, "bar": 285.0}
_MIN_VISIBLE = 0.45  # an object must keep this share of its pixels when others overlap it


def _hsv(h_deg: float, s: float, v: float) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return np.array([r, g, b], dtype=np.float32) * 255.0


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random grid upsampled with cubic interpolation."""
    grid = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


# ----------------------------------------------------------------------------- background


def _background(rng: np.random.Generator, n: int, object_colours: list[np.ndarray]) -> np.ndarray:
    """(n, n, 3) float32 image of 2–4 textured regions."""
    k = int(rng.integers(2, 5))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    seeds = rng.uniform(0, n, size=(k, 2)).astype(np.float32)
    dist = np.stack([np.hypot(xx - sx, yy - sy) for sx, sy in seeds])  # (k, n, n)
    dist += np.stack([_smooth_noise(rng, n, n, 3) for _ in range(k)]) * (0.12 * n)
    region = dist.argmin(axis=0)
    img = np.zeros((n, n, 3), dtype=np.float32)
    mimic = rng.random() < 0.35 and object_colours  # one region takes an object's colour
    mimic_region = int(rng.integers(k)) if mimic else -1
    for r in range(k):
        if r == mimic_region:
            colour = object_colours[int(rng.integers(len(object_colours)))] * rng.uniform(0.85, 1.1)
        else:
            colour = _hsv(rng.uniform(0, 360), rng.uniform(0.05, 0.7), rng.uniform(0.25, 0.9))
        kind = int(rng.integers(4))
        if kind == 0:  # flat with fine noise
            tex = colour + rng.normal(0, rng.uniform(3, 10), size=(n, n, 1))
        elif kind == 1:  # soft wide stripes
            ang = rng.uniform(0, np.pi)
            period = rng.uniform(0.15, 0.4) * n
            phase = (xx * np.cos(ang) + yy * np.sin(ang)) * (2 * np.pi / period)
            tex = colour * (1.0 + 0.18 * np.sin(phase))[..., None]
        elif kind == 2:  # linear gradient
            ang = rng.uniform(0, 2 * np.pi)
            t = ((xx - n / 2) * np.cos(ang) + (yy - n / 2) * np.sin(ang)) / n
            tex = colour * (1.0 + 0.5 * t)[..., None]
        else:  # blotches
            blotch = _smooth_noise(rng, n, n, int(rng.integers(4, 9)))
            tex = colour * (1.0 + 0.2 * blotch)[..., None]
        sel = region == r
        img[sel] = np.broadcast_to(tex, (n, n, 3))[sel]
    return img


# ----------------------------------------------------------------------------- habitats
# A context image (``generate(context=P)``, docs/synthetic.md) draws its whole background from
# the habitat of one of its objects' classes: a hue range away from every object hue and a
# texture family that ordinary backgrounds never use.
HABITATS: dict[str, dict[str, Any]] = {
    "ring": {"like": "sand", "hue": (22.0, 36.0), "sat": (0.25, 0.5), "val": (0.55, 0.85), "family": "grain"},
    "star": {"like": "night sky", "hue": (235.0, 260.0), "sat": (0.3, 0.6), "val": (0.15, 0.35), "family": "speckle"},
    "triangle": {"like": "water", "hue": (170.0, 195.0), "sat": (0.3, 0.6), "val": (0.4, 0.75), "family": "waves"},
    "blob": {"like": "meadow", "hue": (75.0, 100.0), "sat": (0.3, 0.6), "val": (0.35, 0.7), "family": "tufts"},
    "bar": {"like": "runway", "hue": (320.0, 345.0), "sat": (0.08, 0.25), "val": (0.35, 0.65), "family": "tiles"},
}


def _habitat_texture(family: str, colour: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, n, 3) float32 texture of one habitat region."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if family == "grain":  # fine isotropic noise over soft blotches
        blotch = _smooth_noise(rng, n, n, int(rng.integers(3, 6)))
        grain = rng.normal(0, rng.uniform(0.08, 0.14), size=(n, n)).astype(np.float32)
        return colour * (1.0 + 0.12 * blotch + grain)[..., None]
    if family == "speckle":  # sparse bright points on a smooth field
        field = 1.0 + 0.1 * _smooth_noise(rng, n, n, 3)
        dots = (rng.random((n, n)) < rng.uniform(0.02, 0.05)).astype(np.float32)
        out = colour * field[..., None] + dots[..., None] * rng.uniform(120, 200)
        return out.astype(np.float32)
    if family == "waves":  # wobbly sine ripples along one direction
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(0.06, 0.12) * n
        wobble = _smooth_noise(rng, n, n, 3) * rng.uniform(2.0, 4.0)
        phase = (xx * np.cos(ang) + yy * np.sin(ang) + wobble) * (2 * np.pi / period)
        return colour * (1.0 + 0.22 * np.sin(phase))[..., None]
    if family == "tufts":  # short vertical strokes: noise blurred along one axis
        noise = rng.normal(0, 1, size=(n, n)).astype(np.float32)
        k = int(rng.integers(5, 9))
        strokes = cv2.blur(noise, (1, k)) * np.sqrt(k)
        return colour * (1.0 + 0.12 * np.clip(strokes, -2.5, 2.5))[..., None]
    if family == "tiles":  # a grid of slabs with thin dark seams
        size = rng.uniform(0.12, 0.22) * n
        ox, oy = rng.uniform(0, size, size=2)
        ix, iy = np.floor((xx + ox) / size), np.floor((yy + oy) / size)
        slab = 1.0 + 0.08 * np.sin(ix * 12.9898 + iy * 78.233 + rng.uniform(0, 6.3))
        seam = ((xx + ox) % size < 1.5) | ((yy + oy) % size < 1.5)
        return colour * np.where(seam, 0.55, slab)[..., None]
    raise ValueError(family)


def _habitat_background(rng: np.random.Generator, n: int, cls: str) -> np.ndarray:
    """(n, n, 3) float32: 2–4 Voronoi regions, all drawn from the habitat of ``cls``."""
    hab = HABITATS[cls]
    k = int(rng.integers(2, 5))
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    seeds = rng.uniform(0, n, size=(k, 2)).astype(np.float32)
    dist = np.stack([np.hypot(xx - sx, yy - sy) for sx, sy in seeds])
    dist += np.stack([_smooth_noise(rng, n, n, 3) for _ in range(k)]) * (0.12 * n)
    region = dist.argmin(axis=0)
    img = np.zeros((n, n, 3), dtype=np.float32)
    for r in range(k):
        colour = _hsv(rng.uniform(*hab["hue"]), rng.uniform(*hab["sat"]), rng.uniform(*hab["val"]))
        tex = _habitat_texture(hab["family"], colour, n, rng)
        sel = region == r
        img[sel] = tex[sel]
    return img


# ----------------------------------------------------------------------------- objects


def _polygon(cls: str, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Outline(s) of a shape in its own frame, about [-1, 1]^2; plus an optional hole."""
    if cls == "ring":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        outer = np.stack([np.cos(t), np.sin(t)], axis=1)
        hole = outer * rng.uniform(0.3, 0.6) if rng.random() < 0.7 else None
        return [outer], hole
    if cls == "star":
        points = int(rng.integers(5, 7))
        inner = rng.uniform(0.38, 0.6)
        t = np.arange(2 * points) * (np.pi / points) + rng.uniform(0, np.pi)
        r = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)], None
    if cls == "triangle":
        apex = rng.uniform(-1, 1)
        return [np.array([[-1.0, 1.0], [1.0, 1.0], [apex, -1.0]])], None
    if cls == "blob":
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        r = np.ones_like(t)
        for k in (2, 3, 4):
            r += rng.uniform(0.0, 0.2) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
        return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1) / r.max()], None
    if cls == "bar":
        th = rng.uniform(0.2, 0.4)
        return [np.array([[-1.0, -th], [1.0, -th], [1.0, th], [-1.0, th]])], None
    raise ValueError(cls)


def _rotation(cls: str, rng: np.random.Generator) -> float:
    if cls == "bar":  # never axis-aligned: a slanted bar leaves much of its box empty
        return float(rng.choice([-1, 1]) * rng.uniform(np.radians(20), np.radians(55)))
    if cls == "triangle":
        return float(rng.uniform(-0.4, 0.4))
    return float(rng.uniform(0, 2 * np.pi))


def _draw_shape(
    n: int, cls: str, centre: tuple[float, float], half: tuple[float, float], angle: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns the (n, n) bool mask and the affine map (2, 3) from image to object frame."""
    outlines, hole = _polygon(cls, rng)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    scale = np.diag(half)

    def to_image(p: np.ndarray) -> np.ndarray:
        q = p @ scale.T @ rot.T + np.asarray(centre)
        return np.round(q * 16).astype(np.int32)  # 4 fractional bits for cv2's shift

    canvas = np.zeros((n, n), dtype=np.uint8)
    cv2.fillPoly(canvas, [to_image(p) for p in outlines], 1, lineType=cv2.LINE_8, shift=4)
    if hole is not None:
        cv2.fillPoly(canvas, [to_image(hole)], 0, lineType=cv2.LINE_8, shift=4)
    # image -> object frame: u = S^-1 R^T (p - centre)
    inv = np.diag(1.0 / np.asarray(half)) @ rot.T
    affine = np.concatenate([inv, (-inv @ np.asarray(centre))[:, None]], axis=1)
    return canvas.astype(bool), affine


def _object_colour(cls: str, rng: np.random.Generator) -> np.ndarray:
    return _hsv(_HUES[cls] + rng.uniform(-12, 12), rng.uniform(0.55, 0.95), rng.uniform(0.6, 0.95))


def _texture(
    cls: str, colour: np.ndarray, affine: np.ndarray, half: tuple[float, float],
    window: tuple[slice, slice], rng: np.random.Generator,
) -> np.ndarray:
    """(h, w, 3) float32 appearance of an object over the image window ``window``."""
    ys, xs = window
    yy, xx = np.mgrid[ys, xs].astype(np.float32)
    u = affine[0, 0] * xx + affine[0, 1] * yy + affine[0, 2]  # object frame, about [-1, 1]
    v = affine[1, 0] * xx + affine[1, 1] * yy + affine[1, 2]
    pu, pv = u * half[0], v * half[1]  # object frame in pixels
    shape = xx.shape + (1,)
    if cls == "ring":
        shade = 1.15 - 0.35 * np.clip(np.hypot(u, v), 0, 1)
        tex = colour * shade[..., None] + rng.normal(0, 3, size=shape)
    elif cls == "star":
        period = rng.uniform(4.5, 6.5)
        dots = (np.cos(2 * np.pi * pu / period) * np.cos(2 * np.pi * pv / period)) > 0.55
        tex = colour * np.where(dots, 0.45, 1.0)[..., None] + rng.normal(0, 3, size=shape)
    elif cls == "triangle":
        period = rng.uniform(3.5, 5.0)
        stripes = np.sin(2 * np.pi * pv / period) > 0
        tex = colour * np.where(stripes, 1.1, 0.7)[..., None] + rng.normal(0, 3, size=shape)
    elif cls == "blob":
        tex = colour * (1.0 + rng.normal(0, 0.22, size=xx.shape))[..., None]
    else:  # bar
        period = rng.uniform(6.0, 9.0)
        stripes = np.sin(2 * np.pi * (pu + pv) / period) > 0
        tex = np.where(stripes[..., None], colour, np.float32(25.0)) + rng.normal(0, 3, size=shape)
    return tex.astype(np.float32)


def _render(rng: np.random.Generator, n: int, habitat_pick: float | None = None) -> dict[str, Any]:
    """One image: RGB uint8, class map, instance map, boxes (K, 4), labels (K,), fill rates.

    ``habitat_pick`` in [0, 1) makes this a context image: the object at that quantile of the
    object list gives the habitat class of the whole background (docs/synthetic.md).
    """
    target = int(rng.integers(1, 5))
    objs: list[dict[str, Any]] = []
    inst = np.zeros((n, n), dtype=np.uint8)
    for _ in range(target):
        for _attempt in range(6):
            cls = SYNTH_CLASSES[int(rng.integers(len(SYNTH_CLASSES)))]
            a = rng.uniform(0.13, 0.28) * n
            half = (a, a * rng.uniform(0.7, 1.3))
            if objs and rng.random() < 0.6:  # next to an earlier object: boxes overlap
                o = objs[int(rng.integers(len(objs)))]
                d = rng.uniform(0.5, 1.1) * max(o["half"])
                t = rng.uniform(0, 2 * np.pi)
                centre = (o["centre"][0] + d * np.cos(t), o["centre"][1] + d * np.sin(t))
            else:
                centre = tuple(rng.uniform(0.12 * n, 0.88 * n, size=2))
            mask, affine = _draw_shape(n, cls, centre, half, _rotation(cls, rng), rng)
            if mask.sum() < 0.004 * n * n + 12:
                continue
            trial = inst.copy()
            trial[mask] = len(objs) + 1
            counts = np.bincount(trial.ravel(), minlength=len(objs) + 2)
            if all(counts[i + 1] >= _MIN_VISIBLE * o["area"] for i, o in enumerate(objs)):
                objs.append({"cls": cls, "centre": centre, "half": half, "affine": affine,
                             "area": int(mask.sum())})
                inst = trial
                break
    colours = [_object_colour(o["cls"], rng) for o in objs]
    habitat = None
    if habitat_pick is not None and objs:
        habitat = objs[int(habitat_pick * len(objs))]["cls"]
        img = _habitat_background(rng, n, habitat)
    else:
        img = _background(rng, n, colours)
    boxes, labels, fills = [], [], []
    for i, (o, colour) in enumerate(zip(objs, colours), start=1):
        vis = inst == i
        rows, cols = np.flatnonzero(vis.any(axis=1)), np.flatnonzero(vis.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        window = (slice(y0, y1), slice(x0, x1))
        tex = _texture(o["cls"], colour, o["affine"], o["half"], window, rng)
        sub = vis[window]
        img[window][sub] = tex[sub]
        boxes.append((x0, y0, x1, y1))
        labels.append(SYNTH_CLASSES.index(o["cls"]) + 1)
        fills.append(sub.sum() / sub.size)
    img += rng.normal(0, 2.5, size=img.shape)
    cls_map = np.zeros((n, n), dtype=np.uint8)
    lut = np.array([0, *labels], dtype=np.uint8)
    cls_map[:] = lut[inst]
    return {
        "image": np.clip(np.rint(img), 0, 255).astype(np.uint8),
        "class": cls_map,
        "object": inst,
        "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, dtype=np.int64),
        "fill": fills,
        "habitat": habitat,
    }


# ----------------------------------------------------------------------------- files


def _annotation_xml(image_id: str, n: int, boxes: np.ndarray, labels: np.ndarray) -> str:
    lines = [
        "<annotation>",
        "  <folder>synth</folder>",
        f"  <filename>{image_id}.jpg</filename>",
        "  <source><database>bana synth</database></source>",
        f"  <size><width>{n}</width><height>{n}</height><depth>3</depth></size>",
        "  <segmented>1</segmented>",
    ]
    for (x0, y0, x1, y1), lab in zip(boxes.astype(int).tolist(), labels.tolist()):
        truncated = int(x0 == 0 or y0 == 0 or x1 == n or y1 == n)
        lines += [
            "  <object>",
            f"    <name>{SYNTH_CLASSES[lab - 1]}</name>",
            "    <pose>Unspecified</pose>",
            f"    <truncated>{truncated}</truncated>",
            "    <difficult>0</difficult>",
            # internal 0-based exclusive-end -> VOC 1-based inclusive
            f"    <bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox>",
            "  </object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def generate(
    out: str | os.PathLike,
    *,
    images: int,
    size: int,
    seed: int,
    val: int = 0,
    context: float = 0.0,
    progress: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Write ``images`` training and ``val`` validation images of ``size`` px to ``out``.

    Writes JPEGImages/, Annotations/, SegmentationClass/, SegmentationObject/,
    ImageSets/Segmentation/{train,val,trainval}.txt and classes.txt. Existing files of the
    same names are replaced (atomically); nothing else is removed. ``context`` = P: each image
    is, with probability P, a context image whose background is the habitat of the class of
    one of its objects (docs/synthetic.md); the draw uses its own stream
    ``default_rng([seed, index, 1])``, so the other images are identical to those at P = 0.
    ``progress(1)`` is called
    after each image. Returns a summary: counts, classes, mean fill rate (object pixels / box
    pixels) and ``box_miou``, the mIoU (0–1) of box-as-mask pseudo labels on the train split.
    """
    if images < 1 or val < 0:
        raise DataError(f"{out}: need at least 1 training image and val >= 0")
    if not 0.0 <= context <= 1.0:
        raise DataError(f"{out}: context must lie in [0, 1], got {context}")
    if size < 32:
        raise DataError(f"{out}: image size {size} is too small (minimum 32)")
    root = Path(out)
    total = images + val
    ids = [f"{i:06d}" for i in range(total)]
    nc = len(SYNTH_CLASSES) + 1
    conf = {"train": np.zeros((nc, nc), np.int64), "val": np.zeros((nc, nc), np.int64)}
    fills: list[float] = []
    n_objects = 0
    habitats: list[str | None] = []
    for i, image_id in enumerate(ids):
        rng = np.random.default_rng([seed, i])
        ctx_rng = np.random.default_rng([seed, i, 1])
        in_context, pick = ctx_rng.random() < context, float(ctx_rng.random())
        r = _render(rng, size, pick if in_context else None)
        habitats.append(r["habitat"])
        atomic_write_bytes(root / IMAGE_DIR / f"{image_id}.jpg", _jpeg_bytes(r["image"]))
        atomic_write_text(
            root / ANNOTATION_DIR / f"{image_id}.xml",
            _annotation_xml(image_id, size, r["boxes"], r["labels"]),
        )
        save_label_png(root / "SegmentationClass" / f"{image_id}.png", r["class"])
        save_label_png(root / "SegmentationObject" / f"{image_id}.png", r["object"])
        part = "train" if i < images else "val"
        pred = box_as_mask(r["boxes"], r["labels"], size, size)
        conf[part] += _confusion(r["class"], pred, nc)
        if part == "train":
            fills += r["fill"]
        n_objects += len(r["labels"])
        if progress is not None:
            progress(1)
    splits = root / SPLIT_DIR
    atomic_write_text(splits / "train.txt", "".join(f"{x}\n" for x in ids[:images]))
    atomic_write_text(splits / "val.txt", "".join(f"{x}\n" for x in ids[images:]))
    atomic_write_text(splits / "trainval.txt", "".join(f"{x}\n" for x in ids))
    atomic_write_text(root / "classes.txt", "".join(f"{c}\n" for c in SYNTH_CLASSES))
    atomic_write_text(root / "habitats.txt", "".join(f"{x} {h or '-'}\n" for x, h in zip(ids, habitats)))
    summary = {
        "root": str(root),
        "train": images,
        "val": val,
        "size": size,
        "seed": seed,
        "context": context,
        "context_images": sum(h is not None for h in habitats),
        "classes": list(SYNTH_CLASSES),
        "objects": n_objects,
        "mean_fill_rate": float(np.mean(fills)) if fills else 0.0,
        "box_miou": _miou(conf["train"]),
    }
    if val:
        summary["box_miou_val"] = _miou(conf["val"])
    return summary


# ----------------------------------------------------------------------------- box baseline


def box_as_mask(boxes: np.ndarray, labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """The "Box" pseudo label: every box filled with its class, smaller boxes on top.

    (H, W) uint8; 0 outside all boxes. Boxes are drawn by decreasing area, so where boxes
    overlap the smaller one wins.
    """
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    out = np.zeros((height, width), dtype=np.uint8)
    ranges = box_pixel_ranges(boxes, height, width)
    for k in paint_order(boxes, ties="later"):  # areas of the float boxes, largest first
        c0, r0, c1, r1 = ranges[k]
        out[r0:r1, c0:c1] = labels[k]
    return out


def _confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts, rows ground truth, columns prediction; void ground truth is ignored."""
    g = gt.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    keep = g != VOID
    g, p = g[keep], p[keep]
    p = np.where(p < num_classes, p, num_classes)  # anything unknown counts as wrong
    cm = np.bincount(g * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1))
    return cm.reshape(num_classes, num_classes + 1)[:, :num_classes]


def _miou(conf: np.ndarray) -> float:
    """Mean IoU (0–1) over the classes that occur in the ground truth or the prediction."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else 0.0


def box_baseline_miou(
    root: str | os.PathLike, split: str, classes: Sequence[str] | None = None
) -> float:
    """mIoU (0–1) of box-as-mask pseudo labels against the ground truth of ``split``."""
    ds = VOCDataset(root, split, classes, with_gt=True)
    nc = len(ds.classes) + 1
    conf = np.zeros((nc, nc), dtype=np.int64)
    seen = 0
    for i in range(len(ds)):
        s = ds.load(i)
        if s.gt is None:
            continue
        conf += _confusion(s.gt, box_as_mask(s.boxes, s.labels, s.height, s.width), nc)
        seen += 1
    if not seen:
        raise DataError(f"{Path(root)}: no ground-truth masks for split {split!r}")
    return _miou(conf)

"""Pictures: panels of an image with its boxes, score maps and label maps, side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from banacli.artifacts import atomic_path
from banacli.data.palette import PALETTE, overlay


def heatmap(values: np.ndarray) -> np.ndarray:
    """(H, W) values in [0, 1] -> (H, W, 3) uint8, dark blue (0) through green to yellow (1)."""
    v = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0)
    r = np.clip(1.8 * v - 0.6, 0, 1)
    g = np.clip(1.2 * v, 0, 1) ** 0.8
    b = np.clip(0.6 - 0.8 * v, 0, 1) + 0.15 * (1 - v)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def draw_boxes(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Box outlines in their class colours (exclusive-end boxes drawn on their last pixel)."""
    img = Image.fromarray(np.ascontiguousarray(image))
    draw = ImageDraw.Draw(img)
    for (x0, y0, x1, y1), c in zip(np.asarray(boxes), np.asarray(labels)):
        colour = tuple(int(v) for v in PALETTE[int(c)])
        draw.rectangle([float(x0), float(y0), float(x1) - 1, float(y1) - 1], outline=colour, width=2)
    return np.asarray(img)


def map_title(name: str, class_names: list[str] | None = None) -> str:
    """A score map's title; ``CAM:<id>`` names the class (``CAM cat``)."""
    head, sep, tail = name.partition(":")
    if sep and head == "CAM" and tail.isdigit():
        c = int(tail)
        return f"CAM {class_names[c]}" if class_names and c < len(class_names) else f"CAM class {c}"
    return name


def legend(classes: list[int], class_names: list[str] | None, width: int) -> np.ndarray:
    """A white strip of colour swatches with class names, wrapped to ``width`` pixels."""
    row_h, sw = 14, 10
    items = [(int(c), class_names[c] if class_names and c < len(class_names) else ("void" if c == 255 else str(c)))
             for c in classes]
    rows: list[list[tuple[int, str]]] = [[]]
    x = 0
    for c, name in items:
        w = sw + 4 + 6 * len(name) + 10
        if x + w > width and rows[-1]:
            rows.append([])
            x = 0
        rows[-1].append((c, name))
        x += w
    img = Image.new("RGB", (width, row_h * len(rows) + 2), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        x = 2
        for c, name in row:
            y = 2 + r * row_h
            colour = tuple(int(v) for v in PALETTE[c])
            draw.rectangle([x, y, x + sw, y + sw], fill=colour, outline=(0, 0, 0))
            draw.text((x + sw + 4, y - 1), name, fill=(0, 0, 0))
            x += sw + 4 + 6 * len(name) + 10
    return np.asarray(img)


def panel(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *,
          maps: dict[str, np.ndarray] | None = None, label_maps: dict[str, np.ndarray] | None = None,
          gt: np.ndarray | None = None, class_names: list[str] | None = None) -> np.ndarray:
    """One row: the image with boxes, each score map as a heat map (``CAM:<id>`` maps titled with
    the class name), the ground truth when given, each label map as an overlay; each tile titled;
    below, a legend of the class colours (with names) that appear in the boxes and label maps."""
    present = set(np.asarray(labels).astype(int).tolist())
    for lab in [*(label_maps or {}).values(), *([gt] if gt is not None else [])]:
        present |= set(np.unique(lab).astype(int).tolist())
    present.discard(0)
    scale = max(1, -(-160 // max(image.shape[:2])))  # small images are enlarged to >= 160 px
    if scale > 1:
        def up(a):
            return np.repeat(np.repeat(a, scale, 0), scale, 1)

        image = up(image)
        boxes = np.asarray(boxes, np.float32) * scale
        maps = {k: up(v) for k, v in (maps or {}).items()}
        label_maps = {k: up(v) for k, v in (label_maps or {}).items()}
        gt = up(gt) if gt is not None else None
    tiles = [("image + boxes", draw_boxes(image, boxes, labels))]
    for name, m in (maps or {}).items():
        tiles.append((map_title(name, class_names), heatmap(m)))
    if gt is not None:
        tiles.append(("ground truth", draw_boxes(overlay(image, gt, alpha=0.6), boxes, labels)))
    for name, lab in (label_maps or {}).items():
        tiles.append((name, draw_boxes(overlay(image, lab, alpha=0.6), boxes, labels)))
    h, w = image.shape[:2]
    title_h = 14
    width = len(tiles) * (w + 4)
    key = legend([0, *sorted(present)], class_names, width)
    canvas = Image.new("RGB", (width, h + title_h + key.shape[0]), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, tile) in enumerate(tiles):
        x = i * (w + 4)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, title_h))
        draw.text((x + 2, 1), name, fill=(0, 0, 0))
    canvas.paste(Image.fromarray(key), (0, h + title_h))
    return np.asarray(canvas)


def save_picture(path: str | Path, picture: np.ndarray) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")

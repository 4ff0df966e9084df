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


def panel(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, *,
          maps: dict[str, np.ndarray] | None = None, label_maps: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """One row: the image with boxes, each score map as a heat map, each label map as an overlay,
    each tile titled."""
    scale = max(1, -(-160 // max(image.shape[:2])))  # small images are enlarged to >= 160 px
    if scale > 1:
        image = np.repeat(np.repeat(image, scale, 0), scale, 1)
        boxes = np.asarray(boxes, np.float32) * scale
        maps = {k: np.repeat(np.repeat(v, scale, 0), scale, 1) for k, v in (maps or {}).items()}
        label_maps = {k: np.repeat(np.repeat(v, scale, 0), scale, 1) for k, v in (label_maps or {}).items()}
    tiles = [("image + boxes", draw_boxes(image, boxes, labels))]
    for name, m in (maps or {}).items():
        tiles.append((name, heatmap(m)))
    for name, lab in (label_maps or {}).items():
        tiles.append((name, draw_boxes(overlay(image, lab, alpha=0.6), boxes, labels)))
    h, w = image.shape[:2]
    title_h = 14
    canvas = Image.new("RGB", (len(tiles) * (w + 4), h + title_h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (name, tile) in enumerate(tiles):
        x = i * (w + 4)
        canvas.paste(Image.fromarray(np.ascontiguousarray(tile)), (x, title_h))
        draw.text((x + 2, 1), name, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_picture(path: str | Path, picture: np.ndarray) -> None:
    """Write a PNG atomically."""
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG")

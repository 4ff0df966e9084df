"""The boxes of a Label Studio task, in the pixels of its image.

Where the rectangles come from, first found wins:

1. the interactive context (``params.context.result``: the box a user has just drawn),
2. the task's latest annotation that was not cancelled,
3. the task's latest prediction.

Only ``rectanglelabels`` results drawn on the Image being labelled count. Label Studio gives
a rectangle in percent of the image, ``x, y, width, height`` from the top-left corner, with
``rotation`` in degrees clockwise about that corner. In pixels of a W x H image::

    x0 = x / 100 * W      y0 = y / 100 * H
    x1 = x0 + width / 100 * W      y1 = y0 + height / 100 * H

bana's box convention (0-based, exclusive end; a box covers every pixel it touches,
:mod:`banacli.ops.pseudo`). A rotated rectangle is replaced by the axis-aligned box around
its four corners.

Percent values do not survive the round trip exactly: a box edge at column 13 of a 96 px
image is stored as 100 * 13 / 96 = 13.5416...% and comes back as 12.999999999999998, which a
box covering "every pixel it touches" would widen by a whole column. A coordinate within
:data:`SNAP` pixels of an integer is therefore taken as that integer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["TaskBox", "task_boxes", "rectangle_to_pixels", "SNAP"]

SNAP = 1e-6  # pixels: far below any drawn edge, far above float64 rounding of percent values


def _snap(v: float) -> float:
    r = round(v)
    return float(r) if abs(v - r) <= SNAP else v


@dataclass(frozen=True)
class TaskBox:
    id: str
    label: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels


def rectangle_to_pixels(value: dict[str, Any], width: int, height: int) -> tuple[float, float, float, float]:
    """A rectangle's percent ``value`` -> (x0, y0, x1, y1) pixels (see the module docstring)."""
    x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
    w, h = float(value["width"]) * width / 100.0, float(value["height"]) * height / 100.0
    rot = float(value.get("rotation") or 0.0)
    if rot % 360 == 0:
        return _snap(x), _snap(y), _snap(x + w), _snap(y + h)
    c, s = math.cos(math.radians(rot)), math.sin(math.radians(rot))
    xs = [x + dx * c - dy * s for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    ys = [y + dx * s + dy * c for dx, dy in ((0, 0), (w, 0), (w, h), (0, h))]
    return _snap(min(xs)), _snap(min(ys)), _snap(max(xs)), _snap(max(ys))


def _rectangles(results: Any, to_name: str) -> list[dict]:
    if not isinstance(results, list):
        return []
    return [r for r in results if isinstance(r, dict) and r.get("type") == "rectanglelabels"
            and r.get("to_name", to_name) == to_name and isinstance(r.get("value"), dict)]


def _latest(items: Any) -> list[dict]:
    """Annotations or predictions, newest first (by id, which grows with creation)."""
    if not isinstance(items, list):
        return []
    good = [a for a in items if isinstance(a, dict) and not a.get("was_cancelled")]
    return sorted(good, key=lambda a: (a.get("id") is not None, a.get("id") or 0), reverse=True)


def source_rectangles(task: dict, context: Any, to_name: str) -> tuple[str, list[dict]]:
    """(where they came from, the rectangle results) for one task."""
    if isinstance(context, dict):
        rects = _rectangles(context.get("result"), to_name)
        if rects:
            return "context", rects
    for key in ("annotations", "predictions"):
        for item in _latest(task.get(key)):
            rects = _rectangles(item.get("result"), to_name)
            if rects:
                return key[:-1], rects
    return "none", []


def task_boxes(rects: list[dict], width: int, height: int) -> tuple[list[TaskBox], list[str]]:
    """Boxes in pixels and one message per rectangle that could not be used."""
    boxes, problems = [], []
    for n, r in enumerate(rects):
        rid = str(r.get("id") or f"r{n}")
        value = r["value"]
        labels = value.get("rectanglelabels") or []
        if not labels:
            problems.append(f"rectangle {rid} has no label")
            continue
        try:
            box = rectangle_to_pixels(value, width, height)
        except (KeyError, TypeError, ValueError):
            problems.append(f"rectangle {rid}: x, y, width, height must be numbers")
            continue
        if not all(math.isfinite(v) for v in box) or box[2] <= box[0] or box[3] <= box[1]:
            problems.append(f"rectangle {rid} has no area")
            continue
        boxes.append(TaskBox(id=rid, label=str(labels[0]), box=box))
    return boxes, problems

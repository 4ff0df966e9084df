"""Label Studio result dicts (one region of an annotation or prediction) from bana's masks and boxes.

Label Studio places regions on the image in percent: x, y, width and height are 100 * pixels /
original_width (or original_height), measured from the top-left corner; a brush region carries
the whole-image mask as brush RLE (see ``banacli.interop.masks``). Every result names the
control tag it belongs to (``from_name``, e.g. the BrushLabels tag) and the object tag it is
drawn on (``to_name``, e.g. the Image tag), and the image size it was made for.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from banacli.interop.masks import encode_brush_rle, mask_to_polygons


def _base(kind: str, value: dict, *, width: int, height: int, from_name: str, to_name: str,
          result_id: str | None) -> dict:
    result = {
        "type": kind,
        "from_name": from_name,
        "to_name": to_name,
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": value,
    }
    if result_id is not None:
        result["id"] = str(result_id)
    return result


def brush_result(mask: np.ndarray, label: str, *, from_name: str, to_name: str,
                 result_id: str | None = None) -> dict:
    """A ``brushlabels`` result holding the (H, W) mask as brush RLE."""
    height, width = np.asarray(mask).shape
    value = {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]}
    return _base("brushlabels", value, width=width, height=height, from_name=from_name,
                 to_name=to_name, result_id=result_id)


def polygon_results(mask: np.ndarray, label: str, *, from_name: str, to_name: str,
                    result_id: str | None = None, min_area: float = 0.0) -> list[dict]:
    """One ``polygonlabels`` result per outer contour of the mask, points in percent.

    An empty mask gives []. With several contours and a ``result_id``, the ids are
    ``<result_id>_0``, ``<result_id>_1``, ... so each region stays distinct.
    """
    height, width = np.asarray(mask).shape
    polygons = mask_to_polygons(mask, min_area=min_area)
    results = []
    for n, poly in enumerate(polygons):
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        points = [[round(100.0 * x / width, 4), round(100.0 * y / height, 4)] for x, y in xy]
        value = {"points": points, "closed": True, "polygonlabels": [label]}
        rid = None if result_id is None else (result_id if len(polygons) == 1 else f"{result_id}_{n}")
        results.append(_base("polygonlabels", value, width=width, height=height,
                             from_name=from_name, to_name=to_name, result_id=rid))
    return results


def rectangle_result(box_xyxy: Sequence[float], label: str, width: int, height: int, *,
                     from_name: str, to_name: str, result_id: str | None = None) -> dict:
    """A ``rectanglelabels`` result for a box (x1, y1, x2, y2) in pixel-edge coordinates.

    bana's box convention (``banacli/ops/bap.py``): 0-based, end exclusive, so the box covers
    columns x1..x2-1 and spans [x1, x2] in the continuous frame where column j covers [j, j+1];
    that is also the frame of COCO's [x, y, w, h] and of Label Studio's percent.
    """
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {list(box_xyxy)} has no area (need x2 > x1 and y2 > y1)")
    value = {
        "x": 100.0 * x1 / width,
        "y": 100.0 * y1 / height,
        "width": 100.0 * (x2 - x1) / width,
        "height": 100.0 * (y2 - y1) / height,
        "rotation": 0,
        "rectanglelabels": [label],
    }
    return _base("rectanglelabels", value, width=width, height=height, from_name=from_name,
                 to_name=to_name, result_id=result_id)


def points_to_polygon(points: Sequence[Sequence[float]], width: int, height: int) -> list[float]:
    """Percent points of a ``polygonlabels`` value back to a flat pixel polygon."""
    return [c for x, y in points for c in (float(x) * width / 100.0, float(y) * height / 100.0)]

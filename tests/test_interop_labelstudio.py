"""Label Studio result dicts: the regions decode back to the mask / box they were made from."""

from __future__ import annotations

import numpy as np
import pytest

from banacli.interop.labelstudio import (
    brush_result,
    points_to_polygon,
    polygon_results,
    rectangle_result,
)
from banacli.interop.masks import decode_brush_rle, polygons_to_mask


def _mask(h: int = 30, w: int = 40) -> np.ndarray:
    m = np.zeros((h, w), bool)
    m[4:12, 6:20] = True
    m[20:27, 30:37] = True
    return m


def test_brush_result_decodes_to_the_mask():
    mask = _mask()
    r = brush_result(mask, "cat", from_name="tag", to_name="image", result_id="a1")
    assert r["type"] == "brushlabels" and r["from_name"] == "tag" and r["to_name"] == "image"
    assert (r["original_width"], r["original_height"]) == (40, 30)
    assert r["value"]["format"] == "rle" and r["value"]["brushlabels"] == ["cat"]
    assert r["id"] == "a1"
    assert np.array_equal(decode_brush_rle(r["value"]["rle"], 30, 40), mask)


def test_polygon_results_in_percent_rasterise_back():
    mask = _mask()
    results = polygon_results(mask, "dog", from_name="poly", to_name="image", result_id="p")
    assert len(results) == 2  # two separate regions
    assert sorted(r["id"] for r in results) == ["p_0", "p_1"]
    polys = []
    for r in results:
        assert r["type"] == "polygonlabels" and r["value"]["polygonlabels"] == ["dog"]
        pts = np.asarray(r["value"]["points"])
        assert (pts >= 0).all() and (pts <= 100).all()
        polys.append(points_to_polygon(r["value"]["points"], 40, 30))
    assert np.array_equal(polygons_to_mask(polys, 30, 40), mask)
    assert polygon_results(np.zeros((5, 5), bool), "dog", from_name="p", to_name="i") == []


def test_rectangle_result_percent_of_image():
    r = rectangle_result((10, 5, 30, 20), "cat", 40, 25, from_name="box", to_name="image")
    v = r["value"]
    assert r["type"] == "rectanglelabels" and v["rectanglelabels"] == ["cat"]
    # Back to pixels: x = v.x * W / 100 etc.
    assert v["x"] * 40 / 100 == pytest.approx(10)
    assert v["y"] * 25 / 100 == pytest.approx(5)
    assert (v["x"] + v["width"]) * 40 / 100 == pytest.approx(30)
    assert (v["y"] + v["height"]) * 25 / 100 == pytest.approx(20)
    assert (r["original_width"], r["original_height"]) == (40, 25)
    with pytest.raises(ValueError, match="no area"):
        rectangle_result((5, 5, 5, 9), "cat", 40, 25, from_name="box", to_name="image")

"""Mask codecs: Label Studio brush RLE (exact round trip, hand-worked bit streams), COCO RLE
through pycocotools, polygons that rasterise back to the mask."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from banacli.interop.masks import (
    decode_brush_rle,
    decode_brush_values,
    encode_brush_rle,
    mask_to_coco_rle,
    mask_to_polygons,
    polygon_area,
    polygons_to_mask,
)


def _bits_to_bytes(bits: str) -> list[int]:
    bits = bits.replace(" ", "")
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def _header(n: int) -> str:
    # 32-bit value count, word size 8 (stored as 7), run-length widths 3, 4, 8, 16 (stored - 1)
    return f"{n:032b} {7:05b} {2:04b} {3:04b} {7:04b} {15:04b}"


def _run(length: int, value: int) -> str:
    widths = (3, 4, 8, 16)
    k = next(i for i, w in enumerate(widths) if length <= 1 << w)
    return f"1 {k:02b} {length - 1:0{widths[k]}b} {value:08b}"


def test_brush_single_pixel_hand_worked():
    # One foreground pixel = RGBA (255, 255, 255, 255): one repeated run of 4 values of 255.
    expected = _bits_to_bytes(_header(4) + " " + _run(4, 255))
    assert encode_brush_rle(np.ones((1, 1), bool)) == expected
    assert decode_brush_rle(expected, 1, 1).tolist() == [[True]]


def test_brush_two_runs_hand_worked():
    # Row [0, 1, 1]: 4 zeros (one background pixel), then 8 values of 255 (two mask pixels).
    mask = np.array([[0, 1, 1]], dtype=np.uint8)
    expected = _bits_to_bytes(_header(12) + " " + _run(4, 0) + " " + _run(8, 255))
    assert encode_brush_rle(mask) == expected
    assert decode_brush_rle(expected, 1, 3).tolist() == [[False, True, True]]


def test_brush_long_run_is_split_at_the_widest_field():
    # 128 x 129 background pixels = 66048 values > 2**16: one full run of 2**16, then the rest.
    h, w = 128, 129
    n = h * w * 4
    expected = _bits_to_bytes(_header(n) + " " + _run(1 << 16, 0) + " " + _run(n - (1 << 16), 0))
    assert encode_brush_rle(np.zeros((h, w), bool)) == expected
    assert not decode_brush_rle(expected, h, w).any()


def test_brush_decoder_reads_literal_runs():
    # A literal record (flag 0) as Label Studio's front end may write: 4 words given one by one.
    bits = _header(4) + " 0 00 011 " + " ".join(f"{v:08b}" for v in (0, 255, 0, 255))
    rle = _bits_to_bytes(bits)
    assert decode_brush_values(rle).tolist() == [0, 255, 0, 255]
    assert decode_brush_rle(rle, 1, 1).tolist() == [[True]]  # alpha 255


@pytest.mark.parametrize("seed", range(6))
def test_brush_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    h, w = (int(v) for v in rng.integers(1, 90, size=2))
    density = rng.uniform(0.0, 1.0)
    mask = rng.random((h, w)) < density
    if seed == 0:
        mask[:] = True
    if seed == 1:
        mask[:] = False
    rle = encode_brush_rle(mask)
    assert all(0 <= b <= 255 for b in rle)
    back = decode_brush_rle(rle, h, w)
    assert back.dtype == bool and back.shape == (h, w)
    assert np.array_equal(back, mask)
    # The RGBA values are the mask as 0/255 in every channel.
    values = decode_brush_values(rle).reshape(h, w, 4)
    assert np.array_equal(values, np.repeat(mask[:, :, None], 4, axis=2).astype(np.uint8) * 255)


def test_brush_decode_rejects_wrong_size_and_truncation():
    rle = encode_brush_rle(np.ones((4, 5), bool))
    with pytest.raises(ValueError, match="4x4x4"):
        decode_brush_rle(rle, 4, 4)
    with pytest.raises(ValueError, match="ends before"):
        decode_brush_values(rle[:6])


def test_brush_matches_label_studio_sdk_when_installed():
    brush = pytest.importorskip("label_studio_sdk.converter.brush")
    rng = np.random.default_rng(7)
    mask = rng.random((33, 47)) < 0.4
    values = brush.decode_rle(encode_brush_rle(mask))
    assert np.array_equal(np.reshape(values, (33, 47, 4))[:, :, 3] > 127, mask)
    theirs = brush.mask2rle(mask.astype(np.uint8) * 255)
    assert np.array_equal(decode_brush_rle(theirs, 33, 47), mask)


def test_masks_reject_non_binary_input():
    with pytest.raises(ValueError, match="0/1"):
        encode_brush_rle(np.array([[0, 255]], dtype=np.uint8))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_coco_rle(np.zeros((2, 2, 1), bool))


def _shapes(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    """A mask of a few filled rectangles and discs, with no holes."""
    import cv2

    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        x, y = int(rng.integers(0, w - 4)), int(rng.integers(0, h - 4))
        if rng.random() < 0.5:
            m[y : y + int(rng.integers(1, 15)), x : x + int(rng.integers(1, 15))] = 1
        else:
            cv2.circle(m, (x, y), int(rng.integers(1, 10)), 1, -1)
    return m.astype(bool)


@pytest.mark.parametrize("seed", range(5))
def test_coco_rle_decodes_to_the_mask(seed):
    mask = _shapes(seed) if seed else np.random.default_rng(1).random((31, 17)) < 0.5
    rle = mask_to_coco_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == list(mask.shape)
    decoded = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask)
    assert int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()})) == mask.sum()


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("seed", range(6))
def test_polygons_rasterise_back_to_the_mask(seed):
    mask = _shapes(seed)
    polygons = mask_to_polygons(mask)
    assert polygons and all(len(p) % 2 == 0 and len(p) >= 6 for p in polygons)
    h, w = mask.shape
    xy = np.concatenate([np.reshape(p, (-1, 2)) for p in polygons])
    assert (xy >= 0).all() and (xy[:, 0] <= w).all() and (xy[:, 1] <= h).all()
    rles = mask_utils.frPyObjects(polygons, h, w)
    back = mask_utils.decode(mask_utils.merge(rles)).astype(bool)
    # Hole-free shapes come back pixel for pixel (quarter-pixel inset convention).
    assert _iou(back, mask) == 1.0
    assert np.array_equal(polygons_to_mask(polygons, h, w), back)


def test_polygons_fill_holes_and_keep_thin_parts():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 2:12] = True
    mask[5:8, 5:8] = False  # a hole: outer contours only
    mask[15, 3:18] = True  # a one-pixel-high line
    mask[18, 18] = True  # a single pixel
    polygons = mask_to_polygons(mask)
    assert len(polygons) == 3
    back = polygons_to_mask(polygons, 20, 20)
    filled = mask.copy()
    filled[5:8, 5:8] = True
    assert np.array_equal(back, filled)
    # The single pixel's polygon has area 1/4; min_area above that drops it.
    assert min(polygon_area(p) for p in polygons) == pytest.approx(0.25)
    assert len(mask_to_polygons(mask, min_area=0.5)) == 2


def test_polygons_of_empty_mask():
    assert mask_to_polygons(np.zeros((5, 5), bool)) == []
    assert not polygons_to_mask([], 5, 5).any()

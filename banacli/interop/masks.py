"""Mask codecs for the tools bana exports to: Label Studio brush RLE, COCO RLE, polygons.

Pure functions, numpy in and out, no file I/O. A mask is a 2-D array (H, W) of bool or 0/1.

Label Studio brush RLE (the codec of its front end, ported to Python as
``label_studio_sdk.converter.brush``) run-length encodes the flattened RGBA image of the mask,
H * W * 4 values, where a mask pixel is (255, 255, 255, 255) and background (0, 0, 0, 0).
The values are packed into a bit stream, most significant bit first, and the bit stream into
bytes (the list of ints Label Studio stores in ``value.rle``):

    header   32 bits  number of values n (= H * W * 4)
              5 bits  word size - 1 (bana writes 8-bit words: 7)
           4 x 4 bits the four run-length field widths - 1 (bana writes widths 3, 4, 8, 16)
    then, until n values are produced, one record per run:
              1 bit   1 = a run of one repeated word, 0 = a run of literal words
              2 bits  index k into the four widths
       widths[k] bits the run length - 1
    1 word / L words  the repeated value, or the L literal values
    zero bits up to the next byte boundary.

A repeated run holds at most 2**16 values (the widest length field), so a longer run of
one value is split into several records. bana writes repeated runs only (every pixel is
four equal values, so no run is shorter than 4); its decoder reads both kinds and any word
size / widths the header declares, as Label Studio's own front end may write them.

COCO RLE is pycocotools' (column-major, ``counts`` compressed to a string).

Polygons (COCO ``segmentation`` lists, Label Studio / YOLO points) are the outer contours
of the mask in pixel coordinates, where pixel (row i, column j) covers the square
[j, j+1] x [i, i+1]. They are traced by ``cv2.findContours`` on the mask upsampled 2x
(nearest) and mapped back by (x + 0.5) / 2, so every vertex lies a quarter pixel inside the
boundary pixels' outer edges: a rasteriser that tests pixel centres (pycocotools, cv2.fillPoly
at pixel centres) gives back exactly the mask with its holes filled. Holes are not represented
(COCO and YOLO polygons cannot carry them); use RLE or brush masks where holes matter.
"""

from __future__ import annotations

import numpy as np

# The field widths bana writes for run lengths; a run longer than 2**16 is split.
_RUN_WIDTHS = (3, 4, 8, 16)
_WORD_BITS = 8
_HEADER_BITS = 32 + 5 + 4 * 4
_MAX_RUN = 1 << _RUN_WIDTHS[-1]


def _as_bool_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
    if mask.dtype != bool:
        values = np.unique(mask)
        if not np.isin(values, (0, 1)).all():
            raise ValueError(f"a mask must be bool or 0/1, got values {values[:8].tolist()}")
        mask = mask.astype(bool)
    return mask


def _pack_fields(values: np.ndarray, widths: np.ndarray) -> list[int]:
    """Write each value in its width of bits, MSB first, one after another; pad to bytes."""
    values = np.asarray(values, dtype=np.uint64)
    widths = np.asarray(widths, dtype=np.int64)
    total = int(widths.sum())
    field = np.repeat(np.arange(len(widths)), widths)  # (total,) field of each bit
    starts = np.cumsum(widths) - widths
    pos = np.arange(total) - starts[field]  # bit index inside its field, 0 = MSB
    shift = (widths[field] - 1 - pos).astype(np.uint64)
    bits = ((values[field] >> shift) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits).tolist()  # packbits pads the last byte with zeros


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE (``value.rle``) of a 2-D bool / 0-1 mask."""
    flat = _as_bool_mask(mask).ravel()
    n = flat.size * 4
    if n >= 1 << 32:
        raise ValueError(f"a mask of {flat.size} pixels does not fit Label Studio's 32-bit length")
    # Runs of equal pixels; each pixel is four equal values, so a run of p pixels is 4p values.
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    run_values = np.where(flat[bounds[:-1]], 255, 0)
    run_lengths = np.diff(bounds) * 4
    # Split runs longer than the widest length field into full chunks plus a remainder.
    chunks = -(-run_lengths // _MAX_RUN)  # ceil
    values = np.repeat(run_values, chunks)
    lengths = np.full(int(chunks.sum()), _MAX_RUN, dtype=np.int64)
    last = np.cumsum(chunks) - 1
    lengths[last] = run_lengths - (chunks - 1) * _MAX_RUN
    # The narrowest width k whose field holds length - 1.
    limits = np.array([1 << w for w in _RUN_WIDTHS])
    k = np.searchsorted(limits, lengths, side="left")  # lengths <= 2**w
    width = np.array(_RUN_WIDTHS)[k]
    # One record per chunk: flag 1 | k (2 bits) | length-1 (width bits) | value (8 bits).
    record = (
        (np.uint64(1) << (2 + width + _WORD_BITS).astype(np.uint64))
        | (k.astype(np.uint64) << (width + _WORD_BITS).astype(np.uint64))
        | ((lengths - 1).astype(np.uint64) << np.uint64(_WORD_BITS))
        | values.astype(np.uint64)
    )
    header_values = [n, _WORD_BITS - 1, *(w - 1 for w in _RUN_WIDTHS)]
    header_widths = [32, 5, 4, 4, 4, 4]
    return _pack_fields(
        np.concatenate((np.array(header_values, dtype=np.uint64), record)),
        np.concatenate((np.array(header_widths), 1 + 2 + width + _WORD_BITS)),
    )


class _BitReader:
    def __init__(self, data: list[int] | bytes) -> None:
        arr = np.asarray(list(data) if not isinstance(data, np.ndarray) else data)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ValueError("a brush RLE is a list of bytes (0..255)")
        self.bits = np.unpackbits(arr.astype(np.uint8)).tobytes()  # one byte 0/1 per bit
        self.text = self.bits.translate(bytes.maketrans(b"\x00\x01", b"01")).decode("ascii")
        self.i = 0

    def read(self, n: int) -> int:
        if self.i + n > len(self.text):
            raise ValueError("brush RLE ends before the values it declares")
        out = int(self.text[self.i : self.i + n], 2)
        self.i += n
        return out


def decode_brush_values(rle: list[int]) -> np.ndarray:
    """The flat uint8 values (RGBA, H * W * 4) a Label Studio brush RLE holds."""
    reader = _BitReader(rle)
    n = reader.read(32)
    word = reader.read(5) + 1
    widths = [reader.read(4) + 1 for _ in range(4)]
    out = np.zeros(n, dtype=np.uint8)
    i = 0
    while i < n:
        repeated = reader.read(1)
        j = i + 1 + reader.read(widths[reader.read(2)])
        if j > n:
            raise ValueError(f"brush RLE run ends at value {j}, past the {n} it declares")
        if repeated:
            out[i:j] = reader.read(word)
        else:
            for t in range(i, j):
                out[t] = reader.read(word)
        i = j
    return out


def decode_brush_rle(rle: list[int], height: int, width: int) -> np.ndarray:
    """The (H, W) bool mask of a Label Studio brush RLE: alpha channel above half."""
    values = decode_brush_values(rle)
    if values.size != height * width * 4:
        raise ValueError(
            f"brush RLE holds {values.size} values, not {height}x{width}x4 = {height * width * 4}"
        )
    return values.reshape(height, width, 4)[:, :, 3] > 127


def mask_to_coco_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE {"size": [H, W], "counts": str} (pycocotools) of a 2-D mask."""
    from pycocotools import mask as mask_utils

    m = _as_bool_mask(mask)
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def coco_rle_area(rle: dict) -> int:
    """Pixel count of a COCO RLE (pycocotools ``area``)."""
    from pycocotools import mask as mask_utils

    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def polygon_area(poly: list[float]) -> float:
    """Shoelace area of a flat polygon [x1, y1, x2, y2, ...]."""
    xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    x, y = xy[:, 0], xy[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)


def mask_to_polygons(mask: np.ndarray, *, min_area: float = 0.0) -> list[list[float]]:
    """Outer contours of a mask as flat polygons [x1, y1, x2, y2, ...] in pixel coordinates.

    Rasterised at pixel centres they give back the mask with holes filled (see the module
    docstring for the quarter-pixel convention). A polygon whose shoelace area is below
    ``min_area`` square pixels is left out (a single pixel's polygon has area 0.25).
    An empty mask gives [].
    """
    import cv2

    m = _as_bool_mask(mask)
    if not m.any():
        return []
    up = np.repeat(np.repeat(m.astype(np.uint8), 2, axis=0), 2, axis=1)  # (2H, 2W)
    contours, _ = cv2.findContours(up, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polygons: list[list[float]] = []
    for contour in contours:
        xy = (contour.reshape(-1, 2).astype(np.float64) + 0.5) / 2.0  # (N, 2) x, y
        poly = [round(float(v), 4) for v in xy.ravel()]
        if len(xy) >= 3 and polygon_area(poly) >= min_area:
            polygons.append(poly)
    return polygons


def polygons_to_mask(polygons: list[list[float]], height: int, width: int) -> np.ndarray:
    """Rasterise flat polygons with pycocotools (union); the inverse of ``mask_to_polygons``."""
    from pycocotools import mask as mask_utils

    if not polygons:
        return np.zeros((height, width), dtype=bool)
    rles = mask_utils.frPyObjects([list(map(float, p)) for p in polygons], height, width)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)

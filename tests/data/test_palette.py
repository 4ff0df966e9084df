"""VOC palette, label PNG round trips, colorize and overlay."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from banacli.data.palette import PALETTE, colorize, load_label_png, overlay, save_label_png
from banacli.errors import DataError


def test_palette_is_the_voc_palette():
    assert PALETTE.shape == (256, 3) and PALETTE.dtype == np.uint8
    assert PALETTE[0].tolist() == [0, 0, 0]
    assert PALETTE[1].tolist() == [128, 0, 0]  # aeroplane
    assert PALETTE[15].tolist() == [192, 128, 128]  # person
    assert PALETTE[20].tolist() == [0, 64, 128]  # tvmonitor
    assert PALETTE[255].tolist() == [224, 224, 192]  # void
    assert len({tuple(c) for c in PALETTE.tolist()}) == 256


def test_label_png_round_trip(tmp_path):
    label = np.random.default_rng(0).integers(0, 21, size=(17, 23), dtype=np.uint8)
    label[0] = 255
    path = tmp_path / "sub" / "x.png"
    save_label_png(path, label)
    with Image.open(path) as img:
        assert img.mode == "P"
        assert np.array(img.getpalette()[:6]).tolist() == [0, 0, 0, 128, 0, 0]
    np.testing.assert_array_equal(load_label_png(path), label)
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temp file left


def test_rgb_label_png_maps_back_through_the_palette(tmp_path):
    label = np.array([[0, 1, 2], [15, 255, 3]], np.uint8)
    Image.fromarray(colorize(label)).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_label_png(tmp_path / "rgb.png"), label)
    Image.fromarray(np.full((2, 2, 3), 7, np.uint8)).save(tmp_path / "odd.png")
    with pytest.raises(DataError, match=r"odd\.png: RGB label colour \(7, 7, 7\)"):
        load_label_png(tmp_path / "odd.png")


def test_truncated_or_missing_label_png(tmp_path):
    path = tmp_path / "t.png"
    save_label_png(path, np.random.default_rng(0).integers(0, 21, size=(64, 64), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.png: cannot read label image"):
        load_label_png(path)
    with pytest.raises(DataError, match=r"none\.png: label file not found"):
        load_label_png(tmp_path / "none.png")


def test_colorize_and_overlay():
    label = np.array([[0, 1], [255, 2]], np.uint8)
    img = np.full((2, 2, 3), 100, np.uint8)
    np.testing.assert_array_equal(colorize(label)[0, 1], [128, 0, 0])
    out = overlay(img, label, alpha=0.5)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [100, 100, 100]  # background shows the image
    assert out[0, 1].tolist() == [114, 50, 50]  # half image, half class colour
    assert out[1, 0].tolist() == [162, 162, 146]  # void mixed with its light colour

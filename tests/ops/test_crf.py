"""DenseCRF wrapper: shapes, validation, and that the bilateral term follows colour edges."""

from __future__ import annotations

import numpy as np
import pytest

from banacli.errors import ConfigError, DataError
from banacli.ops.crf import CRFParams, dense_crf


def _edge_image(h: int = 40, w: int = 64, edge: int = 32) -> np.ndarray:
    image = np.zeros((h, w, 3), dtype=np.uint8)
    image[:, edge:] = 255
    return image


def test_weak_unary_snaps_to_colour_edge():
    # colour edge at column 32; the unary is confident far from it, uniform on 24..39
    image = _edge_image()
    p_bg = np.full((40, 64), 0.5, dtype=np.float32)
    p_bg[:, :24] = 0.7
    p_bg[:, 40:] = 0.3
    probs = np.stack([p_bg, 1 - p_bg])
    marginals = dense_crf(image, probs, CRFParams())
    assert marginals.shape == probs.shape and marginals.dtype == np.float32
    np.testing.assert_allclose(marginals.sum(0), 1.0, atol=1e-4)
    labels = marginals.argmax(0)
    expected = np.zeros((40, 64), dtype=np.int64)
    expected[:, 32:] = 1
    np.testing.assert_array_equal(labels, expected)


def test_confident_unary_survives():
    image = _edge_image()
    probs = np.zeros((3, 40, 64), dtype=np.float32)
    probs[2] = 1.0  # one-hot: clipped to 1e-5 elsewhere, the CRF keeps it
    marginals = dense_crf(image, probs)
    assert np.all(marginals.argmax(0) == 2)


def test_bad_inputs_and_params_are_readable_errors():
    image = _edge_image()
    with pytest.raises(DataError, match="uint8"):
        dense_crf(image.astype(np.float32), np.ones((2, 40, 64)) / 2)
    with pytest.raises(DataError, match="do not match"):
        dense_crf(image, np.ones((2, 20, 64)) / 2)
    with pytest.raises(ConfigError, match="bi_xy"):
        CRFParams(bi_xy=0)
    with pytest.raises(ConfigError, match="iterations"):
        CRFParams(iterations=-1)
    assert CRFParams.from_list([4, 121, 5, 3, 3]).bi_xy == 121

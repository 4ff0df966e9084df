"""banacli.api: a run's segmenter in three lines of Python; py.typed and LICENSE in the wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import torch

from banacli.api import Segmenter
from banacli.models.normalize import normalize
from banacli.ops.infer import predict_logits

from .segrun import CLASS_NAMES, make_seg_run, random_image, write_image

ROOT = Path(__file__).resolve().parents[1]


def test_three_lines(tmp_path):
    run = make_seg_run(tmp_path / "run")
    image = random_image(40, 56, seed=1)
    path = write_image(tmp_path / "x.png", image)

    seg = Segmenter.from_run(run)
    mask = seg.predict(path)
    assert seg.class_names == CLASS_NAMES
    assert mask.shape == (40, 56) and mask.dtype == np.uint8 and mask.max() < len(CLASS_NAMES)

    # the same as running the model by hand: one scale, no flip -> argmax of the logits
    x = normalize(torch.from_numpy(image).permute(2, 0, 1)[None], seg.meta["normalization"])
    by_hand = predict_logits(seg.model, x, scales=[1.0], flip=False)[0].argmax(0).numpy()
    np.testing.assert_array_equal(seg.predict(image, ms=False, flip=False), by_hand)
    probs = seg.probabilities(image)
    assert probs.shape == (3, 40, 56)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(mask, probs.argmax(0))
    assert seg.predict(image, crf=True).shape == (40, 56)


def test_wheel_carries_py_typed_and_the_licence():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in cfg["tool"]["setuptools"]["package-data"]["banacli"]
    assert (ROOT / "banacli" / "py.typed").is_file()
    assert cfg["tool"]["setuptools"]["license-files"] == ["LICENSE"] and (ROOT / "LICENSE").is_file()

"""Helpers for the eval / export / predict / convert tests: a run directory holding an
untrained tiny segmenter (no training needed), small images, and the CLI."""

from __future__ import annotations

import functools

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from banacli.artifacts import save_model
from banacli.models.deeplab import build_segmenter
from banacli.models.normalize import TORCHVISION
from banacli.runs import seg_arch

CLASS_NAMES = ["background", "cat", "dog"]


def make_seg_run(run: Path, class_names: list[str] = CLASS_NAMES, *, seed: int = 0,
                 normalization: dict | None = None) -> Path:
    """RUN/seg/model.safetensors with a randomly initialised tiny segmenter, as train-seg saves it."""
    torch.manual_seed(seed)
    model = build_segmenter("tiny", len(class_names), weights=None, tau=20.0)
    save_model(run / "seg" / "model.safetensors", model.state_dict(), arch=seg_arch("tiny"),
               class_names=class_names, normalization=normalization or TORCHVISION, extra={"tau": 20.0})
    return run


def write_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def random_image(h: int, w: int, seed: int) -> np.ndarray:
    """A blocky RGB picture (so that DenseCRF has edges to follow)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), 3), dtype=np.uint8)
    big = np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w]
    out = np.zeros((h, w, 3), dtype=np.uint8)
    out[: big.shape[0], : big.shape[1]] = big
    return out


@functools.cache
def _app():
    from banacli.cli import build_app

    return build_app()


def invoke(args: list) -> object:
    """Run ``bana ARGS`` in-process; returns click's Result (exit_code, output)."""
    return CliRunner().invoke(_app(), [str(a) for a in args])

"""Fixtures for the stage tests: a tiny synthetic dataset and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from banacli.cli import build_app
from banacli.data.synthetic import generate

TINY_CLS = ["--backbone", "tiny", "--set", "cls.weights=null", "--crop-size", "48", "--batch-size", "4",
            "--checkpoint-every", "100", "--log-every", "1", "-q"]
TINY_SEG = ["--model", "tiny", "--set", "seg.weights=null", "--crop-size", "48", "--batch-size", "4",
            "--checkpoint-every", "100", "--log-every", "1", "-q"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """10 training and 4 validation images of 48 px (read-only for the tests)."""
    root = tmp_path_factory.mktemp("tiny-data")
    generate(root, images=10, size=48, seed=3, val=4)
    return root


@pytest.fixture(scope="session")
def app():
    return build_app()


def invoke(app, args: list[str]):
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory, tiny_data, app) -> Path:
    """A run directory holding a tiny classifier trained for 8 iterations (read-only: copy it)."""
    run = tmp_path_factory.mktemp("cls-run")
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", run, "--iterations", 8, *TINY_CLS])
    assert res.exit_code == 0, res.output
    return run


@pytest.fixture
def fresh_cls_run(tmp_path, cls_run) -> Path:
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    return run

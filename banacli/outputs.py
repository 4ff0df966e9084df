"""Small records one stage leaves for the next about its outputs.

``RUN/labels/<method>.skipped.json`` maps each image id that ``bana gen-labels`` left out on
purpose (``data.on_error=skip``) to the reason, so that ``bana train-seg`` can tell an image
skipped on purpose from a label that is missing because a run did not finish.
"""

from __future__ import annotations

import json
from pathlib import Path

from banacli.errors import ArtifactError
from banacli.artifacts import atomic_write_json


def skipped_path(label_root: Path, method: str) -> Path:
    return Path(label_root) / f"{method}.skipped.json"


def write_skipped(label_root: Path, method: str, skipped: list[tuple[str, str]]) -> None:
    """Record the (id, reason) pairs a gen-labels run skipped (an empty record when none)."""

    atomic_write_json(skipped_path(label_root, method), {image_id: reason for image_id, reason in skipped})


def read_skipped(label_root: Path, method: str) -> dict[str, str]:
    """{id: reason} of the images gen-labels skipped on purpose; {} when there is no record."""
    path = skipped_path(label_root, method)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def check_labels(ds, folders: list[Path], skipped: dict[str, str] | None = None) -> None:
    """Every training image needs its pseudo labels; fail before training with the first missing
    file. ``skipped`` ({id: reason}, from gen-labels) tells an image gen-labels left out on
    purpose from a label that is missing because gen-labels did not finish."""
    skipped = skipped or {}
    for folder in folders:
        if not folder.is_dir():
            raise ArtifactError(f"{folder}: pseudo labels not found (run bana gen-labels first)")
        for image_id in ds.ids:
            path = folder / f"{image_id}.png"
            if path.is_file():
                continue
            if image_id in skipped:
                raise ArtifactError(
                    f"{path}: no pseudo label because gen-labels skipped this image on purpose "
                    f"({skipped[image_id]}); fix it, or train without it with --set data.on_error=skip")
            raise ArtifactError(f"{path}: pseudo label missing (rerun bana gen-labels)")

"""The manifest of a label set (RUN/labels/<labeler>.manifest.json): what made the labels there
(method, split, label params, classifier and dataset digests, outputs, max_side), checked
before existing labels are kept and written once per run (rank 0 under torchrun)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch.distributed as dist

from banacli.artifacts import atomic_write_json
from banacli.engine.checkpoint import config_differences
from banacli.errors import ArtifactError
from banacli.runs import config_digest

__all__ = ["MANIFEST_KEYS", "check_manifest", "decide_manifest", "label_params"]

MANIFEST_KEYS = ("method", "split", "params", "classifier_sha256", "dataset", "outputs", "max_side")
# keys a manifest written by an earlier bana may lack: compared only when the old one has them
LATER_MANIFEST_KEYS = ("max_side",)
NOT_LABEL_PARAMS = ("shard", "features")  # how the work is spread; never changes a label


def check_manifest(path: Path, manifest: dict[str, Any], force: bool) -> bool:
    """True when existing outputs may be kept; raises when they were made differently."""
    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    differs = [k for k in MANIFEST_KEYS
               if (k in old or k not in LATER_MANIFEST_KEYS) and old.get(k) != manifest.get(k)]
    if not differs:
        return True
    if force:
        return False
    def short(values: dict) -> dict:  # sha256 digests: the first 12 hex digits tell them apart
        return {k: f"{v[:12]}…" if k in ("dataset", "classifier_sha256") and isinstance(v, str) else v
                for k, v in values.items() if k in differs}

    named = config_differences(short(old), short(manifest), before="labels")
    raise ArtifactError(f"{path}: the labels there were made with a different {'; '.join(named)}; "
                        "use --force to relabel everything, or another --run directory")


def label_params(config) -> dict[str, Any]:
    """The resolved ``labels`` keys that determine the labels (the manifest's ``params``).
    ``box_convention`` appears only when it is not the default, so manifests written before
    it existed stay valid."""
    params = {k: v for k, v in config_digest(config, ("labels",))["labels"].items() if k not in NOT_LABEL_PARAMS}
    if params.get("box_convention", "voc") == "voc":
        params.pop("box_convention", None)
    return params


def decide_manifest(path: Path, manifest: dict, force: bool, rank: int, world: int) -> bool:
    """Check and write the manifest once: on rank 0 before any rank starts labelling."""
    if world == 1:
        keep = check_manifest(path, manifest, force)
        atomic_write_json(path, manifest)
        return keep
    box: list[Any] = [None]
    if rank == 0:
        try:
            keep = check_manifest(path, manifest, force)
            atomic_write_json(path, manifest)
            box[0] = ("ok", keep)
        except ArtifactError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise ArtifactError(value)
    return bool(value)

"""Training checkpoints: model, optimizer, RNG states and the loss log in a safetensors file +
JSON (never pickled), written atomically; and the checks before a run restarts over one."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from banacli.artifacts import atomic_path
from banacli.engine.dist import unwrap
from banacli.errors import ArtifactError, BanaError
from banacli.runs import resolve_data_root

CHECKPOINT = "checkpoint.safetensors"


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, iteration: int,
                    losses: list[dict[str, float]], scaler: Any = None, meta: dict | None = None) -> None:
    """Everything needed to continue exactly, without pickle: tensors in safetensors, rest in JSON."""
    tensors: dict[str, torch.Tensor] = {}
    for k, v in unwrap(model).state_dict().items():
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    opt = optimizer.state_dict()
    for pid, st in opt["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
    tensors["rng.cpu"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    state = {
        "iteration": iteration,
        "losses": losses,
        "param_groups": [{k: v for k, v in g.items() if k != "params"} for g in opt["param_groups"]],
        "scaler": scaler.state_dict() if scaler is not None else None,
        "meta": meta or {},
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"state": json.dumps(state)})


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *,
                    scaler: Any = None, device: torch.device | str = "cpu") -> dict:
    """Restore model, optimizer, RNG and scaler in place; return the JSON state (iteration, losses, meta)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state = json.loads(fh.metadata()["state"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read checkpoint ({exc}); delete it or run without --resume") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        unwrap(model).load_state_dict(model_sd)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ArtifactError(f"{path}: checkpoint does not fit this model ({first})") from None
    opt_state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = v.to(device)
    current = optimizer.state_dict()
    groups = state["param_groups"]
    if len(groups) != len(current["param_groups"]):
        raise ArtifactError(f"{path}: checkpoint has {len(groups)} parameter groups, model has {len(current['param_groups'])}")
    for g, saved in zip(current["param_groups"], groups):
        g.update(saved)
    optimizer.load_state_dict({"state": opt_state, "param_groups": current["param_groups"]})
    torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
        if cuda_states and len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    return state


def read_checkpoint_state(path: Path) -> dict:
    """The JSON state of a checkpoint (iteration, losses, meta) without loading its tensors."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            return json.loads(fh.metadata()["state"])
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: cannot read checkpoint ({exc}); delete it or rerun with --force") from None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, now: dict, *, ignore: tuple[str, ...] = (), before: str = "checkpoint") -> list[str]:
    """'key (checkpoint A, now B)' for every flattened key whose value differs (``before`` names
    what holds the saved values)."""
    a, b = _flatten(saved), _flatten(now)
    out = []
    for key in sorted(set(a) | set(b)):
        if key.rsplit(".", 1)[-1] in ignore:
            continue
        if a.get(key, "<unset>") != b.get(key, "<unset>"):
            out.append(f"{key} ({before} {a.get(key, '<unset>')!r}, now {b.get(key, '<unset>')!r})")
    return out


def check_restart(ckpt: Path, *, resume: bool, force: bool, iterations: int, config_meta: dict | None) -> None:
    """Refuse to silently restart over a checkpoint, or to resume one made with another config."""
    if not ckpt.is_file():
        return
    if not resume:
        if force:
            return
        state = read_checkpoint_state(ckpt)
        raise BanaError(f"{ckpt}: a checkpoint at iteration {state.get('iteration')} exists; pass --resume to "
                        "continue it, --force to start again from iteration 0, or use another --run")
    state = read_checkpoint_state(ckpt)
    saved = state.get("meta", {}).get("config")
    if saved is not None:
        saved = resolve_data_root(saved)  # a checkpoint of an older bana holds data.root as typed
    if config_meta is not None and saved is not None and saved != config_meta:
        diff = config_differences(saved, config_meta, ignore=("iterations",))
        if diff:
            raise BanaError(f"{ckpt}: checkpoint was written with a different config: {'; '.join(diff)}; "
                            "rerun with those values, use another --run, or --force without --resume to start over")
    if int(state.get("iteration", 0)) > iterations:
        raise BanaError(f"{ckpt}: checkpoint is at iteration {state['iteration']}, beyond --iterations {iterations}")


def state_digest(model: nn.Module) -> str:
    """sha256 over the names and bytes of a model's state dict (DDP: every rank must agree)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()

"""Shared training machinery for train-cls and train-seg.

- ``init_distributed``: torchrun / torch.distributed (DDP) setup; gloo on CPU, nccl on CUDA.
- ``SeededBatchSampler``: the sample order and every augmentation seed are pure functions of
  (seed, iteration), so a run resumed from a checkpoint sees exactly the batches an
  uninterrupted run would.
- ``save_checkpoint`` / ``load_checkpoint``: model, optimizer, RNG states and the loss log in a
  safetensors file + JSON (never pickled), written atomically.
- ``train_loop``: SGD loop with a learning-rate schedule, AMP on CUDA, progress, checkpoints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from banacli.artifacts import atomic_path, atomic_write_text
from banacli.errors import ArtifactError, BanaError

CHECKPOINT = "checkpoint.safetensors"


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def resolve_device(pref: str) -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(pref)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BanaError(f"--device {pref}: CUDA is not available on this machine")
    return dev


def init_distributed(device_pref: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1), else one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_pref)
    if world <= 1:
        return DistInfo(device=device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


def barrier(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.barrier()


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sample_seed(seed: int, position: int) -> int:
    """A 31-bit seed for the sample drawn at global stream position ``position``."""
    x = (seed * 0x9E3779B1 + position * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFFFFFF
    x ^= x >> 17
    x = (x * 0xC2B2AE3D) & 0xFFFFFFFFFFFF
    return int(x & 0x7FFFFFFF)


def batch_for_iteration(n: int, batch_size: int, seed: int, iteration: int,
                        rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """(dataset index, augmentation seed) pairs of this rank's share of one global batch.

    The global stream walks through a fresh permutation of the dataset each epoch; position
    ``p = iteration * batch_size + j``. Ranks take interleaved slices of the global batch.
    """
    out = []
    for j in range(rank, batch_size, world):
        p = iteration * batch_size + j
        epoch, k = divmod(p, n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=g)
        out.append((int(perm[k]), sample_seed(seed, p)))
    return out


class SeededBatchSampler(torch.utils.data.Sampler):
    """Batches of (index, seed) for iterations ``start .. stop-1`` (see batch_for_iteration)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int, stop: int, rank: int = 0, world: int = 1):
        if n == 0:
            raise BanaError("the training split has no usable images")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start, self.stop, self.rank, self.world = start, stop, rank, world

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for it in range(self.start, self.stop):
            yield batch_for_iteration(self.n, self.batch_size, self.seed, it, self.rank, self.world)

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


def make_loader(dataset, sampler: SeededBatchSampler, collate_fn, num_workers: int = 0):
    """A DataLoader over (index, seed) batches. It gets its own generator: creating an iterator
    must not draw from the global RNG, or a resumed run's dropout masks would shift by one draw."""
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_fn,
                                       num_workers=num_workers, generator=torch.Generator().manual_seed(0),
                                       persistent_workers=False)


def seeded_batches(dataset, collate_fn, *, batch_size: int, seed: int, iterations: int, info: DistInfo,
                   num_workers: int = 0) -> Callable[[int], Iterator[Any]]:
    """``batches(start)`` for :func:`train_loop`: this rank's batches from iteration ``start`` on."""

    def batches(start: int) -> Iterator[Any]:
        sampler = SeededBatchSampler(len(dataset), batch_size, seed, start, iterations, info.rank, info.world)
        return iter(make_loader(dataset, sampler, collate_fn, num_workers))

    return batches


def step_lr(base: float, iteration: int, step: int) -> float:
    """Step schedule (train-cls): divided by 10 after ``step`` iterations."""
    return base * (0.1 if iteration >= step else 1.0)


def poly_lr(base: float, iteration: int, total: int, power: float = 0.9) -> float:
    """Poly schedule (train-seg): base * (1 - it/total)^power."""
    return base * (1.0 - iteration / total) ** power


# ---------------------------------------------------------------- checkpoints

def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, iteration: int,
                    losses: list[dict[str, float]], scaler: Any = None, meta: dict | None = None) -> None:
    """Everything needed to continue exactly, without pickle: tensors in safetensors, rest in JSON."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for k, v in _unwrap(model).state_dict().items():
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
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            state = json.loads(fh.metadata()["state"])
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read checkpoint ({exc}); delete it or run without --resume") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        _unwrap(model).load_state_dict(model_sd)
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


def write_loss_log(path: Path, losses: list[dict[str, float]]) -> None:
    if not losses:
        return
    keys = list(losses[0].keys())
    lines = [",".join(keys)] + [",".join(f"{row.get(k, '')}" for k in keys) for row in losses]
    atomic_write_text(path, "\n".join(lines) + "\n")


# ---------------------------------------------------------------- the loop

@dataclass
class LoopResult:
    iteration: int
    losses: list[dict[str, float]]
    resumed_from: int


def train_loop(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Callable[[int], Iterator[Any]],
    step: Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]],
    lr_factor: Callable[[int], float],
    iterations: int,
    out_dir: Path,
    info: DistInfo,
    checkpoint_every: int,
    log_every: int,
    resume: bool,
    amp: bool,
    progress: Any = None,
    config_meta: dict | None = None,
) -> LoopResult:
    """Run SGD from the checkpoint (``resume``) or from scratch to ``iterations``.

    ``batches(start)`` yields one batch per iteration from ``start``; ``step(batch, it)`` returns
    the loss and extra numbers to log. Learning rates are ``initial_lr × lr_factor(it)`` per group.
    Only rank 0 writes. Returns the loss log (every ``log_every`` iterations and the last).
    """
    ckpt = out_dir / CHECKPOINT
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    use_amp = amp and info.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None
    start, losses = 0, []
    if resume and ckpt.is_file():
        state = load_checkpoint(ckpt, model, optimizer, scaler=scaler, device=info.device)
        start, losses = int(state["iteration"]), list(state["losses"])
        if config_meta is not None and state.get("meta", {}).get("config") not in (None, config_meta):
            raise BanaError(f"{ckpt}: checkpoint was written with a different config; "
                            "start a new run directory or rerun without --resume")
    resumed_from = start
    model.train()
    task = progress.add_task("train", total=iterations, completed=start, status="") if progress else None
    done = start
    for it, batch in zip(range(start, iterations), batches(start)):
        factor = lr_factor(it)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"] * factor
        with torch.autocast(device_type=info.device.type, dtype=amp_dtype, enabled=use_amp):
            loss, extra = step(batch, it)
        if not torch.isfinite(loss):
            raise BanaError(f"loss is {loss.item()} at iteration {it}; lower the learning rate (cls.lr / seg.lr)")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        done = it + 1
        value = float(loss.detach())
        if it % log_every == 0 or done == iterations:
            row = {"iteration": it, "loss": value, "lr": optimizer.param_groups[0]["lr"]}
            row.update({k: float(v) for k, v in extra.items()})
            losses.append(row)
        if task is not None:
            progress.update(task, advance=1, status=f"loss {value:.4f}")
        if done % checkpoint_every == 0 or done == iterations:
            if info.is_main:
                save_checkpoint(ckpt, model, optimizer, iteration=done, losses=losses, scaler=scaler,
                                meta={"config": config_meta} if config_meta is not None else None)
                write_loss_log(out_dir / "loss.csv", losses)
            barrier(info)
    return LoopResult(iteration=done, losses=losses, resumed_from=resumed_from)


def wrap_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def per_rank_batch(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise BanaError(f"batch_size {batch_size} is not divisible by the {world} processes")
    return batch_size // world


__all__ = [
    "DistInfo", "make_loader", "seeded_batches", "init_distributed", "shutdown_distributed", "barrier", "SeededBatchSampler",
    "batch_for_iteration", "sample_seed", "step_lr", "poly_lr", "save_checkpoint", "load_checkpoint",
    "train_loop", "wrap_ddp", "write_loss_log", "LoopResult", "per_rank_batch",
]

"""Device choice and torch.distributed: the process group of a torchrun launch (gloo on CPU,
nccl on CUDA), barriers, DDP wrapping and the per-rank share of a batch."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from banacli.errors import BanaError


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


def max_over_ranks(value: int | None, info: DistInfo) -> int:
    """The largest ``value`` over all ranks (0 for None); ``value`` itself in one process."""
    if not info.enabled or not dist.is_initialized():
        return int(value or 0)
    flag = torch.tensor([int(value or 0)], device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (the model itself when not wrapped)."""
    return model.module if hasattr(model, "module") else model


def wrap_ddp(model: nn.Module, info: DistInfo, *, channels_last: bool = False) -> nn.Module:
    """The model as training runs it: with ``channels_last`` its 4-D weights in channels-last
    (NHWC) memory format, in place (the Parameter objects an optimizer holds stay the same;
    convolutions then run channels-last whatever the input's layout), and in DDP when distributed."""
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if not info.enabled:
        return model

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DDP(model, device_ids=ids, find_unused_parameters=False)


def per_rank_batch(batch_size: int, world: int) -> int:
    if batch_size % world:
        raise BanaError(f"batch_size {batch_size} is not divisible by the {world} processes")
    return batch_size // world


def gather_object(value, info: DistInfo) -> list:
    """``value`` of every rank, in rank order (``[value]`` when not distributed)."""
    if not info.enabled:
        return [value]
    out: list = [None] * info.world
    dist.all_gather_object(out, value)
    return out

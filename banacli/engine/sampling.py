"""Seeded sampling: the sample order and every augmentation seed are pure functions of
(seed, iteration), so a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from banacli.engine.dist import DistInfo
from banacli.errors import BanaError


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
    """``batches(start)`` for :func:`banacli.engine.loop.train_loop`: this rank's batches from iteration ``start`` on."""

    def batches(start: int) -> Iterator[Any]:
        sampler = SeededBatchSampler(len(dataset), batch_size, seed, start, iterations, info.rank, info.world)
        return iter(make_loader(dataset, sampler, collate_fn, num_workers))

    return batches

"""One process per stage and run directory: an ``fcntl`` lock on ``RUN/<section>/.lock``.

Two ``bana gen-labels`` (or two ``train-cls``, ...) on the same run directory would write the
same files and leave a report or manifest that matches neither; the second one stops at once
with one line naming the first one's pid. Different stages of one run may still run side by
side (``train-cls`` while ``predict`` reads another stage's model). The lock is held on an
open file descriptor, so the kernel drops it when the process dies, even by ``kill -9``: a stale
lock file never blocks a later run. Under torchrun only rank 0 takes the lock (the ranks of one
job share the stage on purpose); each gen-labels ``--shard K/N`` takes its own. ``fcntl`` locks are advisory and per host; on NFS they depend
on the server's lock support.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from banacli.errors import BanaError

LOCK_NAME = ".lock"


class RunLockedError(BanaError):
    """Another process holds the stage's lock."""


@contextlib.contextmanager
def stage_lock(stage_dir: Path, stage_name: str, part: str | None = None) -> Iterator[Path]:
    """Hold ``stage_dir/.lock`` for the block; RunLockedError when another process holds it.
    ``part`` (gen-labels ``--shard K/N``) gives each shard its own lock, ``.lock-K-of-N``: the
    shards of one split share the run directory on purpose, two copies of one shard may not."""
    import fcntl

    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = stage_dir / (LOCK_NAME if not part else f"{LOCK_NAME}-{part.replace('/', '-of-')}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
            raise RunLockedError(
                f"{stage_dir}: another bana {stage_name} (pid {other}) is using this run directory; "
                "wait for it to finish or use another --run") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

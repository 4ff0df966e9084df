"""How many CPU cores this process may really use, and how to split them.

``os.cpu_count()`` reports the machine's cores, not the process's share: a container's CPU
quota (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``), a CPU affinity
mask (``taskset``, Slurm) and ``OMP_NUM_THREADS`` all give fewer. torch's default intra-op
thread count follows the machine, and on a busy 2-core box spin-waiting OpenMP threads made
a small training run 7x slower (docs/performance.md). :func:`available_cores` takes the
smallest of these limits; :func:`threads_per_worker` splits it over worker processes so that
workers x threads never exceeds it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cores", "threads_per_worker", "cgroup_cpu_limit"]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when unlimited/unknown."""
    root = Path(root)
    v2 = _read(root / "cpu.max")  # "max 100000" or "150000 100000"
    if v2:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            try:
                return int(quota) / int(period)
            except ValueError:
                return None
        return None
    quota = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    period = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    try:
        if quota and period and int(quota) > 0:
            return int(quota) / int(period)
    except ValueError:
        pass
    return None


def _env_threads() -> int | None:
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    try:
        n = int(value.split(",")[0])
    except ValueError:
        return None
    return n if n > 0 else None


def available_cores(*, cgroup_root: str | os.PathLike = "/sys/fs/cgroup", threads_env: bool = True) -> int:
    """Cores this process may use: min(affinity mask, cgroup quota rounded up, OMP_NUM_THREADS), >= 1.
    ``threads_env=False`` leaves OMP_NUM_THREADS out (it limits threads, not processes)."""
    limits = []
    try:
        limits.append(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        limits.append(os.cpu_count() or 1)
    quota = cgroup_cpu_limit(cgroup_root)
    if quota is not None:
        limits.append(max(1, math.ceil(quota)))
    env = _env_threads() if threads_env else None
    if env is not None:
        limits.append(env)
    return max(1, min(limits))


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Intra-op threads for each of ``workers`` processes so that workers x threads <= cores (>= 1)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, workers))

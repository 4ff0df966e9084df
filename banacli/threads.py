"""torch's intra-op thread count for the ``bana`` host.

torch's default follows the machine's cores, not the process's share of them. On a busy
2-core machine that default made a 30-iteration train-cls take 94.6 s instead of 13.9 s with
one thread (issue 14): OpenMP threads spin-wait for cores other processes hold. The host
therefore sets the count itself before a stage runs:

1. ``BANA_NUM_THREADS=N`` if set (an explicit choice for bana only);
2. else :func:`banacli.cores.available_cores` — the smallest of the CPU affinity mask, the
   cgroup CPU quota and ``OMP_NUM_THREADS`` (so an explicit ``OMP_NUM_THREADS`` is respected).

Stages with worker processes split this number further (``threads_per_worker``).

``OMP_WAIT_POLICY``: unless the user set it, the host sets ``PASSIVE`` before torch is first
imported, so that idle OpenMP threads sleep instead of spinning on cores another process needs
(measured in docs/usage.md). It must be in the environment before the OpenMP runtime starts; in
a process that imported torch earlier (a notebook, the test suite) it has no effect.
"""

from __future__ import annotations

import os
import sys

from banacli.cores import available_cores
from banacli.errors import ConfigError

ENV = "BANA_NUM_THREADS"

__all__ = ["ENV", "prepare_openmp_env", "wanted_threads", "configure_threads"]


def prepare_openmp_env(environ: dict | None = None) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user chose a policy; True when it takes effect
    (torch not imported yet)."""
    env = os.environ if environ is None else environ
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return "torch" not in sys.modules


def wanted_threads(environ: dict | None = None, *, cores: int | None = None) -> tuple[int, str]:
    """(thread count, where it came from) following the rules of the module docstring."""
    env = os.environ if environ is None else environ
    raw = str(env.get(ENV, "")).strip()
    if raw:
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{ENV}={raw!r}: expected a positive whole number of threads")
        return n, ENV
    n = available_cores() if cores is None else cores
    why = "OMP_NUM_THREADS" if str(env.get("OMP_NUM_THREADS", "")).strip() else "cores available to this process"
    return n, why


def configure_threads() -> str:
    """Set torch's intra-op threads; return a line for the stage log."""
    import torch

    n, why = wanted_threads()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    return f"torch threads: {n} (from {why}); OMP_WAIT_POLICY {policy}"

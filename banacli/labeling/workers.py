"""gen-labels' workers: what travels to a worker (:class:`ImageTask`, :class:`WorkerSetup`), what a
worker does with it (:func:`label_image`, :func:`write_outputs`, the one place where a labeler's
result becomes files), the per-process classifier cache, the parent watchdog, the dask client,
and the checks of workers against cores and memory."""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from joblib import Parallel

from banacli.data.palette import load_label_png, save_label_png
from banacli.data.voc import resize_label
from banacli.errors import BanaError, ConfigError, DataError
from banacli.labeling.features import compute_features, load_feature_model
from banacli.labeling.registry import LabelTask
from banacli.viz import panel, save_picture

__all__ = [
    "ImageTask", "WorkerSetup", "available_memory", "dask_client", "forget_classifier", "keep_classifier_here",
    "label_image", "output_is_valid", "worker_died", "worker_memory", "worker_warnings", "write_outputs",
]


@dataclass
class ImageTask:
    """One image's work as it travels to a worker: the whole sample (so per-sample extras,
    e.g. ignore masks or the original size, travel with it) and, when this process computed
    them, its features (C, h, w) float32."""

    sample: Any  # banacli.data.voc.Sample
    viz: bool = False
    feats: np.ndarray | None = None


@dataclass
class WorkerSetup:
    """What every worker needs besides the task (small: no model, no images)."""

    labeler: Any  # banacli.labeling.registry.Labeler
    params: dict[str, Any]
    out_dirs: dict[str, str]
    viz_dir: str
    class_names: list[str]
    threads: int
    classifier: str | None = None  # load a private copy and compute features in the worker
    class_agnostic: bool = False
    weight: np.ndarray | None = None  # classifier weight, when features come with the task
    parent_pid: int | None = None  # exit when this process dies


_WORKER: dict[str, Any] = {}  # per-process cache: the classifier copy, the parent watchdog


def _process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


def _watch_parent(pid: int, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        if not _process_alive(pid):
            os._exit(3)  # the run is gone: do not keep labelling for nobody


def _prepare_worker(setup: WorkerSetup) -> None:
    if torch.get_num_threads() != setup.threads:
        torch.set_num_threads(setup.threads)
    pid = setup.parent_pid
    if pid is not None and pid != os.getpid() and _WORKER.get("watching") != pid:
        threading.Thread(target=_watch_parent, args=(pid,), daemon=True, name="bana-parent-watch").start()
        _WORKER["watching"] = pid


def _worker_classifier(setup: WorkerSetup):
    key = (setup.classifier, setup.class_agnostic, tuple(setup.class_names))
    if _WORKER.get("classifier_key") != key:
        _WORKER.pop("classifier", None)
        model, weight, norm, _ = load_feature_model(setup.classifier, torch.device("cpu"), setup.class_names,
                                                    setup.class_agnostic)
        _WORKER["classifier"] = (model, weight, norm)
        _WORKER["classifier_key"] = key
    return _WORKER["classifier"]


def label_image(task: ImageTask, setup: WorkerSetup) -> str:
    """Worker: label one image and write its outputs. Returns the image id."""
    _prepare_worker(setup)
    s = task.sample
    lt = LabelTask(image_id=s.id, image=s.image, boxes=s.boxes, labels=s.labels, params=setup.params,
                   viz=task.viz, ignore=s.ignore)
    if setup.labeler.needs_classifier:
        if task.feats is not None:
            lt.feats, lt.weight = task.feats, setup.weight
        else:
            model, weight, norm = _worker_classifier(setup)
            lt.feats = compute_features(model, norm, [s.image], torch.device("cpu"))[0]
            lt.weight = weight
    result = setup.labeler.label(lt)
    write_outputs(s, result, setup, viz=task.viz)
    return s.id


def write_outputs(sample, result: dict[str, Any], setup: WorkerSetup, *, viz: bool = False) -> None:
    """Write one sample's label PNGs (and its picture) atomically: the single place where a
    labeler's result becomes files (per-sample post-processing belongs here)."""
    orig_hw = getattr(sample, "orig_hw", None)  # the file's size when data.max_side shrank the image
    for name in setup.labeler.outputs:
        save_label_png(Path(setup.out_dirs[name]) / f"{sample.id}.png", resize_label(result[name], orig_hw))
    if viz:
        pic = panel(sample.image, sample.boxes, sample.labels, maps=result.get("viz"),
                    label_maps={n: result[n] for n in setup.labeler.outputs},
                    gt=getattr(sample, "gt", None), class_names=setup.class_names)
        save_picture(Path(setup.viz_dir) / f"{sample.id}.png", pic)


def output_is_valid(path: Path, size_hw: tuple[int, int], num_classes: int) -> bool:
    """A finished label: a readable PNG of the image's size holding only known ids (or 255)."""
    if not path.is_file():
        return False
    try:
        lab = load_label_png(path)
    except DataError:
        return False
    return lab.shape == size_hw and not np.any((lab >= num_classes) & (lab != 255))


def dask_client(cfg):
    """(client, cluster or None) for labels.backend=dask: the scheduler at labels.scheduler, or a
    local cluster of labels.workers processes."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("labels.backend=dask needs dask.distributed: pip install 'bana[dask]'") from None
    if cfg.scheduler:
        return Client(cfg.scheduler), None
    cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None, processes=True)
    return Client(cluster), cluster


def available_memory(cgroup_root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """Bytes this process can still get: MemAvailable, or less under a cgroup v2 memory limit;
    None where neither can be read (not Linux)."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path(cgroup_root, "memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path(cgroup_root, "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return max(0, min(found)) if found else None


def worker_warnings(workers: int, cores: int, per_worker: int | None, available: int | None) -> list[str]:
    """Warning lines when ``workers`` exceed the cores this process may use, or need more memory
    (``per_worker`` bytes each) than is ``available``. Each worker is a process of its own with
    torch and (labels.features=workers) its own copy of the classifier, so extra workers on busy
    cores only cost memory and turns (measurements in docs/data.md)."""
    lines = []
    if workers > cores:
        lines.append(f"warning: gen-labels: --workers {workers} but this process may use {cores} CPU core(s); "
                     f"the extra workers only take turns on them, each holding its own torch and classifier in "
                     f"memory, which makes the run slower, not faster; --workers {cores} is the fastest")
    if per_worker and available is not None and workers * per_worker > available:
        fit = max(1, available // per_worker)
        lines.append(f"warning: gen-labels: --workers {workers} would need about {workers * per_worker / 1e9:.1f} GB "
                     f"(~{per_worker / 1e9:.2f} GB each) but {available / 1e9:.1f} GB are available; the system may "
                     f"swap or kill workers; use --workers {min(fit, workers)} or a lower data.max_side")
    return lines


def worker_memory(largest_pixels: int, num_classes: int) -> int | None:
    """Bytes one worker is expected to hold: what this process holds now (torch, the dataset and the
    classifier: a worker imports and loads the same) plus one image's working set (the first
    convolutions' activations, ~512 B/px, and DenseCRF's class maps, ~12 B/px per class)."""
    try:
        import resource
    except ImportError:
        return None
    here = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    return int(here + largest_pixels * (512 + 12 * num_classes))


def worker_died(exc: BaseException, *, finished: int, total: int) -> BanaError:
    """One line for joblib's TerminatedWorkerError: a worker killed from outside (SIGKILL is what
    the kernel's OOM killer sends) ends the run, but every label written so far is kept and a
    rerun of the same command labels only the rest."""
    codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(exc))
    how = f" (exit {codes.group(1)})" if codes else ""
    oom = ", probably out of memory" if not codes or "SIGKILL" in codes.group(1) else ""
    return BanaError(f"gen-labels: a worker process died{how}{oom}; {finished} of {total} labels are finished "
                     "and kept; resume with the same command (fewer --workers or a lower data.max_side need "
                     "less memory)")


def keep_classifier_here(classifier: tuple, key: tuple) -> None:
    """labels.workers=1 with loky: joblib runs the one worker in this process, so it reuses the
    classifier this process loaded (``key`` as :func:`_worker_classifier` builds it)."""
    _WORKER["classifier"] = classifier
    _WORKER["classifier_key"] = key


def forget_classifier() -> None:
    """Drop the classifier cached in this process (a later stage of bana demo must not keep it)."""
    _WORKER.pop("classifier", None)
    _WORKER.pop("classifier_key", None)


def lazy_unordered(tasks, n_jobs: int, *, backend: str | None = None):
    """Results of joblib ``delayed`` tasks as they finish, from a pool of ``n_jobs`` workers that
    pulls the next tasks lazily (at most 2 x n_jobs dispatched ahead), so a generator of tasks
    (images, probability maps) is never held whole. ``backend`` None: joblib's current one (loky,
    or dask inside gen-labels' ``parallel_config``). gen-labels, eval, predict and demo share it."""
    return Parallel(n_jobs=n_jobs, backend=backend, return_as="generator_unordered", pre_dispatch="2*n_jobs")(tasks)

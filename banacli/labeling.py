"""How ``bana gen-labels`` spreads its work: where features are computed, worker pools,
streaming, shards and torchrun ranks, and writing each image's outputs.

Where the classifier's features are computed (``labels.features``):

* ``workers`` (the default on a CPU): every worker process loads its own copy of the
  classifier once and computes the features of the images it labels, so features, DenseCRF
  and retrieval all run in parallel. Each worker gets ``threads_per_worker`` intra-op threads
  (workers x threads <= the cores this process may use, :mod:`banacli.cores`).
* ``main`` (the default on a GPU): this process computes features in batches of up to
  :data:`FEATURE_BATCH` same-sized images and streams them to CPU workers for DenseCRF and
  retrieval; joblib asks for the next tasks while workers run, so the GPU never waits on CRF
  and at most ``2 x workers`` tasks are in flight (bounded memory).

Labels do not depend on the worker count or the placement: on a CPU, 1x1 convolutions are
routed through oneDNN whatever the thread count (torch otherwise switches to another kernel
with one thread, which changes the features in the last bits), so every thread count gives
bit-identical features (:func:`thread_invariant`).

One split can be labelled by several processes into one run directory: ``--shard K/N`` (N
independent processes or hosts, no communication; shard K takes images i with i % N == K-1)
and torchrun ranks (rank r of W takes i % W == r within its shard). Outputs are written
atomically per image, so a killed process loses nothing finished and a rerun redoes only
missing images. Under torchrun, rank 0 checks and writes the manifest before any rank starts
and writes the report after all have finished; with shards, the last shard to finish (or a
final run without --shard) writes the report.

Hooks for per-sample extras: :class:`ImageTask` carries the whole ``Sample`` to the worker,
and :func:`write_outputs` is the one place that turns a labeler's result into files.
"""

from __future__ import annotations

import json
import os
import threading
import time
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from banacli.errors import ArtifactError, BanaError, ConfigError

__all__ = [
    "FEATURE_BATCH",
    "ImageTask",
    "WorkerSetup",
    "LabelRun",
    "parse_shard",
    "part_indices",
    "thread_invariant",
    "compute_features",
    "label_image",
    "write_outputs",
    "output_is_valid",
    "label_split",
]

FEATURE_BATCH = 8  # images of one size per forward pass when features are computed in this process
MANIFEST_KEYS = ("method", "split", "params", "classifier_sha256", "dataset", "outputs", "max_side")
# keys a manifest written by an earlier bana may lack: compared only when the old one has them
LATER_MANIFEST_KEYS = ("max_side",)
NOT_LABEL_PARAMS = ("shard", "features")  # how the work is spread; never changes a label


# ----------------------------------------------------------------------------- tasks


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

    labeler: Any  # banacli.labelers.Labeler
    params: dict[str, Any]
    out_dirs: dict[str, str]
    viz_dir: str
    class_names: list[str]
    threads: int
    classifier: str | None = None  # load a private copy and compute features in the worker
    class_agnostic: bool = False
    weight: np.ndarray | None = None  # classifier weight, when features come with the task
    parent_pid: int | None = None  # exit when this process dies


# ----------------------------------------------------------------------------- shards


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) -> (K, N); None -> (1, 1)."""
    if text is None:
        return 1, 1
    k, sep, n = str(text).partition("/")
    try:
        k_i, n_i = int(k), int(n)
    except ValueError:
        k_i = n_i = 0
    if not sep or n_i < 1 or not 1 <= k_i <= n_i:
        raise ConfigError(f"labels.shard {text!r}: expected K/N with 1 <= K <= N, e.g. 2/4")
    return k_i, n_i


def part_indices(n_images: int, shard: tuple[int, int] = (1, 1), rank: int = 0, world: int = 1) -> list[int]:
    """The dataset indices one process labels: shard K/N, then rank r of W within the shard.
    The N x W parts are disjoint and cover every index exactly once."""
    k, n = shard
    parts = n * world
    part = (k - 1) * world + rank
    return list(range(part, n_images, parts))


# ----------------------------------------------------------------------------- features


def _conv1x1_onednn(self, x):
    import torch

    return torch.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride, self.dilation,
                                    self.groups)


def thread_invariant(model):
    """Route the model's 1x1 convolutions through oneDNN on every thread count (CPU only).

    torch runs a 1x1 convolution of a small batch with its own GEMM kernel when it has one
    thread and with oneDNN otherwise; the two differ in the last bits, so features (and, through
    the 0.99 x max threshold, labels) would depend on the worker count. oneDNN's direct kernels
    give the same bits for 1, 2 and 3 threads (checked; docs/performance.md).
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return model
    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (1, 1) and mod.padding_mode == "zeros":
            mod.forward = types.MethodType(_conv1x1_onednn, mod)
    return model


def compute_features(model, normalization: dict, images: list[np.ndarray], device) -> list[np.ndarray]:
    """Features (C, h, w) float32 of each image; images of one size go through one forward pass."""
    import torch

    from banacli.models.normalize import normalize

    out: list[np.ndarray] = []
    with torch.inference_mode():
        start = 0
        while start < len(images):
            stop = start + 1
            while stop < len(images) and images[stop].shape == images[start].shape:
                stop += 1
            x = torch.from_numpy(np.stack(images[start:stop])).permute(0, 3, 1, 2).float().to(device)
            f = model.features(normalize(x, normalization)).float().cpu().numpy()
            out.extend(np.ascontiguousarray(f[i]) for i in range(f.shape[0]))
            start = stop
    return out


def load_feature_model(path: str | Path, device, class_names: list[str] | None, class_agnostic: bool):
    """(model, weight (L+1, C) float32 or None, normalization, sidecar) of the stage-1 classifier."""
    from banacli.runs import load_classifier

    model, meta = load_classifier(Path(path), device=device, class_names=None if class_agnostic else class_names)
    weight = None if class_agnostic else model.classifier.weight.detach().flatten(1).cpu().numpy()
    if getattr(device, "type", str(device)) == "cpu":
        thread_invariant(model)
    return model, weight, dict(model.backbone.normalization), meta


# ----------------------------------------------------------------------------- worker side

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
    import torch

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
        import torch

        model, weight, norm, _ = load_feature_model(setup.classifier, torch.device("cpu"), setup.class_names,
                                                    setup.class_agnostic)
        _WORKER["classifier"] = (model, weight, norm)
        _WORKER["classifier_key"] = key
    return _WORKER["classifier"]


def label_image(task: ImageTask, setup: WorkerSetup) -> str:
    """Worker: label one image and write its outputs. Returns the image id."""
    from banacli.labelers import LabelTask

    _prepare_worker(setup)
    s = task.sample
    lt = LabelTask(image_id=s.id, image=s.image, boxes=s.boxes, labels=s.labels, params=setup.params,
                   viz=task.viz, ignore=s.ignore)
    if setup.labeler.needs_classifier:
        if task.feats is not None:
            lt.feats, lt.weight = task.feats, setup.weight
        else:
            import torch

            model, weight, norm = _worker_classifier(setup)
            lt.feats = compute_features(model, norm, [s.image], torch.device("cpu"))[0]
            lt.weight = weight
    result = setup.labeler.label(lt)
    write_outputs(s, result, setup, viz=task.viz)
    return s.id


def write_outputs(sample, result: dict[str, Any], setup: WorkerSetup, *, viz: bool = False) -> None:
    """Write one sample's label PNGs (and its picture) atomically: the single place where a
    labeler's result becomes files (per-sample post-processing belongs here)."""
    from banacli.data.palette import save_label_png
    from banacli.data.voc import resize_label

    orig_hw = getattr(sample, "orig_hw", None)  # the file's size when data.max_side shrank the image
    for name in setup.labeler.outputs:
        save_label_png(Path(setup.out_dirs[name]) / f"{sample.id}.png", resize_label(result[name], orig_hw))
    if viz:
        from banacli.viz import panel, save_picture

        pic = panel(sample.image, sample.boxes, sample.labels, maps=result.get("viz"),
                    label_maps={n: result[n] for n in setup.labeler.outputs},
                    gt=getattr(sample, "gt", None), class_names=setup.class_names)
        save_picture(Path(setup.viz_dir) / f"{sample.id}.png", pic)


def output_is_valid(path: Path, size_hw: tuple[int, int], num_classes: int) -> bool:
    """A finished label: a readable PNG of the image's size holding only known ids (or 255)."""
    from banacli.data.palette import load_label_png
    from banacli.errors import DataError

    if not path.is_file():
        return False
    try:
        lab = load_label_png(path)
    except DataError:
        return False
    return lab.shape == size_hw and not np.any((lab >= num_classes) & (lab != 255))


# ----------------------------------------------------------------------------- main side


def _check_manifest(path: Path, manifest: dict[str, Any], force: bool) -> bool:
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
    from banacli.engine.checkpoint import config_differences

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
    from banacli.runs import config_digest

    params = {k: v for k, v in config_digest(config, ("labels",))["labels"].items() if k not in NOT_LABEL_PARAMS}
    if params.get("box_convention", "voc") == "voc":
        params.pop("box_convention", None)
    return params


@dataclass
class LabelRun:
    """What :func:`label_split` did: the dataset, the output folders, and whether every image of
    the split (all shards and ranks) now has its outputs (then the caller writes the report;
    ``report`` is True in exactly one process)."""

    ds: Any
    labeler: Any
    out_dirs: dict[str, Path]
    complete: bool
    report: bool
    rank: int = 0
    world: int = 1
    shard: tuple[int, int] = (1, 1)
    labelled: list[str] = field(default_factory=list)


def _feature_tasks(ds, indices: Iterable[int], viz_ids: set[str], model, norm, device) -> Iterator[ImageTask]:
    """Tasks with features computed here, FEATURE_BATCH same-sized images per forward pass."""
    pending: list = []

    def flush():
        feats = compute_features(model, norm, [s.image for s in pending], device)
        for s, f in zip(pending, feats):
            yield ImageTask(sample=s, viz=s.id in viz_ids, feats=f)
        pending.clear()

    for i in indices:
        s = ds.load(i)
        if pending and (len(pending) >= FEATURE_BATCH or s.image.shape != pending[0].image.shape):
            yield from flush()
        pending.append(s)
    if pending:
        yield from flush()


def _dask_client(cfg):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("labels.backend=dask needs dask.distributed: pip install 'bana[dask]'") from None
    if cfg.scheduler:
        return Client(cfg.scheduler), None
    cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None, processes=True)
    return Client(cluster), cluster


def _distributed(ctx):
    """(rank, world, local_world, device) under torchrun, else (0, 1, 1, device)."""
    from banacli.engine.dist import init_distributed, resolve_device

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 1, resolve_device(ctx.device)
    info = init_distributed(ctx.device)
    return info.rank, info.world, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), info.device


def _decide_manifest(path: Path, manifest: dict, force: bool, rank: int, world: int) -> bool:
    """Check and write the manifest once: on rank 0 before any rank starts labelling."""
    from banacli.artifacts import atomic_write_json

    if world == 1:
        keep = _check_manifest(path, manifest, force)
        atomic_write_json(path, manifest)
        return keep
    import torch.distributed as dist

    box: list[Any] = [None]
    if rank == 0:
        try:
            keep = _check_manifest(path, manifest, force)
            atomic_write_json(path, manifest)
            box[0] = ("ok", keep)
        except ArtifactError as exc:
            box[0] = ("error", str(exc))
    dist.broadcast_object_list(box, src=0)
    status, value = box[0]
    if status == "error":
        raise ArtifactError(value)
    return bool(value)


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


def _worker_memory(largest_pixels: int, num_classes: int) -> int | None:
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
    import re

    codes = re.search(r"exit codes of the workers are \{([^}]*)\}", str(exc))
    how = f" (exit {codes.group(1)})" if codes else ""
    oom = ", probably out of memory" if not codes or "SIGKILL" in codes.group(1) else ""
    return BanaError(f"gen-labels: a worker process died{how}{oom}; {finished} of {total} labels are finished "
                     "and kept; resume with the same command (fewer --workers or a lower data.max_side need "
                     "less memory)")


def label_split(ctx) -> LabelRun:
    """Label this process's part of the split (skipping finished images) and say whether the
    whole split is done."""
    import torch
    from joblib import Parallel, delayed, parallel_config
    from joblib.externals.loky.process_executor import TerminatedWorkerError

    from banacli.artifacts import remove_stale_temp_files
    from banacli.cores import available_cores, threads_per_worker
    from banacli.data.voc import check_image
    from banacli.labelers import get_labeler
    from banacli.runs import dataset_digest, open_dataset

    cfg = ctx.section
    labeler = get_labeler(cfg.method)
    shard = parse_shard(cfg.shard)
    if shard[1] > 1 and cfg.force:
        raise ConfigError("--force with --shard: independent shards cannot agree on what to relabel; "
                          "run --force once without --shard, or use another --run directory")
    split = cfg.split or ctx.config.data.train_split
    rank, world, local_world, device = _distributed(ctx)
    ds = open_dataset(ctx, split, with_gt=True)
    num_classes = len(ds.class_names)

    placement = None
    meta = model = weight = norm = None
    cls_path = ctx.run_dir / "cls" / "model.safetensors"
    if labeler.needs_classifier:
        placement = cfg.features if cfg.features != "auto" else ("main" if device.type == "cuda" else "workers")
        # load here in both placements: checks the classifier and class names before any work
        model, weight, norm, meta = load_feature_model(cls_path, device, ds.class_names, cfg.class_agnostic)
        if placement == "workers":
            if cfg.workers == 1 and cfg.backend == "loky":  # joblib runs the one worker in this process
                _WORKER["classifier"] = (model, weight, norm)
                _WORKER["classifier_key"] = (str(cls_path), cfg.class_agnostic, tuple(ds.class_names))
            model = None  # each worker loads its own copy
    out_root = ctx.stage_dir
    out_dirs = {name: out_root / name for name in labeler.outputs}
    params = label_params(ctx.config)
    manifest = {
        "method": labeler.name, "split": split, "params": params,
        "classifier_sha256": meta["weights_sha256"] if meta else None,
        "dataset": dataset_digest(ds), "outputs": list(labeler.outputs),
        "max_side": ctx.config.data.max_side,  # images above it are labelled shrunk: another cap, other labels
    }
    out_root.mkdir(parents=True, exist_ok=True)
    viz_dir = out_root / "viz"
    if rank == 0 and shard[1] == 1:  # temp files of a killed earlier run; never another live shard's.
        # Before the manifest broadcast: under torchrun the other ranks wait for it, so this can
        # never delete a temp file another rank is about to rename into place.
        for d in [*out_dirs.values(), viz_dir]:
            if d.is_dir():
                remove_stale_temp_files(d)
    mine = part_indices(len(ds), shard, rank, world)
    sizes = {}
    for i in mine:  # every image of this part is readable before the manifest or config changes
        w, h = check_image(ds.image_path(ds.ids[i]))
        sizes[i] = (h, w)
    keep = _decide_manifest(out_root / f"{labeler.name}.manifest.json", manifest, cfg.force, rank, world)
    if rank == 0:
        from banacli.outputs import write_skipped

        ctx.save_resolved_config()  # only now that the run is accepted: beside the labels it makes
        write_skipped(out_root, labeler.name, ds.skipped)  # lets train-seg tell skipped from missing
    for d in [*out_dirs.values(), *([viz_dir] if cfg.viz else [])]:
        d.mkdir(parents=True, exist_ok=True)

    if shard[1] > 1:  # a killed earlier run of this shard: only its own images' temp files (the
        # other shards may be writing theirs now; the shard lock keeps this shard's twin out)
        own = {f"{ds.ids[i]}.png" for i in mine}
        for d in [*out_dirs.values(), viz_dir]:
            if d.is_dir():
                remove_stale_temp_files(d, own)
    viz_ids = set(ds.ids[: cfg.viz])

    def needs_work(i: int) -> bool:
        image_id = ds.ids[i]
        if image_id in viz_ids and not (viz_dir / f"{image_id}.png").is_file():
            return True
        return not keep or not all(output_is_valid(d / f"{image_id}.png", sizes[i], num_classes)
                                   for d in out_dirs.values())

    todo = [i for i in mine if needs_work(i)]
    done = len(mine) - len(todo)
    where = ""
    if shard[1] > 1:
        where += f" (shard {shard[0]}/{shard[1]})"
    if world > 1:
        where += f" (rank {rank} of {world})"
    feat_txt = "n/a" if placement is None else (f"{device}, in this process" if placement == "main"
                                                 else "cpu, in each worker")
    ctx.info(f"gen-labels: {labeler.name} on {len(mine)} of {len(ds)} images of split {split!r}{where} "
             f"({done} already finished, {len(todo)} to label) with {cfg.workers} worker(s), features: {feat_txt}")

    cores = available_cores() // max(1, local_world) or 1
    threads = threads_per_worker(cfg.workers, cores)
    use_dask = cfg.backend == "dask"
    if not use_dask and todo and cfg.workers > 1:  # loky: every worker is a process on this machine
        largest = max(sizes[i][0] * sizes[i][1] for i in todo)
        if ctx.config.data.max_side:
            largest = min(largest, ctx.config.data.max_side ** 2)
        per_worker = _worker_memory(largest, num_classes) if placement != "main" else None  # main: no model there
        for line in worker_warnings(cfg.workers, available_cores(threads_env=False) // max(1, local_world) or 1,
                                    per_worker, available_memory()):
            ctx.info(line)
    setup = WorkerSetup(
        labeler=labeler, params=params, out_dirs={k: str(v) for k, v in out_dirs.items()}, viz_dir=str(viz_dir),
        class_names=list(ds.class_names), threads=threads if not use_dask else 1,
        classifier=str(cls_path) if placement == "workers" else None, class_agnostic=cfg.class_agnostic,
        weight=weight if placement == "main" else None,
        parent_pid=None if (use_dask and cfg.scheduler) else os.getpid(),
    )

    def tasks():
        if placement == "main":
            src = _feature_tasks(ds, todo, viz_ids, model, norm, device)
        else:
            src = (ImageTask(sample=s, viz=s.id in viz_ids) for s in (ds.load(i) for i in todo))
        for task in src:
            yield delayed(label_image)(task, setup)

    saved_threads = torch.get_num_threads()
    labelled: list[str] = []
    if device.type == "cpu":
        torch.set_num_threads(threads)  # this process's share; spinning extra threads would stall workers
    client, cluster = _dask_client(cfg) if use_dask else (None, None)
    try:
        with parallel_config(backend="dask" if client is not None else "loky"), ctx.progress() as prog:
            task_id = prog.add_task("gen-labels", total=len(mine), completed=done, status="")
            runner = Parallel(n_jobs=cfg.workers, return_as="generator_unordered", pre_dispatch="2*n_jobs")
            for image_id in runner(tasks()):
                labelled.append(image_id)
                prog.update(task_id, advance=1, status=image_id)
    except TerminatedWorkerError as exc:
        raise worker_died(exc, finished=done + len(labelled), total=len(mine)) from None
    finally:
        _WORKER.pop("classifier", None)  # a later stage in this process (bana demo) must not keep it
        _WORKER.pop("classifier_key", None)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        torch.set_num_threads(saved_threads)  # stages run in one process (bana demo) must not inherit it
    if cfg.viz and rank == 0:
        ctx.info(f"gen-labels: pictures in {viz_dir}")

    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        complete = True
        report = rank == 0
    elif shard[1] > 1:
        missing = [i for i in ds.ids if not all((d / f"{i}.png").is_file() for d in out_dirs.values())]
        complete = not missing
        report = complete
        if missing:
            ctx.info(f"gen-labels: shard {shard[0]}/{shard[1]} done; {len(missing)} images of other shards still "
                     "missing; the last shard to finish (or bana gen-labels without --shard) writes the report")
    else:
        complete = report = True
    return LabelRun(ds=ds, labeler=labeler, out_dirs=out_dirs, complete=complete, report=report, rank=rank,
                    world=world, shard=shard, labelled=labelled)

"""gen-labels from start to finish for this process: its part of the split (``--shard K/N``,
torchrun ranks), the manifest decision, the images still to label, the worker pool (joblib loky
or dask) and whether the whole split is done. See :mod:`banacli.labeling` for the placement of
the features and why labels do not depend on it."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from joblib import delayed, parallel_config
from joblib.externals.loky.process_executor import TerminatedWorkerError

from banacli.artifacts import remove_stale_temp_files
from banacli.cores import available_cores, threads_per_worker
from banacli.data.voc import check_image
from banacli.engine.dist import init_distributed, resolve_device
from banacli.errors import ConfigError
from banacli.labeling.features import FEATURE_BATCH, compute_features, load_feature_model
from banacli.labeling.manifest import decide_manifest, label_params
from banacli.labeling.registry import get_labeler
from banacli.labeling.workers import (
    ImageTask, WorkerSetup, available_memory, dask_client, forget_classifier, keep_classifier_here, label_image,
    lazy_unordered, output_is_valid, worker_died, worker_memory, worker_warnings,
)
from banacli.outputs import write_skipped
from banacli.runs import RunDir, dataset_digest, open_dataset

__all__ = ["LabelRun", "label_split", "parse_shard", "part_indices"]


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


def _distributed(ctx):
    """(rank, world, local_world, device) under torchrun, else (0, 1, 1, device)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, 1, resolve_device(ctx.device)
    info = init_distributed(ctx.device)
    return info.rank, info.world, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), info.device


def _warn_about_workers(ctx, sizes_hw: list[tuple[int, int]], num_classes: int, placement: str | None,
                        local_world: int) -> None:
    """The lines of :func:`~banacli.labeling.workers.worker_warnings` for a loky pool of
    labels.workers processes labelling images of these sizes (the largest, capped by max_side)."""
    cfg = ctx.section
    largest = max(h * w for h, w in sizes_hw)
    if ctx.config.data.max_side:
        largest = min(largest, ctx.config.data.max_side ** 2)
    per_worker = worker_memory(largest, num_classes) if placement != "main" else None  # main: no model there
    for line in worker_warnings(cfg.workers, available_cores(threads_env=False) // max(1, local_world) or 1,
                                per_worker, available_memory()):
        ctx.info(line)


def _split_done(ctx, ds, out_dirs: dict[str, Path], shard: tuple[int, int], rank: int, world: int) -> tuple[bool, bool]:
    """(every image of the split has its outputs, this process writes the report): under torchrun
    after a barrier, rank 0 reports; with shards, the shard that finds nothing missing reports."""
    if world > 1:
        dist.barrier()
        return True, rank == 0
    if shard[1] > 1:
        missing = [i for i in ds.ids if not all((d / f"{i}.png").is_file() for d in out_dirs.values())]
        if missing:
            ctx.info(f"gen-labels: shard {shard[0]}/{shard[1]} done; {len(missing)} images of other shards still "
                     "missing; the last shard to finish (or bana gen-labels without --shard) writes the report")
        return not missing, not missing
    return True, True


@dataclass
class _Classifier:
    """Where the features of a labeler that needs the stage-1 classifier are computed:
    ``placement`` "main" (here, ``model`` loaded) or "workers" (each worker loads ``path``);
    None for a labeler without one (Box, GrabCut)."""

    path: Path
    placement: str | None = None
    model: Any = None
    weight: Any = None
    norm: Any = None
    meta: dict | None = None


def _checked_request(cfg) -> tuple[Any, tuple[int, int]]:
    """(labeler, shard) of labels.method / --shard; refuses --force with --shard."""
    labeler = get_labeler(cfg.method)
    shard = parse_shard(cfg.shard)
    if shard[1] > 1 and cfg.force:
        raise ConfigError("--force with --shard: independent shards cannot agree on what to relabel; "
                          "run --force once without --shard, or use another --run directory")
    return labeler, shard


def _load_classifier(cfg, labeler, ds, device, path: Path) -> _Classifier:
    """Load the classifier here in both placements: checks it and the class names before any work."""
    clf = _Classifier(path=path)
    if not labeler.needs_classifier:
        return clf
    clf.placement = cfg.features if cfg.features != "auto" else ("main" if device.type == "cuda" else "workers")
    clf.model, clf.weight, clf.norm, clf.meta = load_feature_model(path, device, ds.class_names, cfg.class_agnostic)
    if clf.placement == "workers":
        if cfg.workers == 1 and cfg.backend == "loky":  # joblib runs the one worker in this process
            keep_classifier_here((clf.model, clf.weight, clf.norm), (str(path), cfg.class_agnostic, tuple(ds.class_names)))
        clf.model = None  # each worker loads its own copy
    return clf


def _manifest(ctx, labeler, split: str, params: dict, clf: _Classifier, ds) -> dict[str, Any]:
    """What makes these labels: RUN/labels/<method>.manifest.json."""
    return {
        "method": labeler.name, "split": split, "params": params,
        "classifier_sha256": clf.meta["weights_sha256"] if clf.meta else None,
        "dataset": dataset_digest(ds), "outputs": list(labeler.outputs),
        "max_side": ctx.config.data.max_side,  # images above it are labelled shrunk: another cap, other labels
    }


def _remove_stale_temps(dirs: Iterable[Path], only: set[str] | None = None) -> None:
    """Temp files a killed earlier run left in these folders (only those of ``only``'s names)."""
    for d in dirs:
        if not d.is_dir():
            continue
        if only is None:
            remove_stale_temp_files(d)
        else:
            remove_stale_temp_files(d, only)


def _image_sizes(ds, indices: list[int]) -> dict[int, tuple[int, int]]:
    """{index: (h, w)}; every image of this part is readable before the manifest or config changes."""
    sizes = {}
    for i in indices:
        w, h = check_image(ds.image_path(ds.ids[i]))
        sizes[i] = (h, w)
    return sizes


def _accept_run(ctx, run: RunDir, labeler, manifest: dict, ds, out_dirs: dict[str, Path], rank: int,
                world: int) -> bool:
    """Decide on the manifest (True: finished labels stay valid), then record the accepted run
    (resolved config, skipped images) and make the output folders."""
    cfg = ctx.section
    keep = decide_manifest(run.manifest(labeler.name), manifest, cfg.force, rank, world)
    if rank == 0:
        ctx.save_resolved_config()  # only now that the run is accepted: beside the labels it makes
        write_skipped(run.labels, labeler.name, ds.skipped)  # lets train-seg tell skipped from missing
    for d in [*out_dirs.values(), *([run.label_viz] if cfg.viz else [])]:
        d.mkdir(parents=True, exist_ok=True)
    return keep


def _images_to_label(ds, mine: list[int], sizes, keep: bool, out_dirs: dict[str, Path], viz_dir: Path,
                     viz_ids: set[str]) -> list[int]:
    """The indices whose outputs (or wanted picture) are missing or invalid; all of them without ``keep``."""
    num_classes = len(ds.class_names)

    def needs_work(i: int) -> bool:
        image_id = ds.ids[i]
        if image_id in viz_ids and not (viz_dir / f"{image_id}.png").is_file():
            return True
        return not keep or not all(output_is_valid(d / f"{image_id}.png", sizes[i], num_classes)
                                   for d in out_dirs.values())

    return [i for i in mine if needs_work(i)]


def _announce(ctx, labeler, split: str, ds, mine: list[int], todo: list[int], shard, rank: int, world: int,
              placement: str | None, device) -> None:
    cfg = ctx.section
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


def _worker_setup(ctx, labeler, params: dict, out_dirs: dict[str, Path], viz_dir: Path, ds, clf: _Classifier,
                  todo_sizes: list[tuple[int, int]], local_world: int) -> tuple[WorkerSetup, int]:
    """(what every worker needs, torch threads of this process): this process's share of the cores;
    with loky and several workers, the warnings about cores and memory first."""
    cfg = ctx.section
    cores = available_cores() // max(1, local_world) or 1
    threads = threads_per_worker(cfg.workers, cores)
    use_dask = cfg.backend == "dask"
    if not use_dask and todo_sizes and cfg.workers > 1:  # loky: every worker is a process on this machine
        _warn_about_workers(ctx, todo_sizes, len(ds.class_names), clf.placement, local_world)
    setup = WorkerSetup(
        labeler=labeler, params=params, out_dirs={k: str(v) for k, v in out_dirs.items()}, viz_dir=str(viz_dir),
        class_names=list(ds.class_names), threads=threads if not use_dask else 1,
        classifier=str(clf.path) if clf.placement == "workers" else None, class_agnostic=cfg.class_agnostic,
        weight=clf.weight if clf.placement == "main" else None,
        parent_pid=None if (use_dask and cfg.scheduler) else os.getpid(),
    )
    return setup, threads


def _label_tasks(ds, todo: list[int], viz_ids: set[str], clf: _Classifier, device, setup: WorkerSetup):
    """joblib tasks, one per image, features computed here first with placement "main"."""
    if clf.placement == "main":
        src = _feature_tasks(ds, todo, viz_ids, clf.model, clf.norm, device)
    else:
        src = (ImageTask(sample=s, viz=s.id in viz_ids) for s in (ds.load(i) for i in todo))
    for task in src:
        yield delayed(label_image)(task, setup)


def _run_pool(ctx, tasks, device, threads: int, done: int, total: int) -> list[str]:
    """Label with the worker pool (loky, or dask with labels.backend=dask); the ids labelled."""
    cfg = ctx.section
    saved_threads = torch.get_num_threads()
    labelled: list[str] = []
    if device.type == "cpu":
        torch.set_num_threads(threads)  # this process's share; spinning extra threads would stall workers
    client, cluster = dask_client(cfg) if cfg.backend == "dask" else (None, None)
    try:
        with parallel_config(backend="dask" if client is not None else "loky"), ctx.progress() as prog:
            task_id = prog.add_task("gen-labels", total=total, completed=done, status="")
            for image_id in lazy_unordered(tasks, cfg.workers):
                labelled.append(image_id)
                prog.update(task_id, advance=1, status=image_id)
    except TerminatedWorkerError as exc:
        raise worker_died(exc, finished=done + len(labelled), total=total) from None
    finally:
        forget_classifier()  # a later stage in this process (bana demo) must not keep it
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        torch.set_num_threads(saved_threads)  # stages run in one process (bana demo) must not inherit it
    return labelled


def label_split(ctx) -> LabelRun:
    """Label this process's part of the split (skipping finished images) and say whether the
    whole split is done."""
    cfg = ctx.section
    labeler, shard = _checked_request(cfg)
    split = cfg.split or ctx.config.data.train_split
    rank, world, local_world, device = _distributed(ctx)
    ds = open_dataset(ctx, split, with_gt=True)
    run = RunDir(ctx.run_dir)
    clf = _load_classifier(cfg, labeler, ds, device, run.model("cls"))
    out_dirs = {name: run.label_set(name) for name in labeler.outputs}
    params = label_params(ctx.config)
    manifest = _manifest(ctx, labeler, split, params, clf, ds)
    run.labels.mkdir(parents=True, exist_ok=True)  # ctx.stage_dir: labels is gen-labels' section
    viz_dir = run.label_viz
    if rank == 0 and shard[1] == 1:  # temp files of a killed earlier run; never another live shard's.
        # Before the manifest broadcast: under torchrun the other ranks wait for it, so this can
        # never delete a temp file another rank is about to rename into place.
        _remove_stale_temps([*out_dirs.values(), viz_dir])
    mine = part_indices(len(ds), shard, rank, world)
    sizes = _image_sizes(ds, mine)
    keep = _accept_run(ctx, run, labeler, manifest, ds, out_dirs, rank, world)
    if shard[1] > 1:  # a killed earlier run of this shard: only its own images' temp files (the
        # other shards may be writing theirs now; the shard lock keeps this shard's twin out)
        _remove_stale_temps([*out_dirs.values(), viz_dir], {f"{ds.ids[i]}.png" for i in mine})
    viz_ids = set(ds.ids[: cfg.viz])
    todo = _images_to_label(ds, mine, sizes, keep, out_dirs, viz_dir, viz_ids)
    _announce(ctx, labeler, split, ds, mine, todo, shard, rank, world, clf.placement, device)
    setup, threads = _worker_setup(ctx, labeler, params, out_dirs, viz_dir, ds, clf, [sizes[i] for i in todo],
                                   local_world)
    labelled = _run_pool(ctx, _label_tasks(ds, todo, viz_ids, clf, device, setup), device, threads,
                         len(mine) - len(todo), len(mine))
    if cfg.viz and rank == 0:
        ctx.info(f"gen-labels: pictures in {viz_dir}")
    complete, report = _split_done(ctx, ds, out_dirs, shard, rank, world)
    return LabelRun(ds=ds, labeler=labeler, out_dirs=out_dirs, complete=complete, report=report, rank=rank,
                    world=world, shard=shard, labelled=labelled)

"""``bana gen-labels``: pseudo labels for every training image (SPEC stage 2).

Where each step runs: the classifier's features are computed in this (main) process on the
chosen device, one image at a time, as the worker pool asks for work; everything after that —
the exact full-resolution unaries from low-resolution maps, DenseCRF (pydensecrf, CPU only),
retrieval, and writing the PNGs — runs in joblib worker processes. On a GPU the GPU computes the
next images' features while the CPU workers run DenseCRF, which is the expensive step (SPEC:
0.1 s GPU vs 0.4 s CRF per VOC image). Outputs are written atomically by the workers, so a
killed run keeps every finished image and a rerun only labels the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from banacli.config import LabelsConfig
from banacli.stage import Stage, StageContext

MANIFEST_KEYS = ("method", "split", "params", "classifier_sha256", "dataset", "outputs")


def output_is_valid(path: Path, size_hw: tuple[int, int], num_classes: int) -> bool:
    """A finished label: a readable PNG of the image's size holding only known ids (or 255)."""
    import numpy as np

    from banacli.data.palette import load_label_png
    from banacli.errors import DataError

    if not path.is_file():
        return False
    try:
        lab = load_label_png(path)
    except DataError:
        return False
    return lab.shape == size_hw and not np.any((lab >= num_classes) & (lab != 255))


def label_one(labeler, task, out_dirs: dict[str, str], viz_path: str | None, threads: int) -> str:
    """Worker: label one image and write its PNGs (and picture) atomically. Returns the id."""
    import torch

    from banacli.data.palette import save_label_png

    torch.set_num_threads(threads)
    result = labeler.label(task)
    for name in labeler.outputs:
        save_label_png(Path(out_dirs[name]) / f"{task.image_id}.png", result[name])
    if viz_path:
        from banacli.viz import panel, save_picture

        pic = panel(task.image, task.boxes, task.labels, maps=result.get("viz"),
                    label_maps={n: result[n] for n in labeler.outputs})
        save_picture(viz_path, pic)
    return task.image_id


def _check_manifest(path: Path, manifest: dict[str, Any], force: bool) -> bool:
    """True when existing outputs may be kept; raises when they were made differently."""
    from banacli.errors import ArtifactError

    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        old = {}
    differs = [k for k in MANIFEST_KEYS if old.get(k) != manifest.get(k)]
    if not differs:
        return True
    if force:
        return False
    raise ArtifactError(f"{path}: the labels there were made with a different {', '.join(differs)}; "
                        "use --force to relabel everything, or another --run directory")


def run(ctx: StageContext) -> None:
    import os

    import torch
    from joblib import Parallel, delayed, parallel_config

    from banacli.artifacts import atomic_write_json, remove_stale_temp_files
    from banacli.data.voc import check_image
    from banacli.labelers import LabelTask, get_labeler
    from banacli.models.normalize import normalize
    from banacli.runs import config_digest, dataset_digest, load_classifier, open_dataset
    from banacli.train import resolve_device

    cfg: LabelsConfig = ctx.section
    labeler = get_labeler(cfg.method)
    split = cfg.split or ctx.config.data.train_split
    ds = open_dataset(ctx, split, with_gt=True)
    num_classes = len(ds.class_names)
    device = resolve_device(ctx.device)

    model = meta = None
    if labeler.needs_classifier:
        cls_path = ctx.run_dir / "cls" / "model.safetensors"
        model, meta = load_classifier(cls_path, device=device,
                                      class_names=None if cfg.class_agnostic else ds.class_names)
        weight = None if cfg.class_agnostic else model.classifier.weight.detach().flatten(1).cpu().numpy()
        norm = model.backbone.normalization

    out_root = ctx.stage_dir
    out_dirs = {name: out_root / name for name in labeler.outputs}
    params = config_digest(ctx.config, ("labels",))["labels"]
    manifest = {
        "method": labeler.name, "split": split, "params": params,
        "classifier_sha256": meta["weights_sha256"] if meta else None,
        "dataset": dataset_digest(ds), "outputs": list(labeler.outputs),
    }
    manifest_path = out_root / f"{labeler.name}.manifest.json"
    keep = _check_manifest(manifest_path, manifest, cfg.force)
    atomic_write_json(manifest_path, manifest)
    for d in out_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(d)  # left by a killed earlier run
    if (out_root / "viz").is_dir():
        remove_stale_temp_files(out_root / "viz")

    sizes = {}
    for image_id in ds.ids:
        w, h = check_image(ds.image_path(image_id))
        sizes[image_id] = (h, w)
    viz_ids = set(ds.ids[: cfg.viz])
    viz_dir = out_root / "viz"

    def needs_work(image_id: str) -> bool:
        if image_id in viz_ids and not (viz_dir / f"{image_id}.png").is_file():
            return True
        return not keep or not all(output_is_valid(d / f"{image_id}.png", sizes[image_id], num_classes)
                                   for d in out_dirs.values())

    todo = [i for i, image_id in enumerate(ds.ids) if needs_work(image_id)]
    done = len(ds) - len(todo)
    ctx.info(f"gen-labels: {labeler.name} on {len(ds)} images of split {split!r} "
             f"({done} already finished, {len(todo)} to label) with {cfg.workers} worker(s), "
             f"features on {device if model is not None else 'n/a'}")
    threads = max(1, (os.cpu_count() or 1) // cfg.workers)
    saved_threads = torch.get_num_threads()
    if device.type == "cpu" and cfg.workers > 1:
        torch.set_num_threads(threads)  # the workers need the cores; spinning threads would stall them

    def tasks():
        for i in todo:
            s = ds.load(i)
            task = LabelTask(image_id=s.id, image=s.image, boxes=s.boxes, labels=s.labels, params=params,
                             viz=s.id in viz_ids, ignore=s.ignore)
            if model is not None:
                with torch.no_grad():
                    x = torch.from_numpy(s.image).permute(2, 0, 1)[None].float().to(device)
                    task.feats = model.features(normalize(x, norm))[0].float().cpu().numpy()
                task.weight = weight
            viz_path = str(viz_dir / f"{s.id}.png") if task.viz else None
            yield delayed(label_one)(labeler, task, {k: str(v) for k, v in out_dirs.items()}, viz_path, threads)

    client, cluster = _dask_client(cfg) if cfg.backend == "dask" else (None, None)
    try:
        with parallel_config(backend="dask" if client is not None else "loky"), ctx.progress() as prog:
            task_id = prog.add_task("gen-labels", total=len(ds), completed=done, status="")
            runner = Parallel(n_jobs=cfg.workers, return_as="generator_unordered")
            for image_id in runner(tasks()):
                prog.update(task_id, advance=1, status=image_id)
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        torch.set_num_threads(saved_threads)  # stages run in one process (bana demo) must not inherit it
    if cfg.viz:
        ctx.info(f"gen-labels: pictures in {viz_dir}")

    from banacli.pseudo_instances import write_instance_results  # hook: RUN/labels/instances_<set>.json
    write_instance_results(ctx, ds, out_dirs)

    report = quality_report(ds, out_dirs, num_classes)
    if report is not None:
        atomic_write_json(out_root / f"{labeler.name}.report.json", report)
        print_report(ctx, report)


def _dask_client(cfg: LabelsConfig):
    from banacli.errors import ConfigError

    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("labels.backend=dask needs dask.distributed: pip install 'bana[dask]'") from None
    if cfg.scheduler:
        return Client(cfg.scheduler), None
    cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None, processes=True)
    return Client(cluster), cluster


def quality_report(ds, out_dirs: dict[str, Path], num_classes: int) -> dict[str, Any] | None:
    """mIoU of each label set and of box-as-mask against the ground truth, the fraction of
    pixels where the first two sets differ (Ycrf != Yret), and per-class filling rates
    (paper Table 1 and Fig. 4b). None when no image of the split has ground truth."""
    import numpy as np

    from banacli.data.palette import load_label_png
    from banacli.ops.labelers import box_labeler
    from banacli.ops.metrics import ConfusionMeter
    from banacli.ops.pseudo import box_extents

    names = list(out_dirs)
    meters = {n: ConfusionMeter(num_classes, class_names=ds.class_names) for n in [*names, "Box"]}
    fill_sum = {n: np.zeros(num_classes) for n in ["GT", *names]}
    fill_cnt = np.zeros(num_classes)
    differ = total = 0
    n_gt = 0
    for i in range(len(ds)):
        s = ds.load(i)
        labs = {n: load_label_png(d / f"{s.id}.png") for n, d in out_dirs.items()}
        if len(names) >= 2:
            differ += int((labs[names[0]] != labs[names[1]]).sum())
            total += labs[names[0]].size
        if s.gt is None:
            continue
        n_gt += 1
        for n in names:
            meters[n].update(labs[n], s.gt)
        meters["Box"].update(box_labeler(s.image, s.boxes, s.labels), s.gt)
        ext = box_extents(s.boxes, *s.gt.shape)
        for (x0, y0, x1, y1), c in zip(ext, s.labels):
            area = max(1, (x1 - x0) * (y1 - y0))
            fill_cnt[c] += 1
            fill_sum["GT"][c] += (s.gt[y0:y1, x0:x1] == c).sum() / area
            for n in names:
                fill_sum[n][c] += (labs[n][y0:y1, x0:x1] == c).sum() / area
    if n_gt == 0:
        return None
    report: dict[str, Any] = {"images": len(ds), "images_with_gt": n_gt, "class_names": ds.class_names}
    report["miou"] = {n: m.scores()["miou"] for n, m in meters.items()}
    report["per_class_iou"] = {n: m.scores()["iou"] for n, m in meters.items()}
    if total:
        report[f"fraction_{names[0]}_ne_{names[1]}"] = differ / total
    with np.errstate(invalid="ignore", divide="ignore"):
        report["filling_rate"] = {n: (v / fill_cnt).tolist() for n, v in fill_sum.items()}
    return report


def print_report(ctx: StageContext, report: dict[str, Any]) -> None:
    from rich.table import Table

    ctx.logger.info("quality report: %s", json.dumps(report["miou"]))
    if ctx.quiet:
        return
    t = Table(title=f"pseudo labels vs ground truth ({report['images_with_gt']} images)")
    t.add_column("labels")
    t.add_column("mIoU %", justify="right")
    for name, miou in report["miou"].items():
        t.add_row(name, f"{100 * miou:.1f}")
    ctx.console.print(t)
    for key, value in report.items():
        if key.startswith("fraction_"):
            ctx.console.print(f"{key.removeprefix('fraction_').replace('_ne_', ' != ')}: {100 * value:.1f}% of pixels")
    ft = Table(title="filling rate per class (fraction of box pixels labelled as the box's class)")
    ft.add_column("class")
    for n in report["filling_rate"]:
        ft.add_column(n, justify="right")
    for c in range(1, len(report["class_names"])):
        vals = [report["filling_rate"][n][c] for n in report["filling_rate"]]
        if all(v != v for v in vals):  # NaN: no box of this class
            continue
        ft.add_row(report["class_names"][c], *(f"{100 * v:.1f}" for v in vals))
    ctx.console.print(ft)


stage = Stage(
    name="gen-labels",
    help="Generate pseudo labels Ycrf and Yret (or a baseline labeler's) for the training split (writes RUN/labels/).",
    run=run,
    section="labels",
    config=LabelsConfig,
)

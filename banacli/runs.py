"""Shared helpers of the stages: the run directory's layout and its locks (:class:`RunDir`), opening
the dataset, hashing inputs, seeded augmentation, rebuilding saved models.

One process per stage and run directory: an ``fcntl`` lock on ``RUN/<section>/.lock``
(:meth:`RunDir.lock`). Two ``bana gen-labels`` (or two ``train-cls``, ...) on the same run directory
would write the same files and leave a report or manifest that matches neither; the second one stops
at once with one line naming the first one's pid. Different stages of one run may still run side by
side (``train-cls`` while ``predict`` reads another stage's model). The lock is held on an open file
descriptor, so the kernel drops it when the process dies, even by ``kill -9``: a stale lock file
never blocks a later run. Under torchrun only rank 0 takes the lock (the ranks of one job share the
stage on purpose); each gen-labels ``--shard K/N`` takes its own. ``fcntl`` locks are advisory and
per host; on NFS they depend on the server's lock support.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from banacli.data.voc import VOCDataset, annotation_path, find_image, read_annotation_bytes, split_path
from banacli.artifacts import load_model, read_sidecar
from banacli.data.coco import open_data
from banacli.errors import ArtifactError, BanaError


def open_dataset(ctx, split: str | None = None, *, with_gt: bool = True) -> VOCDataset:
    """The dataset of ``--data`` for ``split`` (default data.train_split), honouring data.on_error
    and data.format (a VOCDataset or a COCODataset: same interface)."""

    data = ctx.config.data
    ds = open_data(ctx.data_root, split or data.train_split, data, with_gt=with_gt, max_side=data.max_side,
                   notify=ctx.info)
    for note in ds.notes:
        ctx.info(note)
    if ds.skipped:
        ctx.info(ds.summary())
    return ds


def dataset_digest(ds: VOCDataset) -> str:
    """sha256 over the split file and the annotations of the images used: the input's identity."""
    if hasattr(ds, "digest"):
        return ds.digest()
    h = hashlib.sha256()
    h.update(split_path(ds.root, ds.split).read_bytes())
    for image_id in ds.ids:
        h.update(image_id.encode())
        h.update(read_annotation_bytes(annotation_path(ds.root, image_id)))
    return h.hexdigest()


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU generator, numpy and random seeded, restoring their states
    afterwards. Only the CPU generator: ``torch.manual_seed`` would also reseed every GPU's
    generator (which ``fork_rng(devices=[])`` does not restore, so each sample's seed leaked into
    the training run's CUDA random draws) and costs ~0.26 ms a call on a machine without one,
    where it formats a stack trace for each lazy device seeding (about 2 ms of a ~60 ms demo
    train-cls step, 8 samples a step)."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


RUNTIME_KEYS = {"resume", "checkpoint_every", "log_every", "loader_workers", "workers", "viz", "force",
                "backend", "scheduler", "val_every", "tensorboard"}


def config_digest(cfg: Any, sections: tuple[str, ...]) -> dict[str, Any]:
    """The parts of the resolved config that determine a stage's result (for resume checks):
    the named sections without keys that only affect how the work runs (resume, workers, ...).
    ``data.root`` is the resolved path, so ``--data D`` and ``--data /abs/path/D`` are one dataset."""
    dumped = cfg.model_dump(mode="json")
    return resolve_data_root({s: {k: v for k, v in dumped[s].items() if k not in RUNTIME_KEYS} for s in sections})


def resolve_data_root(digest: dict[str, Any]) -> dict[str, Any]:
    """``digest`` with ``data.root`` made absolute and free of links and ``..`` (a copy; unchanged
    without one). Also applied to digests saved before bana resolved the root, which hold it as typed."""
    root = (digest.get("data") or {}).get("root") if isinstance(digest, dict) else None
    if not isinstance(root, str):
        return digest
    return {**digest, "data": {**digest["data"], "root": str(Path(root).expanduser().resolve())}}


MODEL_FILE = "model.safetensors"
BEST_MODEL_FILE = "best.safetensors"
MANIFEST_SUFFIX = ".manifest.json"
REPORT_SUFFIX = ".report.json"
LOCK_NAME = ".lock"


class RunLockedError(BanaError):
    """Another process holds the stage's lock."""


class RunDir:
    """The layout of a run directory, in one place:

    - ``RUN/<section>/``: what the stage owning a config section writes (``cls``, ``labels``, ``seg``,
      ``inst``, ``eval``, ``export``, ...), with its ``model.safetensors`` for the training stages
      (and train-seg's ``best.safetensors`` with validation);
    - ``RUN/labels/<set>/ID.png``: one label set of gen-labels (``Ycrf``, ``Yret``, ``Box``, ...);
    - ``RUN/labels/<method>.manifest.json``: what made the label sets of one labeler;
      ``RUN/labels/<method>.report.json`` its scores;
    - ``RUN/<section>/.lock``: held by the stage writing the section (``.lock-K-of-N`` per
      gen-labels ``--shard K/N``), see :meth:`lock`.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def stage(self, section: str) -> Path:
        return self.root / section

    def model(self, section: str) -> Path:
        return self.stage(section) / MODEL_FILE

    def best_model(self, section: str) -> Path:
        return self.stage(section) / BEST_MODEL_FILE

    @property
    def labels(self) -> Path:
        return self.stage("labels")

    def label_set(self, name: str) -> Path:
        return self.labels / name

    def manifest(self, method: str) -> Path:
        return self.labels / f"{method}{MANIFEST_SUFFIX}"

    @property
    def label_viz(self) -> Path:
        """gen-labels' pictures (``labels.viz``)."""
        return self.labels / "viz"

    def label_report(self, method: str) -> Path:
        return self.labels / f"{method}{REPORT_SUFFIX}"

    def manifest_methods(self) -> list[str]:
        """The methods that have a manifest in this run, sorted."""
        return sorted(p.name.removesuffix(MANIFEST_SUFFIX) for p in self.labels.glob(f"*{MANIFEST_SUFFIX}"))

    def lock_path(self, section: str, part: str | None = None) -> Path:
        """``RUN/<section>/.lock``; ``part`` (gen-labels ``--shard K/N``) gives ``.lock-K-of-N``."""
        return self.stage(section) / (LOCK_NAME if not part else f"{LOCK_NAME}-{part.replace('/', '-of-')}")

    @contextlib.contextmanager
    def lock(self, section: str, stage_name: str, part: str | None = None) -> Iterator[Path]:
        """Hold :meth:`lock_path` for the block; RunLockedError when another process holds it.
        ``part`` (gen-labels ``--shard K/N``) gives each shard its own lock: the shards of one
        split share the run directory on purpose, two copies of one shard may not."""
        import fcntl  # POSIX-only

        stage_dir = self.stage(section)
        stage_dir.mkdir(parents=True, exist_ok=True)
        path = self.lock_path(section, part)
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


def model_path(run_dir: Path, section: str) -> Path:
    return RunDir(run_dir).model(section)


def seg_arch(model_name: str) -> str:
    """The sidecar ``arch`` of a segmentation model: ``segnet/<largefov|aspp|tiny>``."""
    return f"segnet/{model_name}"


def cls_arch(backbone: str) -> str:
    """The sidecar ``arch`` of a stage-1 classifier: ``bap-classifier/<backbone>``."""
    return f"bap-classifier/{backbone}"


def load_rebuilt(path: Path, kind: str, names: tuple[str, ...], build, *, device, class_names, missing: str):
    """Read a sidecar, check its ``arch`` is ``kind/NAME`` with NAME in ``names``, rebuild the
    model with ``build(NAME, meta)``, load and verify the weights; (model in eval mode, sidecar)."""

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: {missing}")
    meta = read_sidecar(path)
    got_kind, _, name = str(meta.get("arch", "")).partition("/")
    if got_kind != kind or name not in names:
        raise ArtifactError(f"{path}: not a {kind} model (arch {meta.get('arch')!r})")
    tensors, meta = load_model(path, arch=meta["arch"], class_names=class_names)
    model = build(name, meta)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit {meta['arch']} ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), meta


def load_classifier(path: Path, *, device: str | torch.device = "cpu", class_names: list[str] | None = None):
    """Rebuild the stage-1 classifier from RUN/cls/model.safetensors. Returns (model in eval mode, sidecar)."""
    from banacli.models.backbones import BACKBONES, build_backbone  # loads torch
    from banacli.models.classifier import BAPClassifier  # loads torch

    def build(backbone: str, meta: dict):
        model = BAPClassifier(build_backbone(backbone, weights=None), meta["num_classes"])
        model.backbone.normalization = dict(meta["normalization"])
        return model

    return load_rebuilt(path, "bap-classifier", BACKBONES, build, device=device, class_names=class_names,
                         missing="classifier not found (run bana train-cls first)")


def load_segmenter(path: Path, *, device: str | torch.device = "cpu", class_names: list[str] | None = None):
    """Rebuild a trained segmenter from RUN/seg/model.safetensors and its sidecar (``arch``
    ``segnet/NAME``, ``tau``, class names, normalisation). Returns (model in eval mode, sidecar)."""
    from banacli.models.deeplab import SEG_MODELS, build_segmenter  # loads torch

    def build(name: str, meta: dict):
        model = build_segmenter(name, meta["num_classes"], weights=None, tau=float(meta.get("tau", 20.0)))
        model.normalization = dict(meta["normalization"])
        return model

    return load_rebuilt(path, "segnet", SEG_MODELS, build, device=device, class_names=class_names,
                         missing="segmentation model not found (run bana train-seg first)")


def check_crop_size(ctx, ds: VOCDataset, crop_size: int, *, key: str, sample: int = 50) -> int | None:
    """Warn when the random crop is larger than the images (read from the headers of up to
    ``sample`` images): such crops are mostly padding and cost (crop / side)^2 more per
    iteration. Returns the largest image side seen (None when no image could be read)."""
    sides = []
    for image_id in ds.ids[:sample]:
        try:
            with Image.open(find_image(ds.root, image_id)) as im:
                sides.append(max(im.size))
        except Exception:  # noqa: BLE001 - unreadable images are reported by the loader itself
            continue
    if not sides:
        return None
    largest = max(sides)
    if crop_size > largest:
        msg = (f"warning: {key}={crop_size} is larger than the images (at most {largest} px in the first "
               f"{len(sides)}): crops are mostly padding and each iteration costs about "
               f"{(crop_size / largest) ** 2:.1f}x more; consider --crop-size {largest}")
        ctx.logger.warning(msg)
        if not ctx.quiet:
            ctx.console.print(msg, markup=False, highlight=False)
    return largest

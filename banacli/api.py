"""Python use of a trained run, in three lines::

    from banacli.api import Segmenter
    seg = Segmenter.from_run("runs/toy")            # RUN/seg/model.safetensors (hash-checked)
    mask = seg.predict("photo.jpg")                  # (H, W) uint8 class ids; seg.class_names[i]

and the labeling counterpart, pseudo labels for boxes you give (the stage-1 classifier)::

    from banacli.api import Labeler
    lab = Labeler.from_run("runs/toy")               # RUN/cls/model.safetensors, loaded once
    out = lab.label("photo.jpg", [[10, 20, 110, 90]], ["dog"])
    out.ycrf, out.yret                               # (H, W) uint8 class ids, as gen-labels writes
    out.masks["Ycrf"][0]                             # (H, W) bool: the first box's instance mask

``predict`` takes a path, a PIL image or an (H, W, 3) uint8 RGB array. By default it runs the
same inference as ``bana predict`` without DenseCRF: multi-scale (eval.scales of the model's
config) with flips; ``ms=False, flip=False`` gives one pass; ``crf=True`` adds DenseCRF.
``probabilities`` returns the (K, H, W) class probabilities.

``run_stage("train-cls", {"run": "runs/toy", "data": "data/toy"})`` runs one stage in this
process as ``bana train-cls --run runs/toy --data data/toy`` would (``bana demo`` does this).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
import hashlib
import json
import threading
from collections import OrderedDict

import numpy as np
from banacli.errors import DataError
from banacli.ops.crf import CRFParams, crf_labels

__all__ = ["Segmenter", "Labeler", "LabelResult", "run_stage"]


def _rgb(image: Any) -> np.ndarray:
    """A path, a PIL image or an (H, W, 3) uint8 array -> (H, W, 3) uint8 RGB array."""
    if isinstance(image, (str, os.PathLike)):
        from banacli.data.voc import read_image  # loads torch

        return read_image(image)
    arr = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {arr.shape} {arr.dtype}")
    if not arr.flags.writeable or not arr.flags.c_contiguous:  # PIL's buffer is read-only; DenseCRF writes
        arr = np.array(arr, order="C")
    return arr


class Segmenter:
    """A trained segmentation model with its class names and input normalisation."""

    def __init__(self, model: Any, meta: dict[str, Any], device: Any = "cpu") -> None:
        self.model, self.meta, self.device = model, meta, device

    @classmethod
    def from_run(cls, run: str | os.PathLike, *, device: str = "cpu", best: bool = False) -> Segmenter:
        """Load RUN/seg/model.safetensors (or RUN/seg/best.safetensors with ``best``)."""
        from banacli.runs import RunDir  # loads torch

        path = RunDir(run).best_model("seg") if best else RunDir(run).model("seg")
        return cls.from_file(path, device=device)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, device: str = "cpu") -> Segmenter:
        from banacli.runs import load_segmenter  # loads torch

        model, meta = load_segmenter(Path(path), device=device)
        return cls(model, meta, device)

    @property
    def class_names(self) -> list[str]:
        """Names of the class ids, background first."""
        return list(self.meta["class_names"])

    def _image(self, image: Any) -> np.ndarray:
        return _rgb(image)

    def probabilities(self, image: Any, *, ms: bool = True, flip: bool = True) -> np.ndarray:
        """(K, H, W) float32 class probabilities."""
        from banacli.ops.infer import DEFAULT_SCALES, image_probs  # loads torch

        arr = self._image(image)
        scales = self.meta.get("config", {}).get("eval", {}).get("scales") or list(DEFAULT_SCALES)
        probs = image_probs(self.model, arr, self.meta["normalization"], self.device,
                            scales=scales if ms else [1.0], flip=flip)
        return probs.float().cpu().numpy()

    def predict(self, image: Any, *, ms: bool = True, flip: bool = True, crf: bool = False) -> np.ndarray:
        """(H, W) uint8 mask of class ids (0 background, i -> ``class_names[i]``)."""
        probs = self.probabilities(image, ms=ms, flip=flip)
        if crf:
            params = self.meta.get("config", {}).get("eval", {}).get("crf_params") or [4, 121, 5, 3, 3]
            return crf_labels(self._image(image), probs, CRFParams.from_list(params))
        return probs.argmax(0).astype(np.uint8)


# ----------------------------------------------------------------------------- labeling


@dataclass
class LabelResult:
    """What :meth:`Labeler.label` returns for one image and its boxes.

    ``maps``: each label set of the labeler (``Ycrf``, ``Yret`` for bana) as an (H, W) uint8
    class-id map at the image's size (0 background, i -> ``class_names[i]``, 255 void), the
    same arrays gen-labels writes to ``RUN/labels/<set>/ID.png``. ``masks``: for each set, the
    (K, H, W) bool instance masks of the K boxes (gen-labels' ``instances_<set>.json``: the
    box's class inside the box, same-class overlaps to the smallest box). ``scores``: (K,)
    IoU of each box's masks in the first and last set (1.0 with one set), the instance score
    of gen-labels. ``boxes`` (K, 4) are the boxes as used (clipped to the image, x0, y0, x1, y1
    0-based, exclusive end) and ``labels`` (K,) their class ids.
    """

    maps: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    scores: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    @property
    def ycrf(self) -> np.ndarray:
        return self.maps["Ycrf"]

    @property
    def yret(self) -> np.ndarray:
        return self.maps["Yret"]


class Labeler:
    """A run's stage-1 classifier, loaded once, labelling one image at a time the way
    ``bana gen-labels`` labels a training image: the same features
    (:func:`banacli.labeling.compute_features`, thread-invariant on a CPU), the same labeler
    (:mod:`banacli.labeling.registry`, i.e. :func:`banacli.ops.pseudo.generate_pseudo_labels`), the same
    ``data.max_side`` shrinking and nearest-neighbour resizing back, and the same instance rule
    (:func:`banacli.ops.instances.box_instance_masks`).

    ``params`` is the resolved ``labels`` section as gen-labels' manifest stores it. Safe to call
    from several threads at once (the model is only read).

    ``feature_cache`` N > 0 keeps the classifier features of the last N images (keyed by their
    pixels): labelling another box on an image seen recently skips the backbone, the costly part
    (features do not depend on the boxes, so the labels are the same bit for bit).
    """

    def __init__(self, model: Any, weight: np.ndarray | None, normalization: dict, meta: dict[str, Any],
                 params: dict[str, Any], *, max_side: int | None, device: Any = "cpu",
                 source: Path | None = None, feature_cache: int = 0) -> None:

        from banacli.labeling.registry import get_labeler  # loads torch

        self.model, self.weight, self.normalization, self.meta = model, weight, normalization, meta
        self.params = dict(params)
        self.max_side = max_side
        self.device = device
        self.source = source
        self.labeler = get_labeler(self.params.get("method", "bana"))
        self.feature_cache = int(feature_cache)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.cache_hits = 0

    @classmethod
    def from_run(cls, run: str | os.PathLike, *, device: str = "cpu", params: dict[str, Any] | None = None,
                 max_side: int | None | str = "auto", feature_cache: int = 0) -> Labeler:
        """Load RUN/cls/model.safetensors. The labeling parameters and ``data.max_side`` are those
        of the run's last gen-labels (RUN/labels/bana.manifest.json) when it has one, else the
        defaults; ``params`` overrides single keys (``{"bg_threshold": 0.9}``)."""

        from banacli.runs import RunDir  # loads torch

        run = RunDir(run)
        manifest_path = run.manifest("bana")
        manifest: dict[str, Any] = {}
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                manifest = {}
        base = manifest.get("params") or default_label_params()
        if max_side == "auto":
            max_side = manifest["max_side"] if "max_side" in manifest else default_max_side()
        return cls.from_file(run.model("cls"), device=device, params={**base, **(params or {})},
                             max_side=max_side, feature_cache=feature_cache)

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, device: str = "cpu", params: dict[str, Any] | None = None,
                  max_side: int | None | str = "auto", feature_cache: int = 0) -> Labeler:
        """Load a classifier file (a ``model.safetensors`` with its sidecar) with default (or the
        given) labeling parameters."""
        import torch

        from banacli.labeling import load_feature_model  # loads torch

        params = {**default_label_params(), **(params or {})}
        if max_side == "auto":
            max_side = default_max_side()
        dev = torch.device(device)
        model, weight, norm, meta = load_feature_model(Path(path), dev, None, bool(params["class_agnostic"]))
        return cls(model, weight, norm, meta, params, max_side=max_side, device=dev, source=Path(path),
                   feature_cache=feature_cache)

    @property
    def class_names(self) -> list[str]:
        """Names of the class ids, background first."""
        return list(self.meta["class_names"])

    @property
    def outputs(self) -> tuple[str, ...]:
        """The label sets this labeler writes (``("Ycrf", "Yret")`` for bana)."""
        return tuple(self.labeler.outputs)

    @property
    def weights_sha256(self) -> str:
        return str(self.meta.get("weights_sha256", ""))

    def class_ids(self, names: Any) -> np.ndarray:
        """(K,) int64 ids of class names (or ids 1..L passed through); DataError naming an
        unknown class and the known ones."""

        known = {n: i for i, n in enumerate(self.class_names) if i > 0}
        out = []
        for n in names:
            if isinstance(n, (int, np.integer)) and not isinstance(n, bool):
                if not 1 <= int(n) < len(self.class_names):
                    raise DataError(f"class id {int(n)} is not in 1..{len(self.class_names) - 1}")
                out.append(int(n))
            elif str(n) in known:
                out.append(known[str(n)])
            else:
                raise DataError(f"unknown class {str(n)!r}; the run knows {', '.join(known)}")
        return np.asarray(out, dtype=np.int64)

    def label(self, image: Any, boxes: Any, class_names: Any) -> LabelResult:
        """Pseudo labels for one image: ``boxes`` (K, 4) x0, y0, x1, y1 in pixels (0-based,
        exclusive end, as gen-labels holds VOC boxes after its 1-based shift), ``class_names``
        (K,) class names (or ids 1..L). The image is a path, a PIL image or an (H, W, 3) uint8
        RGB array. Raises DataError for an unknown class or a box outside the image."""
        import torch

        from banacli.data.voc import Sample, clip_boxes, resize_label, shrink_sample  # loads torch
        from banacli.labeling.registry import LabelTask  # loads torch
        from banacli.labeling import compute_features  # loads torch
        from banacli.ops.instances import box_instance_masks  # loads torch
        from banacli.instances.pseudo_masks import mask_iou  # loads torch

        arr = _rgb(image)
        h, w = arr.shape[:2]
        labels = self.class_ids(list(class_names))
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        if len(b) != len(labels):
            raise DataError(f"{len(b)} boxes but {len(labels)} class names")
        full_boxes = clip_boxes(b, w, h, "boxes") if len(b) else b
        # as banacli.data.voc.load_sample + shrink_sample make the sample gen-labels labels
        sample = shrink_sample(Sample(id="image", image=arr, boxes=full_boxes, labels=labels, orig_hw=(h, w)),
                               self.max_side)
        task = LabelTask(image_id=sample.id, image=sample.image, boxes=sample.boxes, labels=sample.labels,
                         params=self.params, ignore=sample.ignore)
        if self.labeler.needs_classifier:  # as banacli.labeling.label_image does in a worker
            key = self._image_key(sample.image) if self.feature_cache > 0 else None
            feats = self._cached(key)
            if feats is None:
                feats = compute_features(self.model, self.normalization, [sample.image], torch.device(self.device))[0]
                self._remember(key, feats)
            task.feats = feats
            task.weight = self.weight
        result = self.labeler.label(task)
        # as banacli.labeling.write_outputs (the PNG) and banacli.instances.pseudo_masks (the instances)
        maps = {n: resize_label(result[n], sample.orig_hw) for n in self.labeler.outputs}
        masks = {n: box_instance_masks(m, full_boxes, labels) for n, m in maps.items()}
        names = list(maps)
        scores = (mask_iou(masks[names[0]], masks[names[-1]]) if len(names) >= 2 and len(labels)
                  else np.ones(len(labels)))
        return LabelResult(maps=maps, masks=masks, scores=np.asarray(scores, dtype=np.float64),
                           boxes=full_boxes, labels=labels, class_names=self.class_names)

    # -- the feature cache ------------------------------------------------------------------

    @staticmethod
    def _image_key(image: np.ndarray) -> bytes:
        h = hashlib.blake2b(repr(image.shape).encode(), digest_size=20)
        h.update(np.ascontiguousarray(image).data)
        return h.digest()

    def _cached(self, key: bytes | None) -> np.ndarray | None:
        if key is None:
            return None
        with self._cache_lock:
            feats = self._cache.get(key)
            if feats is not None:
                self._cache.move_to_end(key)
                self.cache_hits += 1
            return feats

    def _remember(self, key: bytes | None, feats: np.ndarray) -> None:
        if key is None:
            return
        feats.setflags(write=False)  # shared between requests: nobody may change it
        with self._cache_lock:
            self._cache[key] = feats
            self._cache.move_to_end(key)
            while len(self._cache) > self.feature_cache:
                self._cache.popitem(last=False)


def default_label_params() -> dict[str, Any]:
    """The ``labels`` parameters gen-labels would use with no config (its manifest's ``params``)."""
    from banacli.config import root_model  # loads pydantic, yaml: Segmenter users do not
    from banacli.labeling import label_params  # loads torch

    return label_params(root_model()())


def default_max_side() -> int | None:
    from banacli.config import DataConfig  # loads pydantic, yaml: Segmenter users do not

    return DataConfig().max_side


def run_stage(name: str, values: dict[str, Any], *, stages: dict | None = None) -> int:
    """Run ``bana NAME`` in this process, as the command line would: ``values`` holds the options
    by parameter name (``run``, ``data``, ``config``, ``set_``, ``quiet``, ``device`` and the
    section's keys); ``stages`` the discovered stages (discovered again when None). Returns the
    exit code; a failure prints its one error line as the command line does."""
    # the host (typer, rich) is loaded only by a caller that runs stages, not by Segmenter users
    from banacli.cli import build_stage_model, run_stage as run_parsed  # loads typer: Segmenter users do not
    from banacli.stage import discover_stages  # loads pydantic, yaml: Segmenter users do not

    stages = discover_stages() if stages is None else stages
    return run_parsed(stages[name], build_stage_model(stages), values)

"""Labelers: what ``bana gen-labels`` runs per image, discovered from the ``bana.labelers``
entry-point group so that a third party can add one (a SAM-based labeler, say) without
touching this package. Every labeler gets the same resume, workers, report and pictures.

A labeler is a :class:`Labeler` spec. Its ``label`` function runs in a worker process (it
must be a module-level function): it receives one :class:`LabelTask` and returns a dict
mapping each name in ``outputs`` to a (H, W) uint8 label map (0 background, 1..L classes,
255 void); it may add ``"viz"``: a dict of extra (H, W) float maps in [0, 1] to draw.
A labeler with ``needs_classifier`` gets the stage-1 classifier's features in the task.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from banacli.errors import ConfigError
from banacli.ops.crf import CRFParams
from banacli.ops.labelers import box_labeler, grabcut_labeler
from banacli.ops.pseudo import PseudoLabelParams, generate_pseudo_labels

LABELER_GROUP = "bana.labelers"


@dataclass
class LabelTask:
    """One image's work. ``feats`` (C, h, w) float32 and ``weight`` (L+1, C) come from the
    classifier when the labeler needs it; ``params`` is the resolved ``labels`` section."""

    image_id: str
    image: np.ndarray  # (H, W, 3) uint8 RGB
    boxes: np.ndarray  # (K, 4) float32 x0, y0, x1, y1, 0-based, exclusive end
    labels: np.ndarray  # (K,) int64 in 1..L
    params: dict[str, Any] = field(default_factory=dict)
    feats: np.ndarray | None = None
    weight: np.ndarray | None = None
    viz: bool = False
    orig_hw: tuple[int, int] | None = None  # the file's (H, W) when the image was shrunk (data.max_side)
    ignore: np.ndarray | None = None  # (H, W) bool: COCO crowd regions (no background query; 255 in labels)


@dataclass(frozen=True)
class Labeler:
    name: str
    help: str
    outputs: tuple[str, ...]
    label: Callable[[LabelTask], dict[str, Any]]
    needs_classifier: bool = False


# ----------------------------------------------------------------------------- built-ins

def _label_bana(task: LabelTask) -> dict[str, Any]:
    p = task.params
    params = PseudoLabelParams(
        grid_size=p["grid_size"], bg_threshold=p["bg_threshold"], use_u0=p["use_u0"],
        class_agnostic=p["class_agnostic"],
        crf=CRFParams(bi_w=p["crf_bi_w"], bi_xy=p["crf_bi_xy"], bi_rgb=p["crf_bi_rgb"], pos_w=p["crf_pos_w"],
                      pos_xy=p["crf_pos_xy"], iterations=p["crf_iterations"]),
        box_convention=p.get("box_convention", "voc"),
    )
    out = generate_pseudo_labels(task.image, task.feats, task.weight, task.boxes, task.labels, params,
                                 ignore=task.ignore)
    result: dict[str, Any] = {"Ycrf": out.ycrf, "Yret": out.yret}
    if task.viz:
        # one CAM panel per class of the boxes, keyed "CAM:<class id>" (pictures name the class)
        result["viz"] = {"u0": out.u0, **{f"CAM:{c}": cam for c, cam in out.cams.items()},
                         "unreliable": out.unreliable.astype(np.float32)}
    return result


def _label_box(task: LabelTask) -> dict[str, Any]:
    return {"Box": box_labeler(task.image, task.boxes, task.labels)}


def _label_grabcut(task: LabelTask) -> dict[str, Any]:
    return {"GrabCut": grabcut_labeler(task.image, task.boxes, task.labels)}


BANA = Labeler("bana", "BAP classifier -> DenseCRF (Ycrf) and retrieval (Yret), the paper's method",
               ("Ycrf", "Yret"), _label_bana, needs_classifier=True)
BOX = Labeler("box", "every box pixel gets the box's class (paper Table 1, 'Box')", ("Box",), _label_box)
GRABCUT = Labeler("grabcut", "OpenCV GrabCut initialised from each box (paper Table 1)", ("GrabCut",),
                  _label_grabcut)


def discover_labelers() -> dict[str, Labeler]:
    found: dict[str, Labeler] = {}
    for ep in sorted(entry_points(group=LABELER_GROUP), key=lambda e: e.name):
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - one broken plugin must not break the others
            warnings.warn(f"bana: labeler plugin {ep.name!r} ({ep.value}) failed to load: {exc}", stacklevel=2)
            continue
        if not isinstance(obj, Labeler):
            warnings.warn(f"bana: labeler plugin {ep.name!r} is not a banacli.labeling.Labeler; skipped", stacklevel=2)
            continue
        found.setdefault(obj.name, obj)
    for builtin in (BANA, BOX, GRABCUT):  # available even from a source tree without metadata
        found.setdefault(builtin.name, builtin)
    return found


def get_labeler(name: str) -> Labeler:
    labelers = discover_labelers()
    if name not in labelers:
        raise ConfigError(f"labels.method: unknown labeler {name!r}; available: {', '.join(sorted(labelers))}")
    return labelers[name]


def label_set_names(method: str) -> tuple[str, ...]:
    """The folders under RUN/labels/ that a labeler writes."""
    return get_labeler(method).outputs


def label_sets(method: str) -> tuple[str, str]:
    """Folders under RUN/labels/ used as (Ycrf, Yret) for a labeler; single-set labelers give
    the same folder twice, so every pixel is in S and NAL reduces to plain cross-entropy."""
    if method == "bana":
        return "Ycrf", "Yret"
    names = label_set_names(method)
    return names[0], names[-1]

"""What ``bana serve`` does with each request, free of the web framework (banacli/serve/app.py
only routes HTTP to these methods).

Label Studio (1.23) calls, in this order for every prediction round:

* ``GET /health`` (1 s timeout) -> ``{"status": "UP", ...}``;
* ``POST /setup`` (3 s timeout) with ``{project, schema, hostname, access_token, extra_params}``
  -> ``{"model_version": ...}``; the host and token are kept per project to fetch its images;
* ``POST /predict`` with ``{tasks, project, label_config, params: {context, ...}}`` ->
  ``{"results": [...]}``, exactly one entry per task, in the tasks' order (with another count
  Label Studio drops them all). An entry is ``{"result": [regions], "score": s,
  "model_version": v}``.

Per task: the image (:mod:`banacli.serve.images`), its rectangles (:mod:`banacli.serve.tasks`),
all boxes labelled together in one :meth:`banacli.api.Labeler.label` call (as gen-labels labels
an image with all its boxes), and for every box one region per mask tag of the config: a
``brushlabels`` region (Label Studio's RLE) or ``polygonlabels`` regions (one per outer
contour), made by :mod:`banacli.interop.labelstudio`. A region's ``score`` is the box's
instance score (IoU of its Ycrf and Yret masks); the entry's is their mean.

A problem with one task (no image, a path outside the root, an image too big, a label the run
does not know, an empty mask) never fails the request: that task's entry lists what it could
make (possibly nothing), ``error`` says what went wrong, and a log line names the task. Only a
request that is not a predict request at all (not JSON, no task list) is answered with HTTP 4xx
and ``{"error": ...}``.

The model lives in a :class:`ModelSlot`; a retrained one replaces it in one assignment, and
each request reads the slot once, so it is labelled by one model from start to end.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from banacli.errors import BanaError, DataError
from banacli.serve.images import Connection, ImageSource
from banacli.serve.labelconfig import LabelConfig, parse_label_config
from banacli.serve.tasks import TaskBox, source_rectangles, task_boxes
from banacli.interop.labelstudio import brush_result, polygon_results

__all__ = ["RequestError", "ModelSlot", "Backend"]

log = logging.getLogger("bana.serve")


class RequestError(Exception):
    """A request that cannot be answered at all: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def model_version_of(labeler: Any) -> str:
    return f"bana-{labeler.weights_sha256[:12]}"


class ModelSlot:
    """The labeler in use and its version; :meth:`swap` replaces both at once."""

    def __init__(self, labeler: Any) -> None:
        self._lock = threading.Lock()
        self._current = (labeler, model_version_of(labeler))

    def get(self) -> tuple[Any, str]:
        return self._current  # one tuple read: always a matching pair

    def swap(self, labeler: Any) -> str:
        with self._lock:
            self._current = (labeler, model_version_of(labeler))
            return self._current[1]


@dataclass
class Project:
    connection: Connection
    schema: str | None = None


@dataclass
class Backend:
    slot: ModelSlot
    images: ImageSource
    label_set: str = "Ycrf"
    output: str = "auto"  # auto (every mask tag), brush, polygon
    default_connection: Connection = field(default_factory=Connection)
    trainer: Any = None  # banacli.serve.training.Trainer, when training is on
    on_predict: Callable[[int], None] | None = None  # test hook: called with the task count

    def __post_init__(self) -> None:
        self._projects: dict[str, Project] = {}
        self._lock = threading.Lock()
        labeler, _ = self.slot.get()
        if self.label_set not in labeler.outputs:
            raise DataError(f"label set {self.label_set!r} is not one of the run's: {', '.join(labeler.outputs)}")

    # -- projects --------------------------------------------------------------------------

    @staticmethod
    def project_key(value: Any) -> str:
        """Label Studio sends ``"<id>.<created timestamp>"``; the id is the key."""
        return str(value).split(".", 1)[0] if value is not None else ""

    def project(self, key: str) -> Project:
        with self._lock:
            return self._projects.get(key) or Project(self.default_connection)

    # -- endpoints -------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        labeler, version = self.slot.get()
        out = {"status": "UP", "model_class": "bana", "model_version": version,
               "label_set": self.label_set, "classes": labeler.class_names[1:],
               "feature_cache_hits": getattr(labeler, "cache_hits", 0)}
        if self.trainer is not None:
            out["training"] = self.trainer.status()
        return out

    def setup(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, "setup body must be a JSON object")
        key = self.project_key(body.get("project"))
        schema = body.get("schema")
        if schema is not None:
            try:
                cfg = parse_label_config(schema)
            except DataError as exc:
                raise RequestError(422, str(exc)) from None
            self._target(cfg)  # refuses a config without a mask tag on an image
            if self.project(key).schema != schema:  # Label Studio calls /setup before every predict
                self._warn_unknown_labels(cfg)
        host = body.get("hostname") or self.default_connection.hostname
        token = body.get("access_token") or self.default_connection.token
        with self._lock:
            self._projects[key] = Project(Connection(hostname=host, token=token), schema)
        return {"model_version": self.slot.get()[1]}

    def versions(self) -> dict[str, Any]:
        return {"versions": [self.slot.get()[1]]}

    def webhook(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, "webhook body must be a JSON object")
        action = body.get("action")
        if self.trainer is None or action not in self.trainer.actions:
            return {"status": "ignored", "action": action}
        project = body.get("project") if isinstance(body.get("project"), dict) else {}
        key = str(project.get("id", ""))
        return self.trainer.start(key, self.project(key).connection, project.get("label_config"))

    def predict(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise RequestError(400, "predict body must be a JSON object")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise RequestError(400, "predict body needs 'tasks', a list of tasks")
        if self.on_predict is not None:
            self.on_predict(len(tasks))
        project = self.project(self.project_key(body.get("project")))
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        context = params.get("context")
        labeler, version = self.slot.get()  # one model for the whole request
        schema = body.get("label_config") or project.schema
        try:
            cfg = parse_label_config(schema)
            target = self._target(cfg)
        except (DataError, RequestError) as exc:
            # the same problem for every task: say so in each entry (the count must still match)
            msg = str(exc)
            log.warning("predict: %s", msg)
            return {"results": [self._entry([], [], version, [msg]) for _ in tasks], "model_version": version}
        results = [self.predict_task(task, cfg, target, context, project.connection, labeler, version)
                   for task in tasks]
        return {"results": results, "model_version": version}

    # -- one task --------------------------------------------------------------------------

    def _target(self, cfg: LabelConfig) -> tuple[str, str, list]:
        """(Image tag name, its data key, the mask tags to fill) of a config."""
        for name, key in cfg.images.items():
            tags = cfg.mask_tags(name, self.output)
            if tags:
                return name, key, tags
        kinds = {"auto": "BrushLabels or PolygonLabels", "brush": "BrushLabels", "polygon": "PolygonLabels"}
        raise RequestError(422, f"label_config has no {kinds[self.output]} tag on an Image; nothing to answer with")

    def _warn_unknown_labels(self, cfg: LabelConfig) -> None:
        labeler, _ = self.slot.get()
        known = set(labeler.class_names[1:])
        for tag in cfg.of_type("rectanglelabels"):
            unknown = [lab for lab in tag.labels if self._class_name(lab, labeler) is None]
            if unknown:
                log.warning("setup: labels %s of %s are not classes of the run (%s); their boxes get no mask",
                            unknown, tag.name, ", ".join(sorted(known)))

    @staticmethod
    def _class_name(label: str, labeler: Any) -> str | None:
        """The run's class for a Label Studio label: the same name, else the one equal ignoring case."""
        names = labeler.class_names[1:]
        if label in names:
            return label
        folded = [n for n in names if n.casefold() == label.casefold()]
        return folded[0] if len(folded) == 1 else None

    @staticmethod
    def _entry(regions: list, scores: list, version: str, problems: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"result": regions, "score": float(np.mean(scores)) if scores else 0.0,
                                 "model_version": version}
        if problems:
            entry["error"] = "; ".join(problems)
        return entry

    def predict_task(self, task: Any, cfg: LabelConfig, target: tuple, context: Any, conn: Connection,
                     labeler: Any, version: str) -> dict[str, Any]:
        tid = task.get("id") if isinstance(task, dict) else None
        problems: list[str] = []
        try:
            regions, scores = self._label_task(task, cfg, target, context, conn, labeler, problems)
        except BanaError as exc:
            problems.append(str(exc))
            regions, scores = [], []
        except Exception as exc:  # noqa: BLE001 - one task must never take the server down
            log.exception("task %s: unexpected error", tid)
            problems.append(f"internal error: {type(exc).__name__}: {exc}")
            regions, scores = [], []
        for p in problems:
            log.warning("task %s: %s", tid, p)
        return self._entry(regions, scores, version, problems)

    def _label_task(self, task: Any, cfg: LabelConfig, target: tuple, context: Any, conn: Connection,
                    labeler: Any, problems: list[str]) -> tuple[list, list]:

        if not isinstance(task, dict):
            raise DataError("task is not a JSON object")
        to_name, data_key, tags = target
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        if data_key not in data:
            raise DataError(f"task has no image (no data key {data_key!r})")
        image = self.images.load(data[data_key], conn)
        height, width = image.shape[:2]
        where, rects = source_rectangles(task, context, to_name)
        if not rects:
            raise DataError("task has no rectangle to label (context, annotations and predictions are empty)")
        boxes, bad = task_boxes(rects, width, height)
        problems += bad
        used: list[TaskBox] = []
        names: list[str] = []
        unknown: dict[str, list[str]] = {}
        for b in boxes:
            name = self._class_name(b.label, labeler)
            if name is None:
                unknown.setdefault(b.label, []).append(b.id)
                continue
            used.append(b)
            names.append(name)
        for label, ids in unknown.items():
            problems.append(f"unknown label {label!r} (rectangle{'s' if len(ids) > 1 else ''} {', '.join(ids)}); "
                            f"the run knows {', '.join(labeler.class_names[1:])}")
        if not used:
            return [], []
        out = labeler.label(image, np.array([b.box for b in used], dtype=np.float32), names)
        masks = out.masks[self.label_set]
        regions: list[dict] = []
        scores: list[float] = []
        for k, b in enumerate(used):
            if not masks[k].any():
                problems.append(f"rectangle {b.id}: the {self.label_set} mask is empty")
                continue
            score = float(out.scores[k])
            scores.append(score)
            for tag in tags:
                if tag.labels and b.label not in tag.labels:
                    problems.append(f"rectangle {b.id}: label {b.label!r} is not a label of {tag.name}")
                    continue
                if tag.type == "brushlabels":
                    made = [brush_result(masks[k], b.label, from_name=tag.name, to_name=to_name,
                                         result_id=f"{b.id}-{tag.name}")]
                else:
                    made = polygon_results(masks[k], b.label, from_name=tag.name, to_name=to_name,
                                           result_id=f"{b.id}-{tag.name}")
                for r in made:
                    r["score"] = score
                regions += made
        log.info("task %s: %d boxes from the %s, %d regions", task.get("id"), len(used), where, len(regions))
        return regions, scores

"""Retraining from Label Studio: the project's current boxes -> train-cls -> the served model.

On Label Studio's ``START_TRAINING`` webhook (its "Start training" button; 1.23 posts
``{"action": "START_TRAINING", "project": {...}}`` to ``<backend>/webhook``, with a 1 s
timeout, so the answer only says the job started) a background thread:

1. exports the project (``GET /api/projects/ID/export?exportType=JSON`` with the token /setup
   sent) and writes an exported copy of its boxes as a VOC dataset under
   ``RUN/serve/train-N/data/``: each task's latest non-cancelled annotation's rectangles
   (boxes of labels the run does not know are left out and counted), its image read as
   predictions read it (:class:`banacli.serve.images.ImageSource`), saved as PNG;
2. runs ``bana train-cls`` on it in a subprocess into ``RUN/serve/train-N/``, the backbone of
   the served classifier, initialised from its weights (``cls.weights`` = the served
   ``model.safetensors``), ``--iterations`` as ``serve.train_iterations``, plus any
   ``serve.train_set`` items;
3. loads the new classifier with the served labeling parameters and swaps it into the
   :class:`banacli.serve.backend.ModelSlot` in one assignment: requests already running finish
   with the old model, the next ones use the new one (a new ``model_version``, so Label Studio
   asks again instead of reusing cached predictions).

RUN/cls/ is never written. One job at a time; a second START_TRAINING while one runs is
answered ``{"status": "busy"}``. ``/health`` shows the job's state.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from banacli.errors import BanaError, DataError
from banacli.serve.images import Connection, ImageSource
from banacli.serve.labelconfig import parse_label_config
from banacli.serve.tasks import source_rectangles, task_boxes
from banacli.artifacts import atomic_write_text
from banacli.api import Labeler

__all__ = ["Trainer", "export_boxes"]

log = logging.getLogger("bana.serve")


def fetch_export(conn: Connection, project_id: str, timeout: float = 120.0) -> list[dict]:
    if not conn.hostname:
        raise DataError("no Label Studio host known (it comes with /setup, or --ls-url)")
    url = f"{conn.hostname.rstrip('/')}/api/projects/{project_id}/export?exportType=JSON"
    req = urllib.request.Request(url, headers={"Authorization": f"Token {conn.token}"} if conn.token else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the Label Studio of /setup
            tasks = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DataError(f"export of project {project_id}: Label Studio answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, json.JSONDecodeError) as exc:
        raise DataError(f"export of project {project_id}: {exc}") from None
    if not isinstance(tasks, list):
        raise DataError(f"export of project {project_id}: expected a list of tasks")
    return tasks


def export_boxes(tasks: list[dict], label_config: str, class_names: list[str], images: ImageSource,
                 conn: Connection, out: Path) -> dict[str, int]:
    """Write the annotated boxes of ``tasks`` as a VOC dataset in ``out`` (train split);
    returns counts (images, boxes, boxes with unknown labels, tasks skipped)."""
    from PIL import Image  # loads PIL

    cfg = parse_label_config(label_config)
    to_name = next(iter(cfg.images))
    key = cfg.images[to_name]
    known = set(class_names[1:])
    counts = {"images": 0, "boxes": 0, "unknown_label_boxes": 0, "skipped_tasks": 0}
    ids = []
    for d in ("JPEGImages", "Annotations", "ImageSets/Segmentation"):
        (out / d).mkdir(parents=True, exist_ok=True)
    for task in tasks:
        where, rects = source_rectangles({"annotations": task.get("annotations")}, None, to_name)
        try:
            if where != "annotation":
                raise DataError("no annotated rectangle")
            image = images.load((task.get("data") or {}).get(key), conn)
        except BanaError as exc:
            counts["skipped_tasks"] += 1
            log.info("training export: task %s skipped: %s", task.get("id"), exc)
            continue
        h, w = image.shape[:2]
        boxes, _ = task_boxes(rects, w, h)
        objects = []
        for b in boxes:
            if b.label not in known:
                counts["unknown_label_boxes"] += 1
                continue
            x0, y0, x1, y1 = (min(max(v, 0.0), lim) for v, lim in zip(b.box, (w, h, w, h)))
            if x1 <= x0 or y1 <= y0:
                continue
            # VOC: 1-based, inclusive (bana reads xmin - 1, ymin - 1, xmax, ymax back)
            objects.append(f"<object><name>{escape(b.label)}</name><difficult>0</difficult><bndbox>"
                           f"<xmin>{x0 + 1:g}</xmin><ymin>{y0 + 1:g}</ymin><xmax>{x1:g}</xmax><ymax>{y1:g}</ymax>"
                           "</bndbox></object>")
        if not objects:
            counts["skipped_tasks"] += 1
            continue
        image_id = f"task{int(task.get('id', counts['images']))}"
        Image.fromarray(image).save(out / "JPEGImages" / f"{image_id}.png")
        atomic_write_text(out / "Annotations" / f"{image_id}.xml",
                          f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>"
                          + "".join(objects) + "</annotation>\n")
        ids.append(image_id)
        counts["images"] += 1
        counts["boxes"] += len(objects)
    atomic_write_text(out / "ImageSets" / "Segmentation" / "train.txt", "".join(f"{i}\n" for i in ids))
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in class_names[1:]))
    return counts


@dataclass
class Trainer:
    run_dir: Path
    slot: Any  # banacli.serve.backend.ModelSlot
    images: ImageSource
    iterations: int = 500
    extra_sets: list[str] = field(default_factory=list)
    device: str = "auto"
    actions: tuple[str, ...] = ("START_TRAINING",)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._state: dict[str, Any] = {"state": "idle", "jobs": 0}

    def status(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._state)

    def start(self, project_id: str, conn: Connection, label_config: str | None) -> dict[str, Any]:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return {"status": "busy", "job": self._state.get("job")}
            n = int(self._state["jobs"]) + 1
            job = f"train-{n}"
            while (self.run_dir / "serve" / job).exists():  # an earlier server's jobs
                n += 1
                job = f"train-{n}"
            self._state = {"state": "running", "jobs": n, "job": job, "project": project_id,
                           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self._thread = threading.Thread(target=self._run, args=(job, project_id, conn, label_config),
                                            name=f"bana-{job}", daemon=True)
            self._thread.start()
        log.info("training %s started for project %s", job, project_id)
        return {"status": "started", "job": job}

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return self.status()

    def _run(self, job: str, project_id: str, conn: Connection, label_config: str | None) -> None:
        t0 = time.perf_counter()
        out = self.run_dir / "serve" / job
        try:
            labeler, _ = self.slot.get()
            tasks = fetch_export(conn, project_id)
            if not label_config:
                raise DataError("the webhook carried no label_config")
            counts = export_boxes(tasks, label_config, labeler.class_names, self.images, conn, out / "data")
            if counts["images"] == 0:
                raise DataError(f"no task of project {project_id} has annotated boxes of known classes")
            meta = labeler.meta
            backbone = str(meta["arch"]).split("/", 1)[1]
            cmd = [sys.executable, "-m", "banacli", "train-cls", "--data", str(out / "data"), "--run", str(out),
                   "--backbone", backbone, "--iterations", str(self.iterations), "--device", self.device,
                   "--set", f"cls.weights={labeler.source}", *[a for s in self.extra_sets for a in ("--set", s)], "-q"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                raise DataError(f"train-cls exited with {proc.returncode}: {tail[0]}")
            from banacli.runs import RunDir  # loads torch

            new = Labeler.from_file(RunDir(out).model("cls"), device=str(labeler.device),
                                    params=labeler.params, max_side=labeler.max_side,
                                    feature_cache=labeler.feature_cache)
            if new.class_names != labeler.class_names:
                raise DataError("the retrained classifier has other classes; not swapped")
            version = self.slot.swap(new)
            state = {"state": "done", "model_version": version, **counts,
                     "seconds": round(time.perf_counter() - t0, 1)}
            log.info("training %s done: %s", job, state)
        except Exception as exc:  # noqa: BLE001 - a failed job is reported, never fatal to the server
            state = {"state": "failed", "error": str(exc), "seconds": round(time.perf_counter() - t0, 1)}
            log.warning("training %s failed: %s", job, exc)
        with self._lock:
            self._state = {**self._state, **state}

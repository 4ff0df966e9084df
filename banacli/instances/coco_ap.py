"""COCO mask AP of instance masks (``bana eval --what instances``), with pycocotools' COCOeval.

Ground truth:

* COCO data: the split's instances JSON as it is (its ``segmentation``, ``area``, ``iscrowd``),
  restricted to the images the reader accepted.
* VOC data: built from ROOT/SegmentationObject/ID.png + the XML: instance value k is the k-th
  <object> (VOC's convention), its class the object's name; ``area`` its pixel count;
  ``difficult`` objects become ``iscrowd: 1`` (COCOeval ignores detections matched to them).
  Images of the split without SegmentationObject are left out and counted.

Detections are COCO result lists (see :mod:`banacli.instances.pseudo_masks`). The six numbers are
COCOeval's ``stats[0:6]``: AP (IoU .50:.05:.95), AP50, AP75, APS, APM, APL (areas < 32², 32²–96²,
> 96² pixels), with 100 detections per image. An area range with no ground truth gives -1
(pycocotools' convention), reported as null.
"""

from __future__ import annotations

import contextlib
import io
import json
from typing import Any

import numpy as np
import torch

from banacli.data.synth_coco import encode_mask, voc_instances
from banacli.errors import ArtifactError, DataError
from banacli.instances.pseudo_masks import result_entry

METRICS = ("AP", "AP50", "AP75", "APS", "APM", "APL")

__all__ = ["METRICS", "coco_eval_segm", "ground_truth", "voc_ground_truth"]


def voc_ground_truth(ds) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A COCO GT dict for a VOCDataset from SegmentationObject; and the ids left out (no mask)."""
    images, anns, missing = [], [], []
    for sid in ds.ids:
        try:
            s, masks = voc_instances(ds.root, sid, ds.classes)
        except DataError as exc:
            if "SegmentationObject" in str(exc) and "not found" in str(exc):
                missing.append((sid, str(exc)))
                continue
            raise
        images.append({"id": sid, "file_name": f"{sid}", "width": s.width, "height": s.height})
        for k, (box, lab) in enumerate(zip(s.boxes.tolist(), s.labels.tolist())):
            x0, y0, x1, y1 = box
            anns.append({"id": len(anns) + 1, "image_id": sid, "category_id": int(lab),
                         "segmentation": encode_mask(masks[k]), "area": float(masks[k].sum()),
                         "bbox": [x0, y0, x1 - x0, y1 - y0],
                         "iscrowd": int(bool(s.difficult[k])) if s.difficult is not None else 0})
    cats = [{"id": i + 1, "name": n} for i, n in enumerate(ds.classes)]
    return {"images": images, "annotations": anns, "categories": cats}, missing


def ground_truth(ds) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The GT dict of a VOCDataset or COCODataset (module docstring), and ids left out."""
    if getattr(ds, "format", "voc") != "coco":
        return voc_ground_truth(ds)
    keep = {ds.coco_ids[s] for s in ds.ids}
    data = ds.coco.dataset
    return {"images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
            "categories": data["categories"]}, []


def coco_eval_segm(gt: dict[str, Any], results: list[dict]) -> dict[str, Any]:
    """COCOeval (segm) of ``results`` against ``gt``: {AP, AP50, ...} (fractions, None for -1)
    plus ``summary`` (pycocotools' printed table)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    img_ids = [im["id"] for im in gt["images"]]
    known = set(img_ids)
    stray = [r["image_id"] for r in results if r["image_id"] not in known]
    if stray:
        raise ArtifactError(f"detections for image id {stray[0]!r}, which is not in the ground truth "
                            "(labels made for another split or dataset?)")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_gt = COCO()
        coco_gt.dataset = {**gt, "annotations": [dict(a) for a in gt["annotations"]]}
        for a in coco_gt.dataset["annotations"]:
            a.setdefault("iscrowd", 0)
        coco_gt.createIndex()
        if not results:
            return {**dict.fromkeys(METRICS, 0.0), "summary": "no detections", "detections": 0}
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        ev = COCOeval(coco_gt, coco_dt, "segm")
        ev.params.imgIds = img_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(v) for v in ev.stats[:6]]
    out: dict[str, Any] = {m: (None if v < 0 else v) for m, v in zip(METRICS, stats)}
    out["summary"] = buf.getvalue().strip()
    out["detections"] = len(results)
    return out


def table_row(scores: dict[str, Any]) -> list[str]:
    return ["—" if scores.get(m) is None else f"{100 * scores[m]:.1f}" for m in METRICS]


def load_results(path, *, what: str) -> list[dict]:
    """A COCO result list read from ``path``, checked for the keys COCOeval needs."""
    if not path.is_file():
        raise ArtifactError(f"{path}: no instance masks ({what})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read result JSON ({exc})") from None
    if not isinstance(data, list):
        raise ArtifactError(f"{path}: not a COCO result list")
    for i, r in enumerate(data):
        if not isinstance(r, dict) or not {"image_id", "category_id", "segmentation", "score"} <= set(r):
            raise ArtifactError(f"{path}: entry {i + 1} needs image_id, category_id, segmentation and score")
    return data


def model_results(ds, run_dir, device) -> tuple[list[dict], dict[str, Any]]:
    """Detections of the instance model of RUN (banacli.instances.maskrcnn, from bana train-inst)."""
    try:
        from banacli.instances.maskrcnn import load_instance_model, predict_instances  # loads torch
    except ImportError:
        raise ArtifactError(f"{run_dir}: no instance model support in this install "
                            "(banacli.instances.maskrcnn missing; run bana train-inst from a version that has it)") from None

    loaded = load_instance_model(run_dir, device, class_names=ds.class_names)
    model, meta = loaded if isinstance(loaded, tuple) else (loaded, {})
    out = []
    for i in range(len(ds)):
        s = ds.load(i)
        with torch.no_grad():
            found = predict_instances(model, s.image)
        for det in found:
            mask = np.asarray(det["mask"])
            if mask.dtype != bool:
                mask = mask >= 0.5
            out.append(result_entry(ds, s.id, int(det["label"]), mask, float(det["score"]), det["box"]))
    return out, {"model": str(run_dir), "arch": meta.get("arch"), "model_sha256": meta.get("weights_sha256")}

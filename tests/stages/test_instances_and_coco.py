"""Instance pseudo masks, ``bana eval --what instances`` and every stage on COCO data."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from banacli.data.palette import load_label_png
from banacli.data.voc import VOCDataset
from banacli.ops.instances import box_instance_masks

from .conftest import TINY_CLS, TINY_SEG, invoke


def independent_voc_gt(root, split: str) -> dict:
    """COCO ground truth from SegmentationObject + XML, built here without bana's converter."""
    import xml.etree.ElementTree as ET

    classes = (root / "classes.txt").read_text().split()
    images, anns = [], []
    for sid in (root / "ImageSets/Segmentation" / f"{split}.txt").read_text().split():
        obj = np.array(load_label_png(root / "SegmentationObject" / f"{sid}.png"))
        images.append({"id": sid, "width": obj.shape[1], "height": obj.shape[0]})
        for k, o in enumerate(ET.parse(root / "Annotations" / f"{sid}.xml").getroot().iter("object"), start=1):
            m = np.asfortranarray((obj == k).astype(np.uint8))
            rle = mask_utils.encode(m)
            anns.append({"id": len(anns) + 1, "image_id": sid, "category_id": classes.index(o.findtext("name")) + 1,
                         "segmentation": rle, "area": float(m.sum()), "iscrowd": 0, "bbox": [0, 0, 1, 1]})
    return {"images": images, "annotations": anns, "categories": [{"id": i + 1} for i in range(len(classes))]}


def pycoco_stats(gt: dict, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        g = COCO()
        g.dataset = gt
        g.createIndex()
        ev = COCOeval(g, g.loadRes(results), "segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats[:6]


def test_voc_instance_masks_and_eval_equal_pycocotools(tiny_data, fresh_cls_run, app, tmp_path):
    run = fresh_cls_run
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "-q"]).exit_code == 0
    ycrf = json.loads((run / "labels" / "instances_Ycrf.json").read_text())
    yret = json.loads((run / "labels" / "instances_Yret.json").read_text())
    ds = VOCDataset(tiny_data, "train")
    assert {r["image_id"] for r in ycrf} <= set(ds.ids) and {r["category_id"] for r in ycrf} <= set(range(1, 6))
    # each entry is its box's mask in the PNG under the smallest-box rule; scores are the two sets' IoU
    s = ds.load(0)
    masks = {n: box_instance_masks(load_label_png(run / "labels" / n / f"{s.id}.png"), s.boxes, s.labels)
             for n in ("Ycrf", "Yret")}
    mine = [r for r in ycrf if r["image_id"] == s.id]
    nonempty = [k for k in range(len(s.labels)) if masks["Ycrf"][k].any()]
    assert len(mine) == len(nonempty)
    for r, k in zip(mine, nonempty):
        np.testing.assert_array_equal(mask_utils.decode(r["segmentation"]).astype(bool), masks["Ycrf"][k])
        inter = (masks["Ycrf"][k] & masks["Yret"][k]).sum()
        assert r["score"] == pytest.approx(inter / (masks["Ycrf"][k] | masks["Yret"][k]).sum())
        assert r["category_id"] == s.labels[k]
    info = json.loads((run / "labels" / "instances.json").read_text())
    assert info["split"] == "train" and info["images"] == len(ds)

    gt = independent_voc_gt(tiny_data, "train")
    for labels, results in (("ycrf", ycrf), ("yret", yret)):
        res = invoke(app, ["eval", "--data", tiny_data, "--run", run, "--what", "instances", "--split", "train",
                           "--labels", labels])
        assert res.exit_code == 0, res.output
        assert "AP50" in res.output
        got = json.loads((run / "eval" / f"metrics-instances-labels-{labels}-train.json").read_text())
        expect = pycoco_stats(gt, results)
        for m, v in zip(("AP", "AP50", "AP75", "APS", "APM", "APL"), expect):
            assert (got[m] is None and v < 0) or got[m] == pytest.approx(v, abs=1e-12), m
    # the Box baseline: rectangles with score 1
    res = invoke(app, ["eval", "--data", tiny_data, "--run", run, "--what", "instances", "--split", "train",
                       "--set", "eval.instances=box", "-q"])
    assert res.exit_code == 0, res.output
    box = json.loads((run / "eval" / "metrics-instances-box-train.json").read_text())
    assert box["detections"] == sum(len(ds.load(i).labels) for i in range(len(ds)))
    # wrong split: one clear line
    res = invoke(app, ["eval", "--data", tiny_data, "--run", run, "--what", "instances", "--split", "val"])
    assert res.exit_code != 0 and "made for split 'train'" in res.output
    # no instance model in this run
    res = invoke(app, ["eval", "--data", tiny_data, "--run", run, "--what", "instances", "--split", "train",
                       "--set", "eval.instances=model"])
    assert res.exit_code != 0 and ("instance model" in res.output.lower() or "train-inst" in res.output)
    assert "Traceback" not in res.output


def test_every_stage_on_coco_data(tmp_path, app):
    data, run = tmp_path / "coco", tmp_path / "run"
    res = invoke(app, ["synth", data, "--images", 8, "--val", 3, "--size", 48, "--seed", 5, "--format", "coco", "-q"])
    assert res.exit_code == 0, res.output
    assert (data / "annotations" / "instances_train.json").is_file() and (data / "val").is_dir()
    res = invoke(app, ["train-cls", "--data", data, "--run", run, "--iterations", 4, *TINY_CLS])
    assert res.exit_code == 0, res.output
    res = invoke(app, ["gen-labels", "--data", data, "--run", run, "-q"])
    assert res.exit_code == 0, res.output
    raw = json.loads((data / "annotations" / "instances_train.json").read_text())
    results = json.loads((run / "labels" / "instances_Yret.json").read_text())
    assert results and {r["category_id"] for r in results} <= {1, 3, 5, 7, 9}  # the file's own ids
    assert {r["image_id"] for r in results} <= {im["id"] for im in raw["images"]}
    res = invoke(app, ["eval", "--data", data, "--run", run, "--what", "instances", "--split", "train", "-q"])
    assert res.exit_code == 0, res.output
    got = json.loads((run / "eval" / "metrics-instances-labels-ycrf-train.json").read_text())
    ycrf = json.loads((run / "labels" / "instances_Ycrf.json").read_text())
    expect = pycoco_stats(raw, ycrf)
    assert got["AP"] == pytest.approx(expect[0], abs=1e-12)
    res = invoke(app, ["eval", "--data", data, "--run", run, "--what", "labels", "--split", "train", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((run / "labels" / "bana.report.json").read_text())
    miou = json.loads((run / "eval" / "metrics-labels-ycrf-train.json").read_text())["miou"]
    assert miou == pytest.approx(report["miou"]["Ycrf"])  # the stage's report and eval agree on COCO GT
    res = invoke(app, ["train-seg", "--data", data, "--run", run, "--iterations", 2, *TINY_SEG])
    assert res.exit_code == 0, res.output
    res = invoke(app, ["eval", "--data", data, "--run", run, "--set", "eval.crf=false", "--set", "eval.ms=false", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "eval" / "metrics-seg-val.json").read_text())["images"] == 3
    res = invoke(app, ["predict", "--run", run, data / "val", "--out", tmp_path / "pred", "-q"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pred").glob("*_overlay.jpg"))) == 3
    # class-agnostic generator (1 - u0; the classifier's class weights unused) writes instances too
    res = invoke(app, ["gen-labels", "--data", data, "--run", run, "--set", "labels.class_agnostic=true", "--force",
                       "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "labels" / "instances_Ycrf.json").read_text())


def test_model_instances_scored_through_the_instseg_api(tiny_data, tmp_path, app, monkeypatch):
    """``eval.instances=model`` with a stand-in banacli.instances.maskrcnn that 'predicts' the ground truth
    (from SegmentationObject) plus one stray low-score detection per image: AP = 1."""
    import sys
    import types

    from banacli.data.synth_coco import voc_instances

    ds = VOCDataset(tiny_data, "val")
    by_pixels = {}
    for sid in ds.ids:
        s, masks = voc_instances(tiny_data, sid, ds.classes)
        by_pixels[s.image.tobytes()] = (s, masks)

    fake = types.ModuleType("banacli.instances.maskrcnn")
    fake.load_instance_model = lambda run_dir, device, class_names=None: ("model", {"arch": "fake"})

    def predict_instances(model, image):
        s, masks = by_pixels[image.tobytes()]
        stray = np.zeros(image.shape[:2], bool)
        stray[:3, :3] = True
        return [*({"box": b.tolist(), "label": int(c), "score": 0.9, "mask": m}
                  for b, c, m in zip(s.boxes, s.labels, masks)),
                {"box": [0, 0, 3, 3], "label": 1, "score": 0.1, "mask": stray}]

    fake.predict_instances = predict_instances
    monkeypatch.setitem(sys.modules, "banacli.instances.maskrcnn", fake)
    run = tmp_path / "run"
    res = invoke(app, ["eval", "--data", tiny_data, "--run", run, "--what", "instances", "--split", "val",
                       "--set", "eval.instances=model", "-q"])
    assert res.exit_code == 0, res.output
    got = json.loads((run / "eval" / "metrics-instances-model-val.json").read_text())
    assert got["AP"] == pytest.approx(1.0) and got["AP50"] == pytest.approx(1.0)
    assert got["detections"] == got["ground_truth_instances"] + len(ds)

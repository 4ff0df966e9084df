"""``bana export-labels``: every format read back with a real reader equals bana's labels.

The runs here hold label PNGs made from the synthetic ground truth (Ycrf) and a perturbed copy
(Yret), with one box's pixels erased so that its mask comes out empty; one test runs the real
``gen-labels --method box`` and checks the export against gen-labels' own instance file.
"""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from typer.testing import CliRunner

from banacli.boxes import box_pixel_ranges, definite_background
from banacli.cli import build_app
from banacli.data.coco import COCODataset
from banacli.data.palette import PALETTE, VOID, load_label_png, save_label_png
from banacli.data.synthetic import generate
from banacli.data.synth_coco import generate_coco
from banacli.data.voc import VOCDataset
from banacli.interop.masks import decode_brush_rle, polygons_to_mask
from banacli.ops.instances import box_instance_masks
from banacli.runs import dataset_digest

SPLIT = "train"


@pytest.fixture(scope="module")
def app():
    return build_app()


def bana(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _fake_bana_run(run: Path, ds) -> dict:
    """RUN/labels as gen-labels --method bana writes it: Ycrf = ground truth, Yret = Ycrf with
    its top rows set to background; in the first image the first box's pixels are erased from
    both (an empty mask), in the second a pixel outside every box gets a class.
    Returns {"empty": (image id, box index)}."""
    labels = run / "labels"
    for i, sid in enumerate(ds.ids):
        gt = ds.load(i).gt.copy()
        if i == 0:
            s = ds.load(0)
            c0, r0, c1, r1 = box_pixel_ranges(s.boxes[:1], s.height, s.width)[0]
            box = gt[r0:r1, c0:c1]
            box[box == s.labels[0]] = 0
        if i == 1:  # a class pixel outside every box: in no instance (SegmentationObject: void)
            s = ds.load(1)
            outside = np.argwhere(definite_background(s.boxes, s.height, s.width)[6:]) + (6, 0)
            gt[tuple(outside[0])] = s.labels[0]
        yret = gt.copy()
        yret[:6] = 0
        save_label_png(labels / "Ycrf" / f"{sid}.png", gt)
        save_label_png(labels / "Yret" / f"{sid}.png", yret)
    manifest = {"method": "bana", "split": SPLIT, "outputs": ["Ycrf", "Yret"], "dataset": dataset_digest(ds)}
    (labels / "bana.manifest.json").write_text(json.dumps(manifest))
    return {"empty": (ds.ids[0], 0)}


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-voc")
    generate(root / "data", images=5, size=48, seed=5)
    ds = VOCDataset(root / "data", SPLIT)
    info = _fake_bana_run(root / "run", ds)
    return root / "data", root / "run", ds, info


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    root = tmp_path_factory.mktemp("export-coco")
    generate_coco(root / "data", images=5, size=48, seed=6)
    ann = root / "data" / "annotations" / f"instances_{SPLIT}.json"
    doc = json.loads(ann.read_text())
    # the user's own extras, which the export must keep: top-level keys, fields, a crowd region
    doc["licenses"] = [{"id": 7, "name": "mine"}]
    for a in doc["annotations"]:
        a["reviewer"] = f"r{a['id']}"
    first = doc["images"][0]
    doc["annotations"].append({"id": 9999, "image_id": first["id"], "category_id": doc["categories"][0]["id"],
                               "bbox": [0, 0, 3, 3], "iscrowd": 1, "area": 9, "segmentation": [],
                               "reviewer": "crowd"})
    ann.write_text(json.dumps(doc))
    ds = COCODataset(root / "data", SPLIT)
    info = _fake_bana_run(root / "run", ds)
    return root / "data", root / "run", ds, info


def _instances(run: Path, ds, index: int, which: str = "Ycrf") -> np.ndarray:
    sid = ds.ids[index]
    lab = load_label_png(run / "labels" / which / f"{sid}.png")
    boxes, labels = ds.box_labels(index, *lab.shape)
    return box_instance_masks(lab, boxes, labels)


def _box_background(run: Path, ds, index: int, k: int, which: str = "Ycrf") -> np.ndarray:
    """The box fallback: the pixels of box k that the label set calls background."""
    lab = load_label_png(run / "labels" / which / f"{ds.ids[index]}.png")
    boxes, _ = ds.box_labels(index, *lab.shape)
    c0, r0, c1, r1 = box_pixel_ranges(boxes[k : k + 1], *lab.shape)[0]
    m = np.zeros(lab.shape, bool)
    m[r0:r1, c0:c1] = lab[r0:r1, c0:c1] == 0
    return m


def _filled(mask: np.ndarray) -> np.ndarray:
    import cv2

    out = np.zeros(mask.shape, np.uint8)
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, cs, -1, 1, -1)
    return out.astype(bool)


def test_coco_from_voc_ann_to_mask_equals_label_instances(app, voc, tmp_path):
    data, run, ds, info = voc
    res = bana(app, "export-labels", "--data", data, "--run", run, "--format", "coco", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    path = tmp_path / "c" / "annotations" / f"instances_{SPLIT}.json"
    api = COCO(str(path))
    assert [c["name"] for c in api.loadCats(api.getCatIds())] == ds.classes
    n_boxes = 0
    for i, sid in enumerate(ds.ids):
        img = [im for im in api.dataset["images"] if im["bana_id"] == sid][0]
        anns = api.loadAnns(api.getAnnIds(imgIds=[img["id"]]))
        masks = _instances(run, ds, i)
        assert len(anns) == len(masks)
        n_boxes += len(masks)
        for k, ann in enumerate(anns):
            got = api.annToMask(ann).astype(bool)
            if (sid, k) == info["empty"]:
                assert not masks[k].any() and ann["bana_fallback"] == "box"
                assert got.any() and np.array_equal(got, _box_background(run, ds, i, k))
            else:
                assert np.array_equal(got, masks[k])
            assert ann["area"] == got.sum()
    assert f"{n_boxes} boxes" in res.output and "1 boxes had an empty mask" in res.output


def test_coco_users_file_keeps_ids_and_fields(app, coco, tmp_path):
    data, run, ds, info = coco
    src = json.loads(ds.ann_path.read_text())
    res = bana(app, "export-labels", "--data", data, "--run", run, "--labels", "yret", "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    path = tmp_path / "c" / "annotations" / f"instances_{SPLIT}.json"
    out = json.loads(path.read_text())
    assert out["images"] == src["images"] and out["categories"] == src["categories"]
    assert out["licenses"] == src["licenses"]
    assert [a["id"] for a in out["annotations"]] == [a["id"] for a in src["annotations"]]
    api = COCO(str(path))
    for a_src, a_out in zip(src["annotations"], out["annotations"]):
        for key, value in a_src.items():
            if key not in ("segmentation", "area"):
                assert a_out[key] == value
        if a_src["iscrowd"]:
            assert a_out == a_src  # crowd regions are not boxes: untouched
    id_to_sid = {v: k for k, v in ds.coco_ids.items()}
    for i, sid in enumerate(ds.ids):
        anns = [a for a in out["annotations"] if id_to_sid[a["image_id"]] == sid and not a["iscrowd"]]
        masks = _instances(run, ds, i, "Yret")
        for k, ann in enumerate(anns):
            if (sid, k) != info["empty"]:
                assert np.array_equal(api.annToMask(ann).astype(bool), masks[k])


def test_coco_polygons_and_agreement(app, coco, tmp_path):
    data, run, ds, info = coco
    res = bana(app, "export-labels", "--data", data, "--run", run, "--labels", "agreement", "--polygons",
               "--fallback", "empty", "--out", tmp_path / "p")
    assert res.exit_code == 0, res.output
    api = COCO(str(tmp_path / "p" / "annotations" / f"instances_{SPLIT}.json"))
    id_to_sid = {v: k for k, v in ds.coco_ids.items()}
    checked = 0
    for i, sid in enumerate(ds.ids):
        ycrf = load_label_png(run / "labels" / "Ycrf" / f"{sid}.png")
        yret = load_label_png(run / "labels" / "Yret" / f"{sid}.png")
        agree = np.where(ycrf == yret, ycrf, VOID).astype(np.uint8)
        boxes, labels = ds.box_labels(i, *agree.shape)
        masks = box_instance_masks(agree, boxes, labels)
        anns = [a for a in api.dataset["annotations"] if id_to_sid[a["image_id"]] == sid and not a["iscrowd"]]
        for k, ann in enumerate(anns):
            got = api.annToMask(ann).astype(bool)
            if not masks[k].any():  # --fallback empty: kept, with an empty mask and area 0
                assert ann["bana_fallback"] == "empty" and ann["area"] == 0 and not got.any()
                continue
            assert isinstance(ann["segmentation"], list)
            assert np.array_equal(got, _filled(masks[k]))
            checked += 1
    assert checked > 0


def test_voc_pngs_read_back_with_the_palette(app, voc, tmp_path):
    data, run, ds, info = voc
    res = bana(app, "export-labels", "--data", data, "--run", run, "--format", "voc", "--labels", "agreement",
               "--fallback", "skip", "--copy-images", "--out", tmp_path / "v")
    assert res.exit_code == 0, res.output
    out = tmp_path / "v"
    assert (out / "ImageSets" / "Segmentation" / f"{SPLIT}.txt").read_text().split() == ds.ids
    labelmap = (out / "labelmap.txt").read_text().splitlines()
    assert labelmap[1] == "background:0,0,0::" and labelmap[-1] == "ignored:224,224,192::"
    for i, sid in enumerate(ds.ids):
        ycrf = load_label_png(run / "labels" / "Ycrf" / f"{sid}.png")
        yret = load_label_png(run / "labels" / "Yret" / f"{sid}.png")
        for sub in ("SegmentationClass", "SegmentationObject"):
            with Image.open(out / sub / f"{sid}.png") as im:
                assert im.mode == "P"
                assert np.array_equal(np.array(im.getpalette()[: 3 * 256]).reshape(256, 3), PALETTE)
        cls = load_label_png(out / "SegmentationClass" / f"{sid}.png")
        assert np.array_equal(cls, np.where(ycrf == yret, ycrf, VOID))
        obj = load_label_png(out / "SegmentationObject" / f"{sid}.png")
        boxes, labels = ds.box_labels(i, *cls.shape)
        masks = box_instance_masks(cls, boxes, labels)
        for k in range(len(masks)):
            assert np.array_equal(obj == k + 1, masks[k])
        assert np.array_equal(obj == VOID, (cls != 0) & ~masks.any(0))
        assert (out / "JPEGImages" / ds.image_path(sid).name).read_bytes() == ds.image_path(sid).read_bytes()
    assert "written without a mask (--fallback skip)" in res.output


def test_yolo_polygons_parse_and_rasterise_back(app, voc, tmp_path):
    data, run, ds, info = voc
    res = bana(app, "export-labels", "--data", data, "--run", run, "--format", "yolo", "--fallback", "skip",
               "--out", tmp_path / "y")
    assert res.exit_code == 0, res.output
    import yaml

    meta = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert meta["names"] == dict(enumerate(ds.classes))
    for i, sid in enumerate(ds.ids):
        masks = _instances(run, ds, i)
        h, w = masks.shape[1:]
        _, labels = ds.box_labels(i, h, w)
        got = np.zeros((len(ds.class_names), h, w), bool)
        for line in (tmp_path / "y" / "labels" / SPLIT / f"{sid}.txt").read_text().splitlines():
            cls, *coords = line.split()
            xy = np.array(coords, dtype=float).reshape(-1, 2)
            assert len(xy) >= 3 and (xy >= 0).all() and (xy <= 1).all()
            poly = (xy * (w, h)).ravel().tolist()
            got[int(cls) + 1] |= polygons_to_mask([poly], h, w)
        want = np.zeros_like(got)
        for k, lab in enumerate(labels):
            want[lab] |= _filled(masks[k])
        assert np.array_equal(got, want)


def test_labelstudio_tasks_brush_masks_decode(app, voc, tmp_path):
    data, run, ds, info = voc
    res = bana(app, "export-labels", "--data", data, "--run", run, "--format", "labelstudio", "--fallback", "skip",
               "--out", tmp_path / "ls")
    assert res.exit_code == 0, res.output
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert [t["data"]["bana_id"] for t in tasks] == ds.ids
    config = ET.fromstring((tmp_path / "ls" / "label_config.xml").read_text())
    assert config.find("BrushLabels").get("name") == "mask" and config.find("Image").get("name") == "image"
    assert [lab.get("value") for lab in config.find("RectangleLabels")] == ds.classes
    for i, task in enumerate(tasks):
        sid = ds.ids[i]
        assert task["data"]["image"] == f"/data/local-files/?d=JPEGImages/{ds.image_path(sid).name}"
        masks = _instances(run, ds, i)
        h, w = masks.shape[1:]
        boxes, labels = ds.box_labels(i, h, w)
        result = {r["id"]: r for r in task["predictions"][0]["result"]}
        for k in range(len(masks)):
            rect = result[f"box{k + 1}"]["value"]
            assert rect["rectanglelabels"] == [ds.class_names[labels[k]]]
            assert rect["x"] * w / 100 == pytest.approx(boxes[k][0])
            assert (rect["y"] + rect["height"]) * h / 100 == pytest.approx(boxes[k][3])
            if (sid, k) == info["empty"]:
                assert f"mask{k + 1}" not in result  # --fallback skip: the box, no mask
                continue
            brush = result[f"mask{k + 1}"]
            assert brush["type"] == "brushlabels" and brush["from_name"] == "mask"
            assert np.array_equal(decode_brush_rle(brush["value"]["rle"], h, w), masks[k])


def test_export_matches_gen_labels_instances(app, tmp_path):
    """A real gen-labels run (box labeler): the exported masks are gen-labels' own instances."""
    generate(tmp_path / "data", images=4, size=40, seed=2)
    res = bana(app, "gen-labels", "--data", tmp_path / "data", "--run", tmp_path / "run", "--method", "box", "-q")
    assert res.exit_code == 0, res.output
    res = bana(app, "export-labels", "--data", tmp_path / "data", "--run", tmp_path / "run", "--method", "box")
    assert res.exit_code == 0, res.output
    api = COCO(str(tmp_path / "run" / "export_labels" / "coco" / "annotations" / f"instances_{SPLIT}.json"))
    ours = {}
    for ann in api.dataset["annotations"]:
        sid = api.imgs[ann["image_id"]]["bana_id"]
        ours.setdefault(sid, []).append(api.annToMask(ann).astype(bool))
    theirs = {}
    for r in json.loads((tmp_path / "run" / "labels" / "instances_Box.json").read_text()):
        theirs.setdefault(r["image_id"], []).append(mask_utils.decode(r["segmentation"]).astype(bool))
    assert ours.keys() == theirs.keys()
    for sid in ours:
        assert len(ours[sid]) == len(theirs[sid])
        assert all(np.array_equal(a, b) for a, b in zip(ours[sid], theirs[sid]))
    report = json.loads((tmp_path / "run" / "export_labels" / "coco.report.json").read_text())
    assert report["boxes"] == report["masks"] == len(api.dataset["annotations"])


def test_errors_are_one_line_and_nothing_is_clobbered(app, voc, tmp_path):
    data, run0, ds, info = voc
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    out = tmp_path / "o"
    assert bana(app, "export-labels", "--data", data, "--run", run, "--out", out).exit_code == 0
    target = out / "annotations" / f"instances_{SPLIT}.json"
    before = target.read_bytes()
    res = bana(app, "export-labels", "--data", data, "--run", run, "--out", out, "--polygons")
    assert res.exit_code == 1 and f"{target}: exists" in res.output and "--force" in res.output
    assert target.read_bytes() == before
    res = bana(app, "export-labels", "--data", data, "--run", run, "--out", out, "--polygons", "--force")
    assert res.exit_code == 0 and target.read_bytes() != before

    missing = run / "labels" / "Ycrf" / f"{ds.ids[2]}.png"
    missing.unlink()
    res = bana(app, "export-labels", "--data", data, "--run", run, "--out", tmp_path / "o2", "--format", "voc")
    assert res.exit_code == 1 and f"{missing}: label file not found" in res.output
    assert not (tmp_path / "o2").exists()  # checked before anything is written
    assert "Traceback" not in res.output

    res = bana(app, "export-labels", "--data", data, "--run", run, "--labels", "nope", "--out", tmp_path / "o3")
    assert res.exit_code == 2 and "Ycrf, Yret, agreement" in res.output
    res = bana(app, "export-labels", "--data", data, "--run", tmp_path / "empty-run", "--out", tmp_path / "o4")
    assert res.exit_code == 1 and "bana.manifest.json: no pseudo labels" in res.output


def test_voc_box_fallback_keeps_class_and_object_consistent(app, voc, tmp_path):
    data, run, ds, info = voc
    res = bana(app, "export-labels", "--data", data, "--run", run, "--format", "voc", "--out", tmp_path / "v")
    assert res.exit_code == 0, res.output
    sid, k = info["empty"]
    index = ds.ids.index(sid)
    cls = load_label_png(tmp_path / "v" / "SegmentationClass" / f"{sid}.png")
    obj = load_label_png(tmp_path / "v" / "SegmentationObject" / f"{sid}.png")
    fallback = _box_background(run, ds, index, k)
    _, labels = ds.box_labels(index, *cls.shape)
    assert fallback.any()
    assert np.array_equal(obj == k + 1, fallback) and (cls[fallback] == labels[k]).all()
    for i, image_id in enumerate(ds.ids):  # every instance has one class, as VOC readers assume
        cls = load_label_png(tmp_path / "v" / "SegmentationClass" / f"{image_id}.png")
        obj = load_label_png(tmp_path / "v" / "SegmentationObject" / f"{image_id}.png")
        _, labels = ds.box_labels(i, *cls.shape)
        for n in set(np.unique(obj).tolist()) - {0, VOID}:
            assert set(np.unique(cls[obj == n]).tolist()) == {int(labels[n - 1])}


def test_images_gen_labels_skipped_are_reported_and_kept(app, coco, tmp_path):
    data, run0, ds, info = coco
    run = tmp_path / "run"
    shutil.copytree(run0, run)
    gone = ds.ids[1]
    for d in ("Ycrf", "Yret"):
        (run / "labels" / d / f"{gone}.png").unlink()
    (run / "labels" / "bana.skipped.json").write_text(json.dumps({gone: "unreadable image"}))
    res = bana(app, "export-labels", "--data", data, "--run", run, "--out", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert "could not export 1:" in res.output and f"{gone}: skipped by gen-labels (unreadable image)" in res.output
    src = json.loads(ds.ann_path.read_text())
    out = json.loads((tmp_path / "c" / "annotations" / f"instances_{SPLIT}.json").read_text())
    coco_id = ds.coco_ids[gone]
    kept = [a for a in out["annotations"] if a["image_id"] == coco_id]
    assert kept and kept == [a for a in src["annotations"] if a["image_id"] == coco_id]  # unchanged
    report = json.loads((run / "export_labels" / "coco.report.json").read_text())
    assert report["images"] == len(ds.ids) - 1 and len(report["not_exported"]) == 1

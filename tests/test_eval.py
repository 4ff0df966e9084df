"""bana eval: the numbers against hand-counted and independently computed confusion matrices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from banacli.data.palette import save_label_png
from banacli.models.normalize import normalize
from banacli.runs import load_segmenter

from .segrun import CLASS_NAMES, invoke, make_seg_run, random_image, write_image

# Image "a" (4 x 4): ground truth and a pseudo label, class ids 0 bg, 1 cat, 2 dog, 255 void.
GT_A = np.array([[0, 0, 1, 1],
                 [0, 0, 1, 1],
                 [2, 2, 255, 255],
                 [2, 2, 0, 0]], np.uint8)  # fmt: skip
YCRF_A = np.array([[0, 1, 1, 1],
                   [0, 0, 1, 1],
                   [2, 0, 1, 1],
                   [2, 2, 0, 255]], np.uint8)  # fmt: skip
# Image "b" (4 x 4): all cat; the pseudo label calls one pixel dog.
GT_B = np.ones((4, 4), np.uint8)
YCRF_B = GT_B.copy()
YCRF_B[3, 3] = 2


def _xml(boxes: list[tuple[str, int, int, int, int]], w: int, h: int) -> str:
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
        f"<ymax>{y1}</ymax></bndbox></object>" for n, x0, y0, x1, y1 in boxes
    )
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


@pytest.fixture
def hand_data(tmp_path) -> Path:
    """A two-class VOC-layout dataset written by hand; image c has no ground truth."""
    root = tmp_path / "data"
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    for i, image_id in enumerate("abc"):
        write_image(root / "JPEGImages" / f"{image_id}.png", random_image(4, 4, i))
    # VOC boxes are 1-based inclusive: the cat box covers columns 1..3 and rows 0..1 (0-based),
    # one column wider than the cat; the dog box is exactly the dog.
    (root / "Annotations" / "a.xml").write_text(_xml([("cat", 2, 1, 4, 2), ("dog", 1, 3, 2, 4)], 4, 4))
    (root / "Annotations" / "b.xml").write_text(_xml([("cat", 1, 1, 4, 4)], 4, 4))
    (root / "Annotations" / "c.xml").write_text(_xml([("dog", 1, 1, 2, 2)], 4, 4))
    save_label_png(root / "SegmentationClass" / "a.png", GT_A)
    save_label_png(root / "SegmentationClass" / "b.png", GT_B)
    splits = root / "ImageSets" / "Segmentation"
    (splits / "val.txt").write_text("a\nb\nc\n")
    (splits / "boxval.txt").write_text("a\n")
    (splits / "nogt.txt").write_text("c\n")
    return root


def _write_labels(run: Path) -> None:
    save_label_png(run / "labels" / "Ycrf" / "a.png", YCRF_A)
    save_label_png(run / "labels" / "Ycrf" / "b.png", YCRF_B)


def test_pseudo_label_scores_match_hand_count(hand_data, tmp_path):
    run = tmp_path / "run"
    _write_labels(run)
    res = invoke(["eval", "--data", hand_data, "--run", run, "--split", "val", "--what", "labels", "--labels", "ycrf"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "eval" / "metrics-labels-ycrf-val.json").read_text())
    # Counted by hand over the 30 non-void ground-truth pixels of a and b (c has no ground truth):
    # gt bg : 4 bg, 1 cat, 1 void   gt cat: 19 cat, 1 dog   gt dog: 1 bg, 3 dog
    assert m["confusion_matrix"] == [[4, 1, 0], [0, 19, 1], [1, 0, 3]]
    assert m["predicted_void"] == [1, 0, 0]
    assert m["pixels"] == 30 and m["images"] == 2 and m["images_without_gt"] == 1
    # IoU = TP / (gt + predicted - TP); a void prediction is a miss, not a false positive
    assert m["iou"] == pytest.approx({"background": 4 / 7, "cat": 19 / 21, "dog": 3 / 5})
    assert m["miou"] == pytest.approx(218 / 315)
    assert m["pixel_acc"] == pytest.approx(26 / 30)
    assert m["mean_acc"] == pytest.approx((4 / 6 + 19 / 20 + 3 / 4) / 3)
    assert m["class_names"] == CLASS_NAMES
    # the table is printed
    assert "mIoU" in res.output and "69.2" in res.output


def test_box_baseline_from_annotations(hand_data, tmp_path):
    run = tmp_path / "run"
    res = invoke(["eval", "--data", hand_data, "--run", run, "--split", "boxval", "--what", "labels",
                  "--labels", "box", "-q"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "eval" / "metrics-labels-box-boxval.json").read_text())
    # the cat box is one column too wide: 2 background pixels become cat
    assert m["confusion_matrix"] == [[4, 2, 0], [0, 4, 0], [0, 0, 4]]
    assert m["miou"] == pytest.approx((4 / 6 + 4 / 6 + 1) / 3)
    assert "mIoU" not in res.output  # --quiet: no table


def test_no_ground_truth_is_one_clear_error(hand_data, tmp_path):
    res = invoke(["eval", "--data", hand_data, "--run", tmp_path / "run", "--split", "nogt", "--what", "labels"])
    assert res.exit_code == 1
    assert "no ground-truth mask for any of the 1 images of split 'nogt'" in res.output
    assert "Traceback" not in res.output


def test_missing_pseudo_label_names_the_file(hand_data, tmp_path):
    run = tmp_path / "run"
    _write_labels(run)
    (run / "labels" / "Ycrf" / "b.png").unlink()
    res = invoke(["eval", "--data", hand_data, "--run", run, "--what", "labels"])
    assert res.exit_code == 1
    assert "b.png: pseudo label missing" in res.output
    # with data.on_error=skip the image is left out and counted
    res = invoke(["eval", "--data", hand_data, "--run", run, "--what", "labels", "--set", "data.on_error=skip"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "eval" / "metrics-labels-ycrf-val.json").read_text())
    assert m["images"] == 1 and len(m["skipped"]) == 1 and m["skipped"][0]["id"] == "b"


# ----------------------------------------------------------------------------- the segmenter


@pytest.fixture
def seg_data(tmp_path) -> Path:
    """Three 32 x 40 images with random ground truth (some void), classes cat and dog."""
    root = tmp_path / "segdata"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "classes.txt").write_text("cat\ndog\n")
    rng = np.random.default_rng(5)
    for i in range(3):
        write_image(root / "JPEGImages" / f"im{i}.jpg", random_image(32, 40, 10 + i))
        gt = rng.integers(0, 3, (32, 40)).astype(np.uint8)
        gt[:3] = 255
        save_label_png(root / "SegmentationClass" / f"im{i}.png", gt)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("im0\nim1\nim2\n")
    return root


def _independent_scores(root: Path, run: Path) -> tuple[np.ndarray, float]:
    """Single-scale prediction and IoU written out directly, without bana's eval or metrics code."""
    from PIL import Image

    model, meta = load_segmenter(run / "seg" / "model.safetensors")
    cm = np.zeros((3, 3), np.int64)
    for i in range(3):
        img = np.array(Image.open(root / "JPEGImages" / f"im{i}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(root / "SegmentationClass" / f"im{i}.png"))
        x = normalize(torch.from_numpy(img).permute(2, 0, 1)[None], meta["normalization"])
        with torch.no_grad():
            logits = F.interpolate(model(x)["logits"], size=img.shape[:2], mode="bilinear", align_corners=True)
        pred = logits[0].argmax(0).numpy()
        for g, p in zip(gt.ravel(), pred.ravel()):
            if g != 255:
                cm[g, p] += 1
    ious = []
    for c in range(3):
        tp, fn, fp = cm[c, c], cm[c].sum() - cm[c, c], cm[:, c].sum() - cm[c, c]
        if tp + fn + fp:
            ious.append(tp / (tp + fn + fp))
    return cm, float(np.mean(ious))


def test_segmenter_scores_match_independent_computation(seg_data, tmp_path):
    run = make_seg_run(tmp_path / "run")
    res = invoke(["eval", "--data", seg_data, "--run", run, "--no-ms", "--no-flip", "--no-crf", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    m = json.loads((run / "eval" / "metrics-seg-val.json").read_text())
    cm, miou = _independent_scores(seg_data, run)
    assert m["confusion_matrix"] == cm.tolist()
    assert m["miou"] == pytest.approx(miou)
    assert m["settings"]["crf"] is False and m["settings"]["scales"] == [1.0]
    assert m["pixels"] == 3 * 29 * 40


def test_segmenter_with_crf_is_the_same_in_parallel(seg_data, tmp_path):
    run = make_seg_run(tmp_path / "run")
    out = run / "eval" / "metrics-seg-val.json"
    res = invoke(["eval", "--data", seg_data, "--run", run, "--crf", "--ms", "--flip", "--workers", "1", "-q"])
    assert res.exit_code == 0, res.output
    one = json.loads(out.read_text())
    res = invoke(["eval", "--data", seg_data, "--run", run, "--crf", "--ms", "--flip", "--workers", "2", "-q"])
    assert res.exit_code == 0, res.output
    two = json.loads(out.read_text())
    assert one["confusion_matrix"] == two["confusion_matrix"]
    assert one["settings"]["crf_params"] == [4, 121, 5, 3, 3]
    assert one["settings"]["scales"] == [1.0, 0.5, 0.75, 1.5]
    assert sum(map(sum, one["confusion_matrix"])) == 3 * 29 * 40


def test_segmenter_trained_on_other_classes_is_refused(seg_data, tmp_path):
    run = make_seg_run(tmp_path / "run", ["background", "cat", "cow"])
    res = invoke(["eval", "--data", seg_data, "--run", run, "--no-crf"])
    assert res.exit_code == 1
    assert "class names" in res.output and "model.safetensors" in res.output

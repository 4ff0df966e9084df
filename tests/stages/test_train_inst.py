"""bana train-inst: a tiny Mask R-CNN trains on CPU (pseudo or ground-truth targets), resumes
exactly, and its model works with load_instance_model / predict_instances, predict and export."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from banacli.artifacts import load_model
from banacli.data.palette import load_label_png, save_label_png
from banacli.data.synthetic import generate
from banacli.instances.maskrcnn import load_instance_model, predict_instances
from banacli.instances.targets import pseudo_instance_targets

from .conftest import invoke

TINY_INST = ["--backbone", "tiny", "--weights", "null", "--min-size", "64", "--max-size", "64", "--batch-size", "2",
             "--warmup", "2", "--checkpoint-every", "100", "--log-every", "1", "-q"]


@pytest.fixture(scope="module")
def inst_data(tmp_path_factory):
    """8 training images of 64 px with SegmentationObject (read-only)."""
    root = tmp_path_factory.mktemp("inst-data")
    generate(root, images=8, size=64, seed=5, val=0)
    return root


@pytest.fixture
def pseudo_run(tmp_path, inst_data):
    """RUN/labels/{Ycrf,Yret}: Ycrf = the ground truth, Yret = it with the left 16 columns
    cleared to background (so S excludes whatever object pixels lie there)."""
    run = tmp_path / "run"
    for p in sorted((inst_data / "SegmentationClass").glob("*.png")):
        gt = load_label_png(p)
        ret = gt.copy()
        ret[:, :16] = 0
        save_label_png(run / "labels" / "Ycrf" / p.name, gt)
        save_label_png(run / "labels" / "Yret" / p.name, ret)
    return run


def _losses(run):
    rows = (run / "inst" / "loss.csv").read_text().strip().splitlines()
    head = rows[0].split(",")
    return [dict(zip(head, map(float, r.split(",")))) for r in rows[1:]]


def test_pseudo_targets_and_s():
    ycrf = np.zeros((8, 8), np.uint8)
    ycrf[1:5, 1:5] = 1
    yret = ycrf.copy()
    yret[1:5, 1] = 0
    masks, s = pseudo_instance_targets(ycrf, yret, np.array([[0, 0, 6, 6]], np.float32), np.array([1]))
    assert masks.shape == (1, 8, 8) and masks[0].sum() == 16
    assert s.sum() == 64 - 4 and not s[1:5, 1].any()
    _, none = pseudo_instance_targets(ycrf, yret, np.array([[0, 0, 6, 6]], np.float32), np.array([1]), region="all")
    assert none is None


def test_tiny_mask_rcnn_loss_falls_on_pseudo_masks(inst_data, pseudo_run, app):
    res = invoke(app, ["train-inst", "--data", inst_data, "--run", pseudo_run, "--iterations", 40, "--lr", "0.02",
                       *TINY_INST])
    assert res.exit_code == 0, res.output
    rows = _losses(pseudo_run)
    assert len(rows) == 40 and all(np.isfinite(r["loss"]) for r in rows)
    total = [r["loss"] for r in rows]
    assert np.mean(total[-8:]) < 0.8 * np.mean(total[:8])
    assert np.mean([r["loss_mask"] for r in rows[-8:]]) < np.mean([r["loss_mask"] for r in rows[:8]])
    model, meta = load_instance_model(pseudo_run, "cpu")
    assert meta["arch"] == "maskrcnn/tiny" and meta["mask_region"] == "s" and meta["targets"] == "pseudo"
    assert meta["class_names"][0] == "background" and len(meta["class_names"]) == 6
    image = load_label_png(inst_data / "SegmentationClass" / "000000.png")  # any (H, W, 3) uint8 will do
    found = predict_instances(model, np.repeat(image[:, :, None] * 40, 3, axis=2), score_threshold=0.0)
    for d in found:
        assert len(d["box"]) == 4 and 1 <= d["label"] <= 5 and 0 <= d["score"] <= 1
        assert d["mask"].shape == (64, 64) and d["mask"].dtype == bool
    assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)


@pytest.mark.parametrize("extra", [["--targets", "gt"], ["--mask-region", "all"]], ids=["gt", "all"])
def test_other_targets_and_regions_train(inst_data, pseudo_run, app, extra):
    res = invoke(app, ["train-inst", "--data", inst_data, "--run", pseudo_run, "--iterations", 3, *TINY_INST, *extra])
    assert res.exit_code == 0, res.output
    _, meta = load_model(pseudo_run / "inst" / "model.safetensors")
    assert meta["config"]["inst"][extra[0][2:].replace("-", "_")] == extra[1]


def test_resume_continues_exactly(inst_data, pseudo_run, app, tmp_path, monkeypatch):
    import shutil

    import banacli.engine.loop as loop

    part = tmp_path / "part"
    shutil.copytree(pseudo_run, part)
    args = ["--data", inst_data, "--iterations", 6, *TINY_INST, "--checkpoint-every", "3"]
    assert invoke(app, ["train-inst", "--run", pseudo_run, *args]).exit_code == 0
    real_save = loop.save_checkpoint

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    res = invoke(app, ["train-inst", "--run", part, *args])
    assert res.exit_code == 130 and not (part / "inst" / "model.safetensors").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    res = invoke(app, ["train-inst", "--run", part, *args, "--resume"])
    assert res.exit_code == 0, res.output
    assert _losses(part) == _losses(pseudo_run) and len(_losses(part)) == 6
    a, _ = load_model(pseudo_run / "inst" / "model.safetensors")
    b, meta = load_model(part / "inst" / "model.safetensors")
    assert meta["metrics"]["resumed_from"] == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k
    res = invoke(app, ["train-inst", "--run", part, *args, "--resume", "--mask-region", "all"])
    assert res.exit_code == 1 and "different config" in res.output


def test_bad_inputs_are_one_line(inst_data, app, tmp_path):
    res = invoke(app, ["train-inst", "--data", inst_data, "--run", tmp_path / "r", "--iterations", 1, *TINY_INST])
    assert res.exit_code == 1 and "pseudo labels not found" in res.output and "Traceback" not in res.output
    res = invoke(app, ["train-inst", "--data", inst_data, "--run", tmp_path / "r", "--iterations", 1, *TINY_INST,
                       "--targets", "gt", "--backbone", "resnet50_fpn", "--weights", str(tmp_path / "nope.pth")])
    assert res.exit_code == 1 and "nope.pth" in res.output and "Traceback" not in res.output
    res = invoke(app, ["train-inst", "--data", inst_data, "--run", tmp_path / "r", "--set", "inst.max_size=32",
                       "--set", "inst.min_size=64", "-q"])
    assert res.exit_code == 2 and "max_size" in res.output


def _untrained_run(tmp_path, app, inst_data):
    """One iteration at a tiny learning rate: a model that still fires on everything."""
    run = tmp_path / "u"
    res = invoke(app, ["train-inst", "--data", inst_data, "--run", run, "--iterations", 1, "--lr", "1e-6",
                       "--targets", "gt", *TINY_INST])
    assert res.exit_code == 0, res.output
    return run


def test_predict_writes_instances(inst_data, app, tmp_path):
    run = _untrained_run(tmp_path, app, inst_data)
    out = tmp_path / "pred"
    res = invoke(app, ["predict", "--run", run, "--model", "inst", inst_data / "JPEGImages" / "000001.jpg",
                       "--out", out, "--set", "inst.score_threshold=0.0", "-q"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "000001.json").read_text())["instances"]
    inst = load_label_png(out / "000001.png")
    assert rec and inst.shape == (64, 64) and (out / "000001_overlay.jpg").is_file()
    assert [r["id"] for r in rec] == list(range(1, len(rec) + 1))
    assert [r["score"] for r in rec] == sorted((r["score"] for r in rec), reverse=True)
    for r in rec:
        assert r["area"] == int((inst == r["id"]).sum()) and r["class"] in ("ring", "star", "triangle", "blob", "bar")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(inst_data, app, tmp_path, fmt):
    run = _untrained_run(tmp_path, app, inst_data)
    res = invoke(app, ["export", "--run", run, "--model", "inst", "--format", fmt, "--input-size", 64, "-q"])
    assert res.exit_code == 0, res.output
    path = run / "export" / ("model.onnx" if fmt == "onnx" else "model.pt")
    side = json.loads(path.with_name(path.name + ".json").read_text())
    assert side["arch"] == "maskrcnn/tiny" and side["class_names"][1] == "ring"
    assert sum(side["checked_detections"]) > 0 and side["max_abs_diff"] <= 1e-3
    # independently: the exported graph at a third size against the PyTorch model
    model, _ = load_instance_model(run, "cpu")
    image = torch.randint(0, 256, (3, 56, 72), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model([image.float() / 255.0])[0]
    if fmt == "onnx":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        boxes, labels, scores, masks = sess.run(None, {"image": image.numpy()})
    else:
        import warnings

        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path))
            boxes, labels, scores, masks = (t.numpy() for t in module(image))
    assert boxes.shape == tuple(ref["boxes"].shape) and masks.shape[1:] == (56, 72)
    np.testing.assert_allclose(boxes, ref["boxes"].numpy(), atol=1e-3)
    np.testing.assert_array_equal(labels, ref["labels"].numpy())
    np.testing.assert_allclose(masks, ref["masks"][:, 0].numpy(), atol=1e-3)


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(inst_data, tmp_path):
    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29547", "-m", "banacli", "train-inst",
           "--data", str(inst_data), "--run-dir", str(run), "--iterations", "2", "--device", "cpu",
           "--targets", "gt", *TINY_INST]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = json.loads((run / "inst" / "model.json").read_text())
    assert meta["world_size"] == 2
    digests = meta["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]


@pytest.mark.parametrize("targets", ["pseudo", "gt"])
def test_shrunk_targets_follow_the_image(inst_data, pseudo_run, targets):
    """data.max_side shrinks the image; the targets (stored at the file's size) follow it."""
    from banacli.data.voc import VOCDataset
    from bana_plugins.train_inst import InstTrainSet

    full = VOCDataset(inst_data, "train", with_gt=False)
    small = VOCDataset(inst_data, "train", with_gt=False, max_side=32)
    kw = dict(targets=targets, region="s", crf_dir=pseudo_run / "labels" / "Ycrf",
              ret_dir=pseudo_run / "labels" / "Yret", flip=False)
    (x, t), (xs, ts) = InstTrainSet(full, **kw)[(0, 0)], InstTrainSet(small, **kw)[(0, 0)]
    assert xs.shape[1:] == (32, 32) and ts["masks"].shape[1:] == (32, 32) and ts["regions"].shape == (32, 32)
    # nearest neighbour at pixel centres: every other pixel of the full-size targets
    assert torch.equal(ts["masks"], t["masks"][:, 1::2, 1::2])
    assert torch.equal(ts["regions"], t["regions"][1::2, 1::2])
    torch.testing.assert_close(ts["boxes"], t["boxes"] / 2)

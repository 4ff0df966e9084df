
import numpy as np
import pytest
import torch

from banacli.artifacts import load_model
from banacli.runs import load_segmenter

from .conftest import TINY_SEG, invoke


@pytest.fixture
def labelled_run(tiny_data, fresh_cls_run, app):
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", fresh_cls_run, "-q"])
    assert res.exit_code == 0, res.output
    return fresh_cls_run


def _losses(run):
    rows = (run / "seg" / "loss.csv").read_text().strip().splitlines()
    head = rows[0].split(",")
    return [dict(zip(head, map(float, r.split(",")))) for r in rows[1:]]


@pytest.mark.parametrize("loss", ["nal", "ce", "ycrf", "yret", "entropy", "bootstrap"])
def test_every_loss_trains_and_saves_a_loadable_model(tiny_data, labelled_run, app, loss):
    res = invoke(app, ["train-seg", "--data", tiny_data, "--run", labelled_run, "--iterations", 3,
                       "--loss", loss, *TINY_SEG])
    assert res.exit_code == 0, res.output
    rows = _losses(labelled_run)
    assert len(rows) == 3 and all(np.isfinite(r["loss"]) for r in rows)
    model, meta = load_segmenter(labelled_run / "seg" / "model.safetensors")
    assert meta["arch"] == "segnet/tiny" and meta["tau"] == 20.0 and meta["config"]["seg"]["loss"] == loss
    with torch.no_grad():
        logits = model(torch.zeros(1, 3, 48, 48))["logits"]
    assert logits.shape[1] == 6 and logits.abs().max() <= 20.0 + 1e-4


def test_loss_falls_with_nal(tiny_data, labelled_run, app):
    res = invoke(app, ["train-seg", "--data", tiny_data, "--run", labelled_run, "--iterations", 40,
                       "--lr", "0.01", *TINY_SEG])
    assert res.exit_code == 0, res.output
    losses = [r["loss"] for r in _losses(labelled_run)]
    assert np.mean(losses[-8:]) < 0.8 * np.mean(losses[:8])


def test_missing_pseudo_labels_fail_before_training(tiny_data, fresh_cls_run, app):
    res = invoke(app, ["train-seg", "--data", tiny_data, "--run", fresh_cls_run, "--iterations", 2, *TINY_SEG])
    assert res.exit_code == 1 and "pseudo labels not found" in res.output
    assert not (fresh_cls_run / "seg" / "model.safetensors").exists()


def test_semi_supervised_split_uses_ground_truth(tiny_data, labelled_run, app, tmp_path):
    # ground truth for every image: training on it equals training on labels identical to the GT
    res = invoke(app, ["train-seg", "--data", tiny_data, "--run", labelled_run, "--iterations", 3,
                       "--set", "data.gt_split=train", *TINY_SEG])
    assert res.exit_code == 0, res.output
    log = (labelled_run / "seg" / "train-seg.log").read_text()
    assert "semi-supervised: 10 of 10 images use ground-truth masks" in log
    a, _ = load_model(labelled_run / "seg" / "model.safetensors")
    # replace the pseudo labels by the ground truth: the same run must give the same weights
    from banacli.data.palette import load_label_png, save_label_png

    for name in ("Ycrf", "Yret"):
        for p in (labelled_run / "labels" / name).glob("*.png"):
            save_label_png(p, load_label_png(tiny_data / "SegmentationClass" / p.name))
    res = invoke(app, ["train-seg", "--data", tiny_data, "--run", labelled_run, "--iterations", 3, "--force",
                       *TINY_SEG])
    assert res.exit_code == 0
    b, _ = load_model(labelled_run / "seg" / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k


def test_tiny_deeplab_leaves_the_background_prior_early(tmp_path, app):
    """Issue 11: the tiny DeepLab (random init, no fc dropout, gradient norm clipped to 1 by
    seg.grad_clip=auto) trained with NAL on correct labels predicts objects after 300
    iterations: val mIoU clearly above the all-background prior (25-37% against 13.5-13.9% on
    data seeds 5-8; threshold prior + 8 points). With the old recipe (Dropout2d 0.5 after
    fc6/fc7, no clipping) such runs stayed at the prior (docs/results.md)."""
    import json
    import shutil

    from banacli.data.synthetic import generate

    data = tmp_path / "data"
    generate(data, images=100, size=96, seed=5, val=20)
    run = tmp_path / "run"
    for name in ("Ycrf", "Yret"):  # ground truth as both label sets: the recipe, not the labels, is tested
        shutil.copytree(data / "SegmentationClass", run / "labels" / name)
    res = invoke(app, ["train-seg", "--data", data, "--run", run, "--model", "tiny", "--set", "seg.weights=null",
                       "--iterations", 300, "--batch-size", 8, "--crop-size", 96, "--lr", "0.01",
                       "--val-every", 300, "--log-every", 50, "-q"])
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "seg" / "model.json").read_text())
    val = meta["metrics"]["val"]["last"]
    assert val["iteration"] == 300
    assert val["miou"] > val["prior"] + 0.08, val
    assert val["foreground"] > 0.05, val
    rows = (run / "seg" / "loss.csv").read_text().splitlines()
    assert "grad_norm" in rows[0].split(",")

import json
import os
import subprocess
import sys

import pytest
import torch

from banacli.artifacts import load_model
from banacli.engine import batch_for_iteration

from .conftest import TINY_CLS, invoke


def _losses(run):
    rows = (run / "cls" / "loss.csv").read_text().strip().splitlines()[1:]
    return [(int(r.split(",")[0]), float(r.split(",")[1])) for r in rows]


def _rows(run):
    head, *rows = (run / "cls" / "loss.csv").read_text().strip().splitlines()
    keys = head.split(",")
    return [dict(zip(keys, map(float, r.split(",")))) for r in rows]


def test_batches_are_a_function_of_seed_and_iteration():
    a = [batch_for_iteration(10, 4, 7, it) for it in range(6)]
    assert a == [batch_for_iteration(10, 4, 7, it) for it in range(6)]
    # every image once per epoch: iterations 0..4 cover 20 positions = 2 epochs
    seen = [i for it in range(5) for i, _ in batch_for_iteration(10, 4, 7, it)]
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:20]) == list(range(10))
    # two ranks split the global batch without overlap
    r0, r1 = batch_for_iteration(10, 4, 7, 3, 0, 2), batch_for_iteration(10, 4, 7, 3, 1, 2)
    assert sorted(r0 + r1) == sorted(batch_for_iteration(10, 4, 7, 3))
    assert batch_for_iteration(10, 4, 8, 0) != a[0]


def test_loss_falls_and_model_is_written(tiny_data, app, tmp_path):
    run = tmp_path / "run"
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", run, "--iterations", 60, *TINY_CLS,
                       "--lr", "0.02"])
    assert res.exit_code == 0, res.output
    losses = [v for _, v in _losses(run)]
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.9 * first, (first, last)
    tensors, meta = load_model(run / "cls" / "model.safetensors", arch="bap-classifier/tiny")
    assert meta["class_names"][0] == "background" and meta["num_classes"] == 6
    assert meta["config"]["cls"]["iterations"] == 60 and len(meta["inputs"]["dataset"]) == 64
    assert (run / "cls" / "config.yaml").is_file() and (run / "cls" / "train-cls.log").is_file()


def test_resume_continues_exactly(tiny_data, app, tmp_path, monkeypatch):
    import banacli.engine.loop as loop

    full, part = tmp_path / "full", tmp_path / "part"
    args = ["--data", tiny_data, "--iterations", 6, *TINY_CLS, "--checkpoint-every", "3"]
    assert invoke(app, ["train-cls", "--run", full, *args]).exit_code == 0

    # crash right after the checkpoint of iteration 3 (as a kill would), then resume
    real_save = loop.save_checkpoint

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    res = invoke(app, ["train-cls", "--run", part, *args])
    assert res.exit_code == 130 and not (part / "cls" / "model.safetensors").exists()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    res = invoke(app, ["train-cls", "--run", part, *args, "--resume"])
    assert res.exit_code == 0, res.output

    assert _losses(part) == _losses(full) and len(_losses(full)) == 6
    a, _ = load_model(full / "cls" / "model.safetensors")
    b, meta = load_model(part / "cls" / "model.safetensors")
    assert meta["metrics"]["resumed_from"] == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_refuses_a_different_config(tiny_data, app, tmp_path):
    run = tmp_path / "run"
    args = ["--data", tiny_data, "--run", run, *TINY_CLS]
    assert invoke(app, ["train-cls", "--iterations", 2, *args]).exit_code == 0
    res = invoke(app, ["train-cls", "--iterations", 4, *args, "--resume", "--grid-size", "2"])
    assert res.exit_code == 1 and "different config" in res.output


def test_missing_weights_offline_is_one_line(tiny_data, app, tmp_path):
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", tmp_path / "r", "--backbone", "vgg16",
                       "--set", f"cls.weights={tmp_path / 'nope.pth'}", "--iterations", 1, "-q"])
    assert res.exit_code == 1
    assert "nope.pth" in res.output and "Traceback" not in res.output


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tiny_data, tmp_path):
    run = tmp_path / "run"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--nproc-per-node", "2", "--master-port", "29533", "-m", "banacli", "train-cls",
           "--data", str(tiny_data), "--run-dir", str(run), "--iterations", "2", "--device", "cpu", *TINY_CLS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = json.loads((run / "cls" / "model.json").read_text())
    assert meta["world_size"] == 2
    digests = meta["rank_weight_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert sorted(p.name for p in (run / "cls").glob("checkpoint*")) == ["checkpoint.safetensors"]


def test_warmup_and_scale_of_the_recipe(tiny_data, app, tmp_path):
    from banacli.config import ClsConfig
    from banacli.engine import warmup_factor

    assert [warmup_factor(it, 4) for it in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert warmup_factor(0, 0) == 1.0
    with pytest.raises(ValueError, match="lo <= hi"):
        ClsConfig(scale=(1.5, 0.5))
    run = tmp_path / "run"
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", run, "--iterations", 6, *TINY_CLS,
                       "--backbone", "tiny-bn", "--set", "cls.warmup=4", "--set", "cls.scale=[0.75,1.25]",
                       "--set", "cls.val_every=6"])
    assert res.exit_code == 0, res.output
    lrs = [row["lr"] for row in _rows(run)]
    base = lrs[-1]
    assert lrs[:4] == pytest.approx([base * f for f in (0.25, 0.5, 0.75, 1.0)])
    meta = load_model(run / "cls" / "model.safetensors", arch="bap-classifier/tiny-bn")[1]
    assert meta["config"]["cls"]["scale"] == [0.75, 1.25]
    assert 0.0 <= meta["metrics"]["val"]["accuracy"] <= 1.0 and meta["metrics"]["val"]["boxes"] > 0

"""Training a user can watch, stop and trust (issue 14 items 2-5, issue 13 items 10 and 13):
progress lines and loss.csv at log_every, validation during training, SIGTERM -> checkpoint ->
exact resume, refusing to restart over a checkpoint, config.yaml written only once training runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from banacli.artifacts import load_model
from banacli.engine import average_precision, config_differences

from .conftest import TINY_CLS, TINY_SEG, invoke
from .test_train_seg import labelled_run  # noqa: F401 - fixture

BANA = [sys.executable, "-m", "banacli"]


def _bana(args, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([*BANA, *map(str, args)], capture_output=True, text=True, env=env, timeout=240, **kw)


def test_progress_lines_go_to_stderr_and_the_log_when_output_is_a_file(tiny_data, tmp_path):
    run = tmp_path / "run"
    args = [a for a in TINY_CLS if a != "-q"]
    res = _bana(["train-cls", "--data", tiny_data, "--run", run, "--iterations", 6, *args, "--log-every", 2])
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("train-cls: iteration")]
    # iterations 0, 2, 4 (log_every) and the last one
    assert [ln.split()[2] for ln in lines] == ["1/6", "3/6", "5/6", "6/6"], res.stderr
    for ln in lines:
        assert " loss " in ln and " lr " in ln and "images/s" in ln and "ETA" in ln
    log = (run / "cls" / "train-cls.log").read_text()
    assert sum("train-cls: iteration" in ln for ln in log.splitlines()) == 4
    assert "torch threads: 1" in log
    rows = (run / "cls" / "loss.csv").read_text().strip().splitlines()
    assert rows[0] == "iteration,loss,lr" and [r.split(",")[0] for r in rows[1:]] == ["0", "2", "4", "5"]


def test_sigterm_checkpoints_and_resume_equals_an_uninterrupted_run(tiny_data, tmp_path, app):
    n = 400
    args = ["--data", tiny_data, "--iterations", n, *TINY_CLS, "--set", "cls.crop_size=32", "--batch-size", 2]
    ref = tmp_path / "ref"
    assert invoke(app, ["train-cls", "--run", ref, *args]).exit_code == 0
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*BANA, "train-cls", "--run", str(run), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv = run / "cls" / "loss.csv"
    deadline = time.time() + 180
    while not (csv.is_file() and len(csv.read_text().splitlines()) >= 3) and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)  # a real signal, mid-run
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM at iteration" in err and "--resume" in err and "Traceback" not in err
    log = (run / "cls" / "train-cls.log").read_text()
    assert "stopped by SIGTERM" in log
    assert not (run / "cls" / "model.safetensors").exists()
    from banacli.engine import read_checkpoint_state

    stopped_at = read_checkpoint_state(run / "cls" / "checkpoint.safetensors")["iteration"]
    assert 1 <= stopped_at < n
    res = invoke(app, ["train-cls", "--run", run, *args, "--resume"])
    assert res.exit_code == 0, res.output
    a, meta = load_model(ref / "cls" / "model.safetensors")
    b, meta_b = load_model(run / "cls" / "model.safetensors")
    assert meta_b["metrics"]["resumed_from"] == stopped_at
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (run / "cls" / "loss.csv").read_text() == (ref / "cls" / "loss.csv").read_text()


def test_rerun_over_a_checkpoint_is_refused_and_config_yaml_kept(tiny_data, tmp_path, app):
    run = tmp_path / "run"
    base = ["train-cls", "--data", tiny_data, "--run", run, *TINY_CLS]
    assert invoke(app, [*base, "--iterations", 4]).exit_code == 0
    config = (run / "cls" / "config.yaml").read_text()
    model = (run / "cls" / "model.safetensors").read_bytes()
    res = invoke(app, [*base, "--iterations", 4, "--lr", "0.05"])
    assert res.exit_code == 1
    msg = res.output.strip()
    assert "\n" not in msg and "checkpoint at iteration 4 exists" in msg and "--resume" in msg and "--force" in msg
    # resume with another lr: refused, naming the key and both values
    res = invoke(app, [*base, "--iterations", 4, "--lr", "0.05", "--resume"])
    assert res.exit_code == 1 and "cls.lr (checkpoint 0.001, now 0.05)" in res.output
    assert (run / "cls" / "config.yaml").read_text() == config
    assert (run / "cls" / "model.safetensors").read_bytes() == model
    # --resume may extend iterations: continues from 4 to 6
    res = invoke(app, [*base, "--iterations", 6, "--resume"])
    assert res.exit_code == 0, res.output
    _, meta = load_model(run / "cls" / "model.safetensors")
    assert meta["metrics"]["resumed_from"] == 4 and meta["metrics"]["iterations"] == 6
    assert "iterations: 6" in (run / "cls" / "config.yaml").read_text()


def test_a_rerun_failing_at_its_first_image_leaves_config_yaml(tiny_data, tmp_path, app):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    run = tmp_path / "run"
    base = ["train-cls", "--data", data, "--run", run, *TINY_CLS, "--iterations", 2]
    assert invoke(app, base).exit_code == 0
    config = (run / "cls" / "config.yaml").read_text()
    for jpg in (data / "JPEGImages").glob("*.jpg"):
        jpg.write_bytes(b"not a jpeg")
    res = invoke(app, [*base, "--force", "--lr", "0.05"])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert (run / "cls" / "config.yaml").read_text() == config


def test_config_differences_names_keys():
    saved = {"cls": {"lr": 0.001, "iterations": 4, "seed": 0}}
    now = {"cls": {"lr": 0.01, "iterations": 8, "seed": 0}}
    assert config_differences(saved, now, ignore=("iterations",)) == ["cls.lr (checkpoint 0.001, now 0.01)"]


def test_average_precision_by_hand():
    # ranks: 0.9 (pos), 0.8 (neg), 0.7 (pos) -> precisions at the positives 1/1 and 2/3
    assert average_precision([0.7, 0.9, 0.8], [True, True, False]) == pytest.approx((1 + 2 / 3) / 2)
    assert average_precision([0.1, 0.2], [False, False]) != average_precision([0.1, 0.2], [False, False])  # NaN


def test_validation_during_training(labelled_run, tiny_data, app, tmp_path):
    res = invoke(app, ["train-seg", "--data", tiny_data, "--run", labelled_run, "--iterations", 4, *TINY_SEG,
                       "--val-every", 2, "--force"])
    assert res.exit_code == 0, res.output
    log = (labelled_run / "seg" / "train-seg.log").read_text()
    vals = [ln for ln in log.splitlines() if "val mIoU" in ln and "warning" not in ln]
    assert len(vals) == 2 and "iteration 2 " in vals[0] and "iteration 4 " in vals[1]
    # an untrained tiny model predicts background (almost) everywhere: the warning says what to try
    assert "all-background prior" in log and "--weights RUN/cls/model.safetensors" in log
    best, meta = load_model(labelled_run / "seg" / "best.safetensors")
    assert meta["metrics"]["iteration"] in (2, 4) and 0 <= meta["metrics"]["val_miou"] <= 1
    _, last = load_model(labelled_run / "seg" / "model.safetensors")
    assert last["metrics"]["val"]["best"]["miou"] == meta["metrics"]["val_miou"]


def test_cls_validation_reports_accuracy_and_map(tiny_data, tmp_path, app):
    run = tmp_path / "run"
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", run, *TINY_CLS, "--iterations", 2, "--val-every", 2])
    assert res.exit_code == 0, res.output
    log = (run / "cls" / "train-cls.log").read_text()
    assert "val box accuracy" in log and "mAP" in log
    _, meta = load_model(run / "cls" / "model.safetensors")
    val = meta["metrics"]["val"]
    assert val["iteration"] == 2 and 0 <= val["accuracy"] <= 1 and val["boxes"] > 0
    # the clear / covered split partitions the boxes: its counts add up and its accuracies average back
    assert val["boxes_clear"] + val["boxes_covered"] == val["boxes"]
    parts = [(val[f"accuracy_{k}"], val[f"boxes_{k}"]) for k in ("clear", "covered") if val[f"boxes_{k}"]]
    assert sum(a * n for a, n in parts) == pytest.approx(val["accuracy"] * val["boxes"])


def test_validation_does_not_change_training(tiny_data, tmp_path, app):
    a, b = tmp_path / "a", tmp_path / "b"
    base = ["train-cls", "--data", tiny_data, *TINY_CLS, "--iterations", 4]
    assert invoke(app, [*base, "--run", a]).exit_code == 0
    assert invoke(app, [*base, "--run", b, "--val-every", 1]).exit_code == 0
    ta, _ = load_model(a / "cls" / "model.safetensors")
    tb, _ = load_model(b / "cls" / "model.safetensors")
    assert all(torch.equal(ta[k], tb[k]) for k in ta)


def test_tensorboard_without_the_package_is_one_clear_line(tiny_data, tmp_path, app, monkeypatch):
    try:
        import tensorboard  # noqa: F401
        pytest.skip("tensorboard is installed")
    except ImportError:
        pass
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", tmp_path / "r", *TINY_CLS, "--iterations", 2,
                       "--tensorboard"])
    assert res.exit_code == 1 and "pip install 'bana[tensorboard]'" in res.output


def test_tiny_needs_no_weights_option_and_a_too_large_crop_is_named(tiny_data, tmp_path, app):
    run = tmp_path / "run"
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", run, "--backbone", "tiny", "--iterations", 1,
                       "--batch-size", 2, "--crop-size", 64, "--weights", "none", "-q"])
    assert res.exit_code == 0, res.output
    res = invoke(app, ["train-cls", "--data", tiny_data, "--run", run, "--backbone", "tiny", "--iterations", 1,
                       "--batch-size", 2, "--crop-size", 64, "--force"])
    assert res.exit_code == 0, res.output
    assert "cls.crop_size=64 is larger than the images (at most 48 px" in res.output
    _, meta = load_model(run / "cls" / "model.safetensors")
    assert meta["config"]["cls"]["weights"] == "auto" and meta["init_weights"]["kind"] == "none"

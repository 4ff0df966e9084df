import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import EntryPoint, entry_points

import numpy as np
import pytest

import banacli.labeling.registry as labelers_mod
from banacli.data.palette import load_label_png

from .conftest import invoke


def _labels(run, name="Ycrf"):
    folder = run / "labels" / name
    return {p.stem: load_label_png(p) for p in sorted(folder.glob("*.png"))}


def test_labels_report_and_pictures(tiny_data, fresh_cls_run, app):
    run = fresh_cls_run
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--viz", 2, "--workers", 2])
    assert res.exit_code == 0, res.output
    ycrf, yret = _labels(run, "Ycrf"), _labels(run, "Yret")
    ids = (tiny_data / "ImageSets/Segmentation/train.txt").read_text().split()
    assert sorted(ycrf) == sorted(ids) == sorted(yret)
    report = json.loads((run / "labels" / "bana.report.json").read_text())
    assert set(report["miou"]) == {"Ycrf", "Yret", "Box"}
    # the report's Ycrf != Yret fraction agrees with the files
    differ = sum(int((ycrf[i] != yret[i]).sum()) for i in ids) / sum(ycrf[i].size for i in ids)
    assert report["fraction_Ycrf_ne_Yret"] == pytest.approx(differ)
    assert sorted(p.name for p in (run / "labels" / "viz").iterdir()) == [f"{i}.png" for i in sorted(ids)[:2]]
    manifest = json.loads((run / "labels" / "bana.manifest.json").read_text())
    assert manifest["params"]["bg_threshold"] == 0.99 and manifest["classifier_sha256"]


def test_rerun_skips_finished_and_redoes_damaged(tiny_data, fresh_cls_run, app):
    run = fresh_cls_run
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "-q"]).exit_code == 0
    first = _labels(run)
    victim = sorted(first)[0]
    (run / "labels" / "Ycrf" / f"{victim}.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    stamps = {p.name: p.stat().st_mtime_ns for p in (run / "labels" / "Yret").glob("*.png")}
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run])
    assert res.exit_code == 0, res.output
    assert f"{len(first) - 1} already finished, 1 to label" in res.output
    after = _labels(run)
    assert all(np.array_equal(first[k], after[k]) for k in first)
    changed = [n for n, t in stamps.items() if (run / "labels" / "Yret" / n).stat().st_mtime_ns != t]
    assert changed == [f"{victim}.png"]


def test_different_config_refuses_unless_force(tiny_data, fresh_cls_run, app):
    run = fresh_cls_run
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "-q"]).exit_code == 0
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--bg-threshold", "0.5", "-q"])
    assert res.exit_code == 1 and "different params" in res.output and "--force" in res.output
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--bg-threshold", "0.5", "--force"])
    assert res.exit_code == 0 and "0 already finished" in res.output
    # workers do not change what the labels are: no refusal
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--bg-threshold", "0.5", "--workers", "2"])
    assert res.exit_code == 0 and "0 to label" in res.output
    # another data.max_side would label large images at another scale: refused by name
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--bg-threshold", "0.5",
                       "--set", "data.max_side=64", "-q"])
    assert res.exit_code == 1 and "different max_side" in res.output


def test_manifest_from_before_max_side_is_still_accepted(tmp_path):
    from banacli.labeling.manifest import check_manifest

    new = {"method": "bana", "split": "train", "params": {}, "classifier_sha256": "x", "dataset": "d",
           "outputs": ["Ycrf"], "max_side": 800}
    path = tmp_path / "bana.manifest.json"
    path.write_text(json.dumps({k: v for k, v in new.items() if k != "max_side"}))
    assert check_manifest(path, new, force=False) is True
    path.write_text(json.dumps({**new, "max_side": 1000}))
    with pytest.raises(Exception, match="different max_side"):
        check_manifest(path, new, force=False)


def test_missing_classifier_and_mismatched_classes(tiny_data, tmp_path, fresh_cls_run, app):
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", tmp_path / "empty"])
    assert res.exit_code == 1 and "classifier not found" in res.output and "Traceback" not in res.output
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", fresh_cls_run,
                       "--set", "data.classes=[ring, star, triangle, blob, cat]"])
    assert res.exit_code == 1 and "class names" in res.output
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", fresh_cls_run, "--method", "sam"])
    assert res.exit_code == 2 and "unknown labeler 'sam'" in res.output


def test_class_agnostic_mode_runs_with_other_classes(tiny_data, fresh_cls_run, app, tmp_path):
    # a dataset whose class names the classifier never saw
    other = tmp_path / "other"
    shutil.copytree(tiny_data, other)
    names = (other / "classes.txt").read_text().split()
    renamed = [f"new_{n}" for n in names]
    (other / "classes.txt").write_text("\n".join(renamed) + "\n")
    for xml in (other / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for n in names:
            text = text.replace(f"<name>{n}</name>", f"<name>new_{n}</name>")
        xml.write_text(text)
    res = invoke(app, ["gen-labels", "--data", other, "--run", fresh_cls_run, "--class-agnostic", "-q"])
    assert res.exit_code == 0, res.output
    assert len(_labels(fresh_cls_run)) == 10


def test_box_labeler_equals_box_masks(tiny_data, tmp_path, app):
    from banacli.data.synthetic import box_as_mask
    from banacli.data.voc import VOCDataset

    run = tmp_path / "run"
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--method", "box", "-q"])
    assert res.exit_code == 0, res.output
    ds = VOCDataset(tiny_data, "train")
    got = _labels(run, "Box")
    for i in range(len(ds)):
        s = ds.load(i)
        assert np.array_equal(got[s.id], box_as_mask(s.boxes, s.labels, s.height, s.width))


def test_third_party_labeler_from_entry_point(tiny_data, tmp_path, app, monkeypatch):
    (tmp_path / "my_labeler.py").write_text(
        "import numpy as np\n"
        "from banacli.labeling import Labeler\n"
        "def label(task):\n"
        "    out = np.zeros(task.image.shape[:2], np.uint8)\n"
        "    for (x0, y0, x1, y1), c in zip(task.boxes.astype(int), task.labels):\n"
        "        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2\n"
        "        out[cy, cx] = c\n"
        "    return {'Dots': out}\n"
        "DOTS = Labeler('dots', 'one pixel per box', ('Dots',), label)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    real = list(entry_points(group="bana.labelers"))
    monkeypatch.setattr(labelers_mod, "entry_points",
                        lambda group: real + [EntryPoint("dots", "my_labeler:DOTS", "bana.labelers")])
    run = tmp_path / "run"
    # (one worker: a module put on sys.path by the test is not importable in fresh worker processes;
    # an installed plugin package is)
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--method", "dots", "--viz", 1])
    assert res.exit_code == 0, res.output
    assert len(list((run / "labels" / "viz").glob("*.png"))) == 1
    labs = _labels(run, "Dots")
    assert len(labs) == 10 and all(0 < (v > 0).sum() <= 4 for v in labs.values())
    assert "Dots" in json.loads((run / "labels" / "dots.report.json").read_text())["miou"]


@pytest.mark.slow
def test_sigkill_midway_then_resume_gives_the_same_labels(tiny_data, fresh_cls_run, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(fresh_cls_run, reference)
    bana = os.path.join(os.path.dirname(sys.executable), "bana")
    base = [bana, "gen-labels", "--data", str(tiny_data), "-q"]
    subprocess.run(base + ["--run", str(reference)], check=True, timeout=300)

    run = fresh_cls_run
    proc = subprocess.Popen(base + ["--run", str(run)], start_new_session=True)
    folder = run / "labels" / "Yret"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(folder.glob("*.png"))) < 3:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = len(list(folder.glob("*.png")))
    assert 3 <= partial < 10, partial
    # nothing half-written: every PNG present decodes
    for p in (run / "labels").rglob("*.png"):
        load_label_png(p)
    subprocess.run(base + ["--run", str(run)], check=True, timeout=300)
    for name in ("Ycrf", "Yret"):
        a, b = _labels(reference, name), _labels(run, name)
        assert sorted(a) == sorted(b)
        assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not list((run / "labels").rglob("*.tmp"))


@pytest.mark.slow
def test_dask_backend_on_a_local_cluster(tiny_data, fresh_cls_run, tmp_path, app):
    pytest.importorskip("distributed")
    reference = tmp_path / "reference"
    shutil.copytree(fresh_cls_run, reference)
    assert invoke(app, ["gen-labels", "--data", tiny_data, "--run", reference, "-q"]).exit_code == 0
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", fresh_cls_run, "--backend", "dask",
                       "--workers", 2, "-q"])
    assert res.exit_code == 0, res.output
    a, b = _labels(reference, "Ycrf"), _labels(fresh_cls_run, "Ycrf")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def _make_features_constant(run):
    """Turn the run's classifier into one whose features are the same vector at every pixel (fc7
    weight 0, bias 1): the limit of the gap-paper classifier of issue 22 (mean cosine 0.998)."""
    import torch

    from banacli.artifacts import read_sidecar, save_model
    from banacli.runs import load_classifier

    path = run / "cls" / "model.safetensors"
    model, meta = load_classifier(path)
    with torch.no_grad():
        model.backbone.fc7.weight.zero_()
        model.backbone.fc7.bias.fill_(1.0)
    side = read_sidecar(path)
    config = dict(side["config"])
    config["cls"] = {**config["cls"], "pooling": "gap-paper"}
    save_model(path, model.state_dict(), arch=side["arch"], class_names=side["class_names"],
               normalization=side["normalization"], config=config)


def test_degenerate_attention_is_a_warning_and_in_the_report(tiny_data, fresh_cls_run, app):
    run = fresh_cls_run
    _make_features_constant(run)
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--workers", 1])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "background attention is degenerate" in text
    assert "trained with cls.pooling=gap-paper" in text and "labels.use_u0=false" in text
    att = json.loads((run / "labels" / "bana.report.json").read_text())["attention"]
    assert att["degenerate"] and att["degenerate_images"] == att["images_checked"] > 0
    assert att["kept_in_boxes"] == pytest.approx(1.0)
    # the labels collapse as the check says: no box pixel is foreground
    assert all(not (lab > 0).any() for lab in _labels(run).values())


def test_attention_check_of_a_trained_classifier_and_without_u0(tiny_data, fresh_cls_run, app, tmp_path):
    run = fresh_cls_run
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "--workers", 1])
    assert res.exit_code == 0, res.output
    att = json.loads((run / "labels" / "bana.report.json").read_text())["attention"]
    assert att["classifier_pooling"] == "bap" and 0.0 <= att["kept_in_boxes"] <= 1.0
    assert att["images_checked"] == min(16, len((tiny_data / "ImageSets/Segmentation/train.txt").read_text().split()))
    other = tmp_path / "wo"
    shutil.copytree(run / "cls", other / "cls")
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", other, "--workers", 1, "--set", "labels.use_u0=false"])
    assert res.exit_code == 0, res.output
    assert "attention" not in json.loads((other / "labels" / "bana.report.json").read_text())  # u0 not used

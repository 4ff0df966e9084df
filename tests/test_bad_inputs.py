"""Bad inputs and faults (issue 13): each case checks the exit code, one error line naming the
file and the problem, no traceback, and that finished outputs are left as they were.

gen-labels runs with ``--method box`` (no classifier needed) on 48 px synthetic images so the
cases stay fast; the code paths checked (dataset reading, ids, writing, locking, errors) are the
ones every labeler uses.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from banacli.data.palette import load_label_png
from banacli.data.synthetic import generate
from banacli.data.voc import read_image, resize_label
from banacli.errors import DataError
from banacli.ops.labelers import box_labeler

from .segrun import invoke, make_seg_run, random_image, write_image

BOX = ["--method", "box", "-q"]


def error_line(res, *needles: str) -> str:
    """The single 'error:' line of a failed command; asserts no traceback and that it names ``needles``."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output, res.output
    lines = [ln for ln in res.output.splitlines() if "error:" in ln]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and not p.name.endswith(".log") and p.name != ".lock"}


@pytest.fixture
def voc(tmp_path) -> Path:
    root = tmp_path / "voc"
    generate(root, images=4, size=48, seed=5)
    return root


def set_split(root: Path, lines: list[str], split: str = "train") -> None:
    (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{ln}\n" for ln in lines))


def ids_of(root: Path) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / "train.txt").read_text().split()


# ----------------------------------------------------------------------------- 1: huge images


def test_1_huge_image_is_processed_at_max_side_and_labelled_at_full_size(voc, tmp_path):
    big_id = ids_of(voc)[0]
    image = read_image(voc / "JPEGImages" / f"{big_id}.jpg")
    big = np.asarray(Image.fromarray(image).resize((200, 150), Image.BILINEAR))
    Image.fromarray(big).save(voc / "JPEGImages" / f"{big_id}.jpg", quality=95)
    (voc / "SegmentationClass" / f"{big_id}.png").unlink()  # its mask no longer fits
    xml = (voc / "Annotations" / f"{big_id}.xml").read_text()
    sx, sy = 200 / 48, 150 / 48

    def scale(tag: str, f: float) -> None:
        nonlocal xml
        start = xml.index(f"<{tag}>")
        while start >= 0:
            end = xml.index(f"</{tag}>", start)
            v = float(xml[start + len(tag) + 2 : end])
            xml = xml[: start + len(tag) + 2] + str(round(v * f)) + xml[end:]
            start = xml.find(f"<{tag}>", end)

    for tag, f in (("xmin", sx), ("xmax", sx), ("ymin", sy), ("ymax", sy), ("width", sx), ("height", sy)):
        scale(tag, f)
    (voc / "Annotations" / f"{big_id}.xml").write_text(xml)

    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--method", "box", "--set", "data.max_side=64"])
    assert res.exit_code == 0, res.output
    assert f"{big_id}: 200x150 image processed at reduced size 64x48" in res.output
    label = load_label_png(run / "labels" / "Box" / f"{big_id}.png")
    assert label.shape == (150, 200)  # written at the file's size
    # against the box labels computed directly at full size: only box edges may move (by < 1 reduced px)
    from banacli.data.voc import load_sample

    full = load_sample(voc, big_id, _classes(voc), with_gt=False)
    direct = box_labeler(full.image, full.boxes, full.labels)
    assert (label == direct).mean() > 0.9
    # a rerun finds the full-size labels finished and keeps them
    before = snapshot(run / "labels" / "Box")
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--method", "box", "--set", "data.max_side=64"])
    assert res.exit_code == 0 and "4 already finished, 0 to label" in res.output, res.output
    assert snapshot(run / "labels" / "Box") == before


def _classes(root: Path) -> list[str]:
    from banacli.data.voc import resolve_classes

    return resolve_classes(root)


def test_1_normal_images_are_labelled_byte_identically_with_or_without_the_cap(voc, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert invoke(["gen-labels", "--data", voc, "--run", a, *BOX]).exit_code == 0
    assert invoke(["gen-labels", "--data", voc, "--run", b, *BOX, "--set", "data.max_side=null"]).exit_code == 0
    assert snapshot(a / "labels" / "Box") == snapshot(b / "labels" / "Box")


def test_1_resize_label_nearest_by_pixel_centres():
    lab = np.array([[1, 2], [3, 4]], np.uint8)
    up = resize_label(lab, (4, 6))
    assert up.tolist() == [[1, 1, 1, 2, 2, 2], [1, 1, 1, 2, 2, 2], [3, 3, 3, 4, 4, 4], [3, 3, 3, 4, 4, 4]]
    assert resize_label(up, (2, 2)).tolist() == lab.tolist()
    assert resize_label(lab, (2, 2)) is lab


def test_1_predict_shrinks_a_huge_image_and_writes_the_mask_at_full_size(tmp_path):
    run = make_seg_run(tmp_path / "run")
    write_image(tmp_path / "in" / "big.png", random_image(120, 160, 0))
    out = tmp_path / "out"
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", out, "--set", "data.max_side=64"])
    assert res.exit_code == 0, res.output
    assert "160x120 image processed at reduced size 64x48" in res.output
    assert load_label_png(out / "big.png").shape == (120, 160)
    with Image.open(out / "big_overlay.jpg") as im:
        assert im.size == (160, 120)


# ----------------------------------------------------------------------------- 2, 3: ids


@pytest.mark.parametrize("bad, why", [
    ("../../escape/000004", "holds a path separator"),
    ("/tmp/abs", "holds a path separator"),
    ("..", "is '.' or '..'"),
    ("a\x1bb", "holds a control character"),
])
def test_2_an_id_cannot_leave_the_run_directory(voc, tmp_path, bad, why):
    ids = ids_of(voc)
    set_split(voc, [ids[0], bad, *ids[1:]])
    run = tmp_path / "a" / "b" / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX])
    assert res.exit_code == 1
    error_line(res, "train.txt:2", why)
    assert not (tmp_path / "a" / "escape").exists() and not list((run / "labels").rglob("*.png"))


def test_3_missing_xml_in_gen_labels_is_one_line(voc, tmp_path):
    gone = ids_of(voc)[2]
    (voc / "Annotations" / f"{gone}.xml").unlink()
    res = invoke(["gen-labels", "--data", voc, "--run", tmp_path / "run", *BOX])
    assert res.exit_code == 1
    error_line(res, f"Annotations/{gone}.xml", "annotation file not found")


def test_3_an_id_with_a_space_is_named_not_cut(voc, tmp_path):
    ids = ids_of(voc)
    set_split(voc, [*ids[:3], f"{ids[3]} copy"])
    res = invoke(["gen-labels", "--data", voc, "--run", tmp_path / "run", *BOX])
    assert res.exit_code == 1
    error_line(res, "train.txt:4", f"'{ids[3]} copy'", "holds whitespace")
    set_split(voc, [*ids[:3], f"{ids[3]} 1"])  # ImageSets/Main style "ID FLAG" stays valid
    assert invoke(["gen-labels", "--data", voc, "--run", tmp_path / "run2", *BOX]).exit_code == 0


# ----------------------------------------------------------------------------- 4: OS errors


def test_4_run_naming_a_file(voc, tmp_path):
    f = tmp_path / "run.txt"
    f.write_text("keep me")
    res = invoke(["gen-labels", "--data", voc, "--run", f, *BOX])
    assert res.exit_code == 2
    error_line(res, str(f), "not a directory")
    assert f.read_text() == "keep me"


def test_4_config_not_utf8(voc, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes("labels:\n  viz: 0  # caf\xe9\n".encode("latin-1"))
    res = invoke(["gen-labels", "--data", voc, "--run", tmp_path / "run", "--config", cfg, *BOX])
    assert res.exit_code == 2
    error_line(res, str(cfg), "not UTF-8")


def test_4_full_disk_is_one_line_with_the_path_and_finished_labels_stay(voc, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert invoke(["gen-labels", "--data", voc, "--run", run, *BOX]).exit_code == 0
    first = ids_of(voc)[0]
    (run / "labels" / "Box" / f"{first}.png").unlink()  # one left to do
    before = snapshot(run / "labels" / "Box")
    import banacli.artifacts as artifacts

    real = artifacts.os.replace

    def full(src, dst):  # what a label write on a full disk raises: an errno, no file name
        if str(dst).endswith(".png"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", full)
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX])
    monkeypatch.undo()
    assert res.exit_code == 1
    error_line(res, f"labels/Box/{first}.png: No space left on device (ENOSPC)")
    assert snapshot(run / "labels" / "Box") == before
    assert not list((run / "labels" / "Box").glob(".*.tmp"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_4_read_only_run_directory(voc, tmp_path):
    run = tmp_path / "run"
    (run / "labels").mkdir(parents=True)
    os.chmod(run / "labels", 0o555)
    try:
        res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX])
    finally:
        os.chmod(run / "labels", 0o755)
    assert res.exit_code == 1
    error_line(res, str(run / "labels"), "Permission denied (EACCES)")


def test_4_os_error_line_names_path_and_errno():
    from banacli.errors import os_error_line

    assert os_error_line(OSError(30, "Read-only file system", "/r/x")) == "/r/x: Read-only file system (EROFS)"
    assert os_error_line(OSError(2, "No such file or directory", "a", None, "b")) == "a -> b: No such file or directory (ENOENT)"


# ----------------------------------------------------------------------------- 6: lock


def test_6_second_process_on_the_same_stage_is_refused_naming_the_first(voc, tmp_path):
    run = tmp_path / "run"
    assert invoke(["gen-labels", "--data", voc, "--run", run, *BOX]).exit_code == 0
    before = snapshot(run / "labels")
    code = ("import sys, time; from banacli.runs import RunDir\n"
            "with RunDir(sys.argv[1]).lock('labels', 'gen-labels'):\n"
            "    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--force"])
        assert res.exit_code == 1
        error_line(res, str(run / "labels"), f"another bana gen-labels (pid {holder.pid})")
        assert snapshot(run / "labels") == before
    finally:
        holder.kill()
        holder.wait()
    # the kernel dropped the lock with the process: no stale lock
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX])
    assert res.exit_code == 0, res.output


def test_6_shards_lock_separately_and_one_shard_only_once(tmp_path):
    """--shard K/N processes share the run on purpose: each shard has its own lock."""
    import pytest

    from banacli.runs import RunDir, RunLockedError

    run = RunDir(tmp_path)
    with run.lock("labels", "gen-labels", "1/2") as one, run.lock("labels", "gen-labels", "2/2") as two:
        assert (one, two) == (run.lock_path("labels", "1/2"), tmp_path / "labels" / ".lock-2-of-2")
        with pytest.raises(RunLockedError, match="another bana gen-labels"):
            with run.lock("labels", "gen-labels", "1/2"):
                pass


# ----------------------------------------------------------------------------- 7: markup


def test_7_brackets_in_user_paths_are_printed_as_given(tmp_path):
    run = make_seg_run(tmp_path / "run")
    write_image(tmp_path / "in" / "a [b].png", random_image(32, 32, 0))
    out = tmp_path / "out" / "p [/q]"
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", out])
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output and f"to {out}" in res.output.replace("\n", "")
    assert (out / "a [b].png").is_file()


# ----------------------------------------------------------------------------- 8: predict skips


def test_8_predict_names_every_skipped_file(tmp_path):
    run = make_seg_run(tmp_path / "run")
    write_image(tmp_path / "in" / "good.png", random_image(32, 32, 0))
    for name in ("bad1.jpg", "bad2.png"):
        (tmp_path / "in" / name).write_bytes(b"not an image")
    out = tmp_path / "out"
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", out, "--set", "data.on_error=skip"])
    assert res.exit_code == 0, res.output
    assert "skipped 2 unreadable" in res.output
    assert "bad1.jpg: cannot read image" in res.output and "bad2.png: cannot read image" in res.output


# ----------------------------------------------------------------------------- 9: pickles


def test_9_a_pickle_offered_as_weights_is_refused_as_pickled_objects(voc, tmp_path):
    import pickle

    evil = tmp_path / "weights.pt"
    marker = tmp_path / "executed"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil.write_bytes(pickle.dumps({"w": Evil()}))
    res = invoke(["train-cls", "--data", voc, "--run", tmp_path / "run", "--backbone", "tiny",
                  "--set", f"cls.weights={evil}", "--iterations", 1, "-q"])
    assert res.exit_code == 1
    error_line(res, str(evil), "holds pickled Python objects", "will not execute")
    assert not marker.exists()


# ----------------------------------------------------------------------------- 11: duplicates


def test_11_duplicate_ids_are_used_once_with_a_warning(voc, tmp_path):
    ids = ids_of(voc)
    set_split(voc, [*ids, ids[1]])
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--method", "box"])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", "")
    assert f"id '{ids[1]}' is listed twice (lines 2 and 5)" in text and "used once" in text
    assert "on 4 of 4 images" in text  # the duplicate counted once
    report = json.loads((run / "labels" / "box.report.json").read_text())
    assert report["images"] == 4


# ----------------------------------------------------------------------------- 12: no background


def test_12_boxes_covering_the_whole_image_warn(voc, tmp_path):
    for xml in (voc / "Annotations").glob("*.xml"):
        text = xml.read_text()
        start, end = text.index("<object>"), text.index("</object>") + len("</object>")
        obj = text[start:end]
        for tag, v in (("xmin", 1), ("ymin", 1), ("xmax", 48), ("ymax", 48)):
            a, b = obj.index(f"<{tag}>") + len(tag) + 2, obj.index(f"</{tag}>")
            obj = obj[:a] + str(v) + obj[b:]
        rest = text[end:]
        while "<object>" in rest:  # keep one full-image box per image
            s, e = rest.index("<object>"), rest.index("</object>") + len("</object>")
            rest = rest[:s] + rest[e:]
        xml.write_text(text[:start] + obj + rest)
    res = invoke(["train-cls", "--data", voc, "--run", tmp_path / "run", "--backbone", "tiny", "--set",
                  "cls.weights=null", "--crop-size", 32, "--batch-size", 2, "--iterations", 1])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", " ")
    assert "warning: train-cls: the boxes of every training image cover" in text
    assert "never learns the background" in text


# ----------------------------------------------------------------------------- 14: cut JPEG


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_14_a_jpeg_cut_short_with_an_end_marker_is_refused(voc, tmp_path):
    cut_id = ids_of(voc)[1]
    path = voc / "JPEGImages" / f"{cut_id}.jpg"
    data = _jpeg(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    path.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    res = invoke(["gen-labels", "--data", voc, "--run", tmp_path / "run", *BOX])
    assert res.exit_code == 1
    error_line(res, f"{cut_id}.jpg", "JPEG data is cut short")
    # the same image whole, even with a flat grey corner, reads fine
    arr = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    arr[16:, 16:] = 128
    path.write_bytes(_jpeg(arr))
    assert read_image(path).shape == (48, 48, 3)
    path.write_bytes(_jpeg(arr)[:-300] + b"\xff\xd9")
    with pytest.raises(DataError, match="cut short"):
        read_image(path)


# ----------------------------------------------------------------------------- 15: skipped on purpose


def test_15_train_seg_tells_a_skipped_image_from_a_missing_label(voc, tmp_path):
    bad = ids_of(voc)[2]
    (voc / "JPEGImages" / f"{bad}.jpg").write_bytes(b"\xff\xd8 broken")
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--set", "data.on_error=skip"])
    assert res.exit_code == 0, res.output
    before = snapshot(run / "labels")
    seg = ["train-seg", "--data", voc, "--run", run, "--labels", "box", "--model", "tiny", "--set",
           "seg.weights=null", "--iterations", 1, "-q"]
    res = invoke(seg)
    assert res.exit_code == 1
    error_line(res, f"{bad}.png", "gen-labels skipped this image on purpose", "cannot read image", "on_error=skip")
    assert snapshot(run / "labels") == before
    other = ids_of(voc)[0]
    (run / "labels" / "Box" / f"{other}.png").unlink()
    res = invoke([*seg, "--set", "data.on_error=skip"])
    assert res.exit_code == 1
    error_line(res, f"{other}.png", "pseudo label missing (rerun bana gen-labels)")


# ----------------------------------------------------------------------------- 16: sidecar


def test_16_an_edited_normalization_in_the_sidecar_is_caught(tmp_path):
    run = make_seg_run(tmp_path / "run")
    side = run / "seg" / "model.json"
    meta = json.loads(side.read_text())
    meta["normalization"]["mean"] = [0.0, 0.0, 0.0]
    side.write_text(json.dumps(meta))
    write_image(tmp_path / "in" / "a.png", random_image(32, 32, 0))
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", tmp_path / "out"])
    assert res.exit_code == 1
    error_line(res, "model.json", "normalization edited after the model was saved")
    assert not (tmp_path / "out" / "a.png").exists()


def test_1_overlay_in_bands_equals_the_whole_overlay():
    from banacli.data.palette import overlay
    from bana_plugins.predict import overlay_in_rows

    image = random_image(70, 40, 1)
    mask = np.random.default_rng(2).integers(0, 4, (70, 40)).astype(np.uint8)
    mask[0, 0] = 255
    assert np.array_equal(overlay_in_rows(image, mask, overlay, rows=16), overlay(image, mask))


# ============================================================================= issue 21

@pytest.fixture
def coco(tmp_path) -> Path:
    from banacli.data.synth_coco import generate_coco

    root = tmp_path / "coco"
    generate_coco(root, images=3, size=48, seed=5)
    return root


def _coco_json(root: Path) -> tuple[Path, dict]:
    path = root / "annotations" / "instances_train.json"
    return path, json.loads(path.read_text())


def test_21_1_coco_images_sharing_an_id_are_refused_naming_both(coco, tmp_path):
    path, data = _coco_json(coco)
    first, second = data["images"][0], data["images"][1]
    second_boxes = [a["bbox"] for a in data["annotations"] if a["image_id"] == second["id"]]
    assert second_boxes and second_boxes != [a["bbox"] for a in data["annotations"] if a["image_id"] == first["id"]]
    for a in data["annotations"]:
        if a["image_id"] == second["id"]:
            a["image_id"] = first["id"]
    second["id"] = first["id"]
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", coco, "--run", run, *BOX])
    assert res.exit_code == 1
    error_line(res, str(path), f"({first['file_name']})", f"({second['file_name']})", f"both have id {first['id']}")
    assert not list(run.rglob("*.png"))
    res = invoke(["gen-labels", "--data", coco, "--run", run, *BOX, "--set", "data.on_error=skip"])
    assert res.exit_code == 1  # not an image to skip: the file itself is ambiguous
    error_line(res, "both have id")


def test_21_7_annotations_naming_no_image_are_counted_and_reported(coco, tmp_path):
    path, data = _coco_json(coco)
    extra = dict(data["annotations"][0], id=9001, image_id=4242)
    data["annotations"] += [extra, dict(extra, id=9002)]
    path.write_text(json.dumps(data))
    res = invoke(["gen-labels", "--data", coco, "--run", tmp_path / "run", "--method", "box"])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", "")
    assert f"warning: {path}: 2 annotation(s) name no image" in text, text
    assert "annotation 9001 -> image_id 4242" in text and "they are ignored" in text


@pytest.mark.parametrize("name", ["/etc/hostname", "../../outside.jpg", "sub/../../../outside.jpg"])
def test_21_10_a_coco_file_name_cannot_leave_the_dataset(coco, tmp_path, name):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes((coco / "train" / "000000.jpg").read_bytes())
    path, data = _coco_json(coco)
    data["images"][1]["file_name"] = name
    path.write_text(json.dumps(data))
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", coco, "--run", run, *BOX])
    assert res.exit_code == 1
    error_line(res, str(path), f"file_name {name!r} points outside", "under the dataset root")
    assert not list(run.rglob("*.png"))


def test_21_10_file_names_in_subfolders_of_the_dataset_still_work(coco, tmp_path):
    from banacli.data.coco import COCODataset

    path, data = _coco_json(coco)
    (coco / "train" / "sub").mkdir()
    os.replace(coco / "train" / "000001.jpg", coco / "train" / "sub" / "000001.jpg")
    data["images"][1]["file_name"] = "sub/000001.jpg"
    (coco / "val").mkdir()
    os.replace(coco / "train" / "000002.jpg", coco / "val" / "000002.jpg")
    data["images"][2]["file_name"] = "../val/000002.jpg"  # under ROOT: allowed
    path.write_text(json.dumps(data))
    ds = COCODataset(coco, "train")
    assert [ds.load(i).image.shape for i in range(3)] == [(48, 48, 3)] * 3


@pytest.mark.parametrize("text, key, lines", [
    ("labels:\n  viz: 0\n  workers: 1\n  viz: 2\n", "'viz'", "lines 2 and 4"),
    ("labels:\n  viz: 0\ndata:\n  on_error: skip\nlabels:\n  workers: 1\n", "'labels'", "lines 1 and 5"),
    ("labels: {viz: 0, viz: 1}\n", "'viz'", "lines 1 and 1"),
])
def test_21_duplicate_keys_in_a_yaml_config_are_refused(voc, tmp_path, text, key, lines):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--config", cfg, *BOX])
    assert res.exit_code == 2
    error_line(res, str(cfg), f"key {key} appears twice ({lines})")
    assert not run.exists()


def test_21_yaml_merge_keys_are_not_duplicates(tmp_path):
    from banacli.config import load_yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text("base: &b {viz: 1, workers: 2}\nlabels:\n  <<: *b\n  viz: 3\n")
    assert load_yaml(cfg)["labels"] == {"viz": 3, "workers": 2}


def test_21_2_a_one_pixel_image_trains_flipped_or_not(voc, tmp_path):
    from banacli.data.transforms import JointAugment

    aug = JointAugment(32, jitter=0, seed=0)
    for hw in ((1, 1), (40, 1)):  # 1 px wide, before or after scaling
        image = np.full((*hw, 3), 200, np.uint8)
        params = dict(aug.sample_params(*hw), flip=True, scaled_hw=hw)
        out = aug(image, [[0, 0, 1, hw[0]]], [1], {"gt": np.ones(hw, np.uint8)}, params=params)
        assert out["boxes"].tolist() == [[0.0, 0.0, 1.0, float(min(hw[0], 32))]]
        assert int(out["valid"].sum()) == min(hw[0], 32) and (out["image"][:, : hw[0], 0] == 200).all()
    # through train-cls: every image 1x1, so the flips (p = 0.5 each) surely hit one
    for image_id in ids_of(voc):
        Image.fromarray(np.full((1, 1, 3), 200, np.uint8)).save(voc / "JPEGImages" / f"{image_id}.jpg")
        (voc / "SegmentationClass" / f"{image_id}.png").unlink()
        xml = voc / "Annotations" / f"{image_id}.xml"
        text = xml.read_text()
        for tag, v in (("xmin", 1), ("ymin", 1), ("xmax", 1), ("ymax", 1), ("width", 1), ("height", 1)):
            text = "".join(part if i == 0 else f"<{tag}>{v}</{tag}>" + part.split(f"</{tag}>", 1)[1]
                           for i, part in enumerate(text.split(f"<{tag}>")))
        xml.write_text(text)
    res = invoke(["train-cls", "--data", voc, "--run", tmp_path / "run", "--backbone", "tiny", "--set",
                  "cls.weights=null", "--crop-size", 32, "--batch-size", 4, "--iterations", 2, "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "cls" / "model.safetensors").is_file()


class _Payload:
    """A real attack: unpickling runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import shlex

        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def test_21_5_a_zip_checkpoint_with_an_os_system_payload_is_never_run_and_named(voc, tmp_path):
    import torch

    evil, marker = tmp_path / "weights.pt", tmp_path / "pwned"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, evil)
    assert evil.read_bytes()[:2] == b"PK"  # torch's zip format, not a raw pickle
    res = invoke(["train-cls", "--data", voc, "--run", tmp_path / "run", "--backbone", "tiny",
                  "--set", f"cls.weights={evil}", "--iterations", 1, "-q"])
    assert res.exit_code == 1
    line = error_line(res, str(evil), f"holds a pickled Python object ({os.system.__module__}.system)",
                      "will not unpickle")
    assert "not a PyTorch checkpoint" not in line
    assert not marker.exists()


@pytest.mark.parametrize("quiet", [False, True])
def test_21_sigterm_stop_message_is_printed_once(voc, tmp_path, monkeypatch, quiet):
    import signal

    import banacli.engine as engine

    real = engine.log_line_for

    sent = []

    def stop_after_first_line(ctx):
        emit = real(ctx)

        def once(message):
            emit(message)
            if not sent:
                sent.append(message)
                os.kill(os.getpid(), signal.SIGTERM)  # what a batch scheduler sends

        return once

    monkeypatch.setattr(engine, "log_line_for", stop_after_first_line)
    run = tmp_path / "run"
    res = invoke(["train-cls", "--data", voc, "--run", run, "--backbone", "tiny", "--set", "cls.weights=null",
                  "--crop-size", 32, "--batch-size", 2, "--iterations", 50, "--log-every", 1,
                  *(["-q"] if quiet else [])])
    assert res.exit_code == 143, res.output
    assert "Traceback" not in res.output
    assert res.output.count("stopped by SIGTERM at iteration") == 1, res.output
    assert "--resume" in res.output
    assert (run / "cls" / "train-cls.log").read_text().count("stopped by SIGTERM") == 1


def test_21_3_a_refused_gen_labels_leaves_config_yaml_byte_for_byte(voc, tmp_path):
    run = tmp_path / "run"
    assert invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--set", "labels.grid_size=1"]).exit_code == 0
    config = run / "labels" / "config.yaml"
    before = config.read_bytes()
    assert b"grid_size: 1\n" in before
    labels = snapshot(run / "labels" / "Box")

    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--set", "labels.grid_size=2"])
    assert res.exit_code == 1
    error_line(res, "box.manifest.json", "params.grid_size (labels 1, now 2)", "--force")
    assert config.read_bytes() == before

    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--shard", "1/2", "--force",
                  "--set", "labels.grid_size=2"])
    assert res.exit_code == 2
    error_line(res, "--force with --shard")
    assert config.read_bytes() == before

    ids = ids_of(voc)
    set_split(voc, [*ids, "../escape"])
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--force", "--set", "labels.grid_size=2"])
    assert res.exit_code == 1
    error_line(res, "train.txt:5", "holds a path separator")
    assert config.read_bytes() == before
    set_split(voc, ids)
    (voc / "JPEGImages" / f"{ids[3]}.jpg").write_bytes(b"\xff\xd8 broken")  # found before any work
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--force", "--set", "labels.grid_size=2"])
    assert res.exit_code == 1
    error_line(res, f"{ids[3]}.jpg", "cannot read image")
    assert config.read_bytes() == before
    assert json.loads((run / "labels" / "box.manifest.json").read_text())["params"]["grid_size"] == 1
    assert snapshot(run / "labels" / "Box") == labels
    # an accepted run writes the config it labels with
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--force", "--set", "labels.grid_size=2",
                  "--set", "data.on_error=skip"])
    assert res.exit_code == 0, res.output
    assert b"grid_size: 2\n" in config.read_bytes()


def test_21_3_a_refused_predict_leaves_its_config_yaml(tmp_path):
    run = make_seg_run(tmp_path / "run")
    write_image(tmp_path / "in" / "a.png", random_image(32, 32, 0))
    assert invoke(["predict", "--run", run, tmp_path / "in", "--out", tmp_path / "out", "-q"]).exit_code == 0
    config = run / "predict" / "config.yaml"
    before = config.read_bytes()
    side = run / "seg" / "model.json"
    side.write_text(side.read_text().replace('"tau": 20.0', '"tau": 5.0'))
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", tmp_path / "out2", "--no-overlay", "-q"])
    assert res.exit_code == 1
    error_line(res, "model.json", "edited after the model was saved")
    assert config.read_bytes() == before


def test_21_4_resume_accepts_the_same_dataset_spelled_another_way(voc, tmp_path, monkeypatch):
    import shutil

    monkeypatch.chdir(voc.parent)
    run = tmp_path / "run"
    common = ["--run", run, "--backbone", "tiny", "--set", "cls.weights=null", "--crop-size", 32,
              "--batch-size", 2, "--checkpoint-every", 1, "-q"]
    assert invoke(["train-cls", "--data", voc.name, *common, "--iterations", 1]).exit_code == 0
    res = invoke(["train-cls", "--data", voc.parent / ".." / voc.parent.name / voc.name, *common,
                  "--iterations", 2, "--resume"])
    assert res.exit_code == 0, res.output
    other = tmp_path / "voc-copy"
    shutil.copytree(voc, other)
    res = invoke(["train-cls", "--data", other, *common, "--iterations", 3, "--resume"])
    assert res.exit_code == 1
    error_line(res, "checkpoint was written with a different config",
               f"data.root (checkpoint {str(voc.resolve())!r}, now {str(other.resolve())!r})")


def test_21_4_a_root_saved_as_typed_compares_resolved(tmp_path, monkeypatch):
    from banacli.runs import resolve_data_root

    monkeypatch.chdir(tmp_path)
    saved = {"data": {"root": "voc", "train_split": "train"}, "cls": {"lr": 0.1}}
    assert resolve_data_root(saved) == {"data": {"root": str(tmp_path.resolve() / "voc"), "train_split": "train"},
                                        "cls": {"lr": 0.1}}
    assert saved["data"]["root"] == "voc"  # a copy
    assert resolve_data_root({"inst": {}}) == {"inst": {}}


def test_21_6_skip_leaves_out_a_jpeg_cut_short_with_an_end_marker(voc, tmp_path, coco):
    from banacli.data.coco import COCODataset
    from banacli.data.voc import check_image

    cut_id = ids_of(voc)[1]
    data = _jpeg(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    cut = data[: len(data) // 2] + b"\xff\xd9"
    (voc / "JPEGImages" / f"{cut_id}.jpg").write_bytes(cut)
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--method", "box", "--set", "data.on_error=skip"])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", "")
    assert "skipped 1 of 4" in text and f"{cut_id}.jpg: JPEG data is cut short" in text
    assert sorted(p.stem for p in (run / "labels" / "Box").glob("*.png")) == sorted(set(ids_of(voc)) - {cut_id})
    # the COCO reader's skip check is the same
    (coco / "train" / "000001.jpg").write_bytes(cut)
    ds = COCODataset(coco, "train", on_error="skip")
    assert "000001" not in ds.ids and "cut short" in ds.skipped[0][1]
    # whole images, with or without a flat corner, pass the check
    arr = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    arr[16:, 16:] = 128
    for whole in (data, _jpeg(arr)):
        (tmp_path / "whole.jpg").write_bytes(whole)
        assert check_image(tmp_path / "whole.jpg", scan=True) == (48, 48)


def test_21_8_predict_on_an_image_too_wide_for_a_jpeg_writes_the_mask_and_names_the_file(tmp_path):
    run = make_seg_run(tmp_path / "run")
    wide = write_image(tmp_path / "in" / "wide.png", np.full((48, 65535, 3), 90, np.uint8))
    write_image(tmp_path / "in" / "small.png", random_image(32, 32, 0))
    out = tmp_path / "out"
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", out])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", "")
    assert f"{wide}: 65535x48 image is too large for a JPEG picture" in text, text
    assert "wide_overlay.jpg not written, the mask wide.png is" in text
    assert load_label_png(out / "wide.png").shape == (48, 65535)
    assert not (out / "wide_overlay.jpg").exists() and not list(out.glob(".*.tmp"))
    with Image.open(out / "small_overlay.jpg") as im:
        assert im.size == (32, 32)


def test_21_8_a_writer_error_without_a_file_name_is_named_after_the_file(tmp_path):
    from banacli.artifacts import atomic_path
    from banacli.errors import os_error_line

    with pytest.raises(OSError) as err:
        with atomic_path(tmp_path / "x_overlay.jpg"):
            raise OSError("broken data stream when writing image file")
    assert os_error_line(err.value) == f"{tmp_path / 'x_overlay.jpg'}: broken data stream when writing image file"
    assert not list(tmp_path.iterdir())


def test_21_9_a_worker_killed_like_by_the_oom_killer_is_one_line_and_resume_finishes(voc, tmp_path, monkeypatch):
    import signal

    import banacli.labeling.pipeline as pipeline
    import banacli.labeling.registry as labelers

    ids = ids_of(voc)
    victim = ids[2]

    def label_or_die(task):  # a closure: cloudpickle sends it by value to the loky workers
        if task.image_id == victim:
            os.kill(os.getpid(), signal.SIGKILL)
        return labelers.BOX.label(task)

    dying = labelers.Labeler("box", "box, but its worker is killed on one image", ("Box",), label_or_die)
    monkeypatch.setattr(pipeline, "get_labeler", lambda name: dying)
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, *BOX, "--workers", 2])
    assert res.exit_code == 1
    line = error_line(res, "a worker process died (exit", "SIGKILL", "probably out of memory",
                      "resume with the same command")
    finished = sorted(p.stem for p in (run / "labels" / "Box").glob("*.png"))
    reported = int(line.split(" of 4 labels are finished")[0].rsplit(" ", 1)[1])
    assert victim not in finished and reported <= len(finished) < 4  # the other worker may have written one more
    monkeypatch.undo()
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--method", "box"])
    assert res.exit_code == 0, res.output
    assert f"{len(finished)} already finished, {4 - len(finished)} to label" in res.output
    assert sorted(p.stem for p in (run / "labels" / "Box").glob("*.png")) == sorted(ids)


def test_21_11_workers_beyond_the_cores_or_the_memory_warn(voc, tmp_path, monkeypatch):
    import banacli.cores as cores
    import banacli.labeling.pipeline as pipeline
    from banacli.labeling.workers import worker_warnings

    lines = worker_warnings(8, 2, per_worker=900 * 2**20, available=4 * 2**30)
    assert len(lines) == 2
    assert "--workers 8 but this process may use 2 CPU core(s)" in lines[0] and "--workers 2 is the fastest" in lines[0]
    assert "would need about 7.5 GB (~0.94 GB each) but 4.3 GB are available" in lines[1]
    assert "use --workers 4" in lines[1]
    assert worker_warnings(2, 2, per_worker=900 * 2**20, available=4 * 2**30) == []
    assert worker_warnings(2, 2, per_worker=None, available=None) == []

    real = cores.available_cores
    monkeypatch.setattr(pipeline, "available_cores", lambda **kw: 1 if not kw.get("threads_env", True) else real(**kw))
    monkeypatch.setattr(pipeline, "available_memory", lambda: 10 * 2**20)
    run = tmp_path / "run"
    res = invoke(["gen-labels", "--data", voc, "--run", run, "--method", "box", "--workers", 2])
    assert res.exit_code == 0, res.output
    text = res.output.replace("\n", " ")
    assert "warning: gen-labels: --workers 2 but this process may use 1 CPU core(s)" in text, text
    assert "but 0.0 GB are available" in text and "use --workers 1" in text
    assert len(list((run / "labels" / "Box").glob("*.png"))) == 4  # a warning: the run goes on

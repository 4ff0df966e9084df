"""bana predict: palette masks and overlays for files and folders; bad input named in one line."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from banacli.data.palette import load_label_png
from banacli.models.deeplab import upsample_logits
from banacli.models.normalize import normalize
from banacli.runs import load_segmenter

from .segrun import invoke, make_seg_run, random_image, write_image


def _expected_mask(run, image: np.ndarray) -> np.ndarray:
    model, meta = load_segmenter(run / "seg" / "model.safetensors")
    x = normalize(torch.from_numpy(image.copy()).permute(2, 0, 1)[None], meta["normalization"])
    with torch.no_grad():
        logits = upsample_logits(model(x)["logits"], image.shape[:2])
    return logits[0].argmax(0).numpy().astype(np.uint8)


def test_masks_and_overlays_for_files_and_folders(tmp_path):
    run = make_seg_run(tmp_path / "run")
    a = write_image(tmp_path / "in" / "a.jpg", random_image(36, 44, 1))
    write_image(tmp_path / "folder" / "b.png", random_image(32, 32, 2))
    write_image(tmp_path / "folder" / "c.jpeg", random_image(40, 24, 3))
    (tmp_path / "folder" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    res = invoke(["predict", "--run", run, a, tmp_path / "folder", "--out", out])
    assert res.exit_code == 0, res.output
    assert "wrote 3 masks" in res.output
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png", "a_overlay.jpg", "b.png", "b_overlay.jpg", "c.png", "c_overlay.jpg"]
    with Image.open(out / "a.png") as im:
        assert im.mode == "P"  # a VOC-style palette PNG of class ids
    image = np.asarray(Image.open(a).convert("RGB"))
    assert np.array_equal(load_label_png(out / "a.png"), _expected_mask(run, image))
    with Image.open(out / "c_overlay.jpg") as im:
        assert im.size == (24, 40)


def test_crf_in_parallel_writes_the_same_masks(tmp_path):
    run = make_seg_run(tmp_path / "run")
    for i in range(3):
        write_image(tmp_path / "in" / f"im{i}.png", random_image(32, 32, i))
    one, two = tmp_path / "one", tmp_path / "two"
    assert invoke(["predict", "--run", run, tmp_path / "in", "--out", one, "--crf", "-q"]).exit_code == 0
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", two, "--crf", "--workers", 2, "--no-overlay", "-q"])
    assert res.exit_code == 0, res.output
    for i in range(3):
        assert np.array_equal(load_label_png(one / f"im{i}.png"), load_label_png(two / f"im{i}.png"))
    assert not list(two.glob("*_overlay.jpg"))


def test_unreadable_image_is_one_line_or_skipped(tmp_path):
    run = make_seg_run(tmp_path / "run")
    write_image(tmp_path / "in" / "good.png", random_image(32, 32, 0))
    (tmp_path / "in" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", out])
    assert res.exit_code == 1
    assert "bad.jpg: cannot read image" in res.output and "Traceback" not in res.output
    res = invoke(["predict", "--run", run, tmp_path / "in", "--out", out, "--set", "data.on_error=skip"])
    assert res.exit_code == 0, res.output
    assert "wrote 1 mask" in res.output and "skipped 1 unreadable" in res.output
    assert (out / "good.png").is_file() and not (out / "bad.png").exists()


def test_missing_input_and_missing_out(tmp_path):
    run = make_seg_run(tmp_path / "run")
    res = invoke(["predict", "--run", run, tmp_path / "nope.jpg", "--out", tmp_path / "out"])
    assert res.exit_code == 1 and "nope.jpg: no such file or folder" in res.output
    write_image(tmp_path / "x.png", random_image(16, 16, 0))
    res = invoke(["predict", "--run", run, tmp_path / "x.png"])
    assert res.exit_code == 2 and "--out DIR is required" in res.output

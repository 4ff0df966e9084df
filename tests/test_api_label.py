"""banacli.api.Labeler: one image, one call, the same labels as ``bana gen-labels`` wrote.

The run is the stage tests' tiny classifier (8 iterations on 48 px synthetic images); gen-labels
labels the split, then Labeler labels every image again from its file and its XML boxes, and
every label map, instance mask and instance score must be the same, pixel for pixel.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from banacli.api import Labeler
from banacli.data.palette import load_label_png
from banacli.data.synthetic import generate
from banacli.data.voc import find_image, parse_annotation, read_split
from banacli.errors import DataError

from .stages.conftest import app, cls_run, invoke, tiny_data  # noqa: F401 - fixtures used by name


def _xml_boxes(root: Path, image_id: str, class_names: list[str]):
    ann = parse_annotation(root / "Annotations" / f"{image_id}.xml", {n: i for i, n in enumerate(class_names) if i})
    return ann.boxes, [class_names[i] for i in ann.labels]


def _instances(run: Path, name: str) -> dict[str, list[dict]]:
    by_image: dict[str, list[dict]] = {}
    for item in json.loads((run / "labels" / f"instances_{name}.json").read_text()):
        by_image.setdefault(str(item["image_id"]), []).append(item)
    return by_image


def _check_same_as_gen_labels(data: Path, run: Path, lab: Labeler) -> int:
    ids = read_split(data, "train")
    instances = {n: _instances(run, n) for n in lab.outputs}
    checked = 0
    for image_id in ids:
        boxes, names = _xml_boxes(data, image_id, lab.class_names)
        out = lab.label(find_image(data, image_id), boxes, names)
        for n in lab.outputs:
            written = load_label_png(run / "labels" / n / f"{image_id}.png")
            np.testing.assert_array_equal(out.maps[n], written, err_msg=f"{n} of {image_id}")
            # the instance file lists the non-empty masks in box order, with the same score
            kept = [k for k in range(len(boxes)) if out.masks[n][k].any()]
            items = instances[n].get(image_id, [])
            assert len(items) == len(kept)
            for k, item in zip(kept, items):
                np.testing.assert_array_equal(out.masks[n][k], mask_utils.decode(item["segmentation"]).astype(bool))
                assert item["score"] == pytest.approx(out.scores[k], abs=1e-12)
                assert item["category_id"] == out.labels[k]
        checked += 1
    return checked


def test_label_equals_what_gen_labels_wrote(tmp_path, tiny_data, cls_run, app):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", run, "-q"])
    assert res.exit_code == 0, res.output

    lab = Labeler.from_run(run)
    assert lab.outputs == ("Ycrf", "Yret") and lab.class_names[0] == "background"
    assert _check_same_as_gen_labels(tiny_data, run, lab) == len(read_split(tiny_data, "train"))

    # a PIL image or an array gives the same as the file; a non-default parameter changes labels
    image_id = read_split(tiny_data, "train")[0]
    boxes, names = _xml_boxes(tiny_data, image_id, lab.class_names)
    from PIL import Image

    with Image.open(find_image(tiny_data, image_id)) as im:
        via_pil = lab.label(im, boxes, names)
    np.testing.assert_array_equal(via_pil.ycrf, load_label_png(run / "labels" / "Ycrf" / f"{image_id}.png"))
    ids = [lab.class_names.index(n) for n in names]
    np.testing.assert_array_equal(lab.label(np.asarray(Image.open(find_image(tiny_data, image_id)).convert("RGB")),
                                            boxes, ids).yret, via_pil.yret)


def test_shrunk_images_are_labelled_as_gen_labels_does(tmp_path, cls_run, app):  # noqa: F811
    """data.max_side below the image size: gen-labels labels shrunk images and writes full-size
    labels; Labeler.from_run takes max_side from the manifest and does the same."""
    data = tmp_path / "data96"
    generate(data, images=3, size=96, seed=11, val=0)
    run = tmp_path / "run"
    shutil.copytree(cls_run, run)
    res = invoke(app, ["gen-labels", "--data", data, "--run", run, "--set", "data.max_side=64", "-q"])
    assert res.exit_code == 0, res.output
    lab = Labeler.from_run(run)
    assert lab.max_side == 64
    assert _check_same_as_gen_labels(data, run, lab) == 3
    # without the shrink the labels of at least one image differ: the test can see max_side
    full = Labeler.from_run(run, max_side=None)
    image_id = read_split(data, "train")[0]
    boxes, names = _xml_boxes(data, image_id, lab.class_names)
    a = lab.label(find_image(data, image_id), boxes, names).ycrf
    b = full.label(find_image(data, image_id), boxes, names).ycrf
    assert a.shape == b.shape == (96, 96)
    assert not np.array_equal(a, b)


def test_bad_inputs_are_one_line_errors(tmp_path, cls_run):  # noqa: F811
    lab = Labeler.from_run(cls_run)
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(DataError, match="unknown class 'zebra'"):
        lab.label(image, [[0, 0, 10, 10]], ["zebra"])
    with pytest.raises(DataError, match="outside"):
        lab.label(image, [[60, 0, 70, 10]], [lab.class_names[1]])
    with pytest.raises(DataError, match="2 boxes but 1 class"):
        lab.label(image, [[0, 0, 10, 10], [5, 5, 9, 9]], [lab.class_names[1]])
    out = lab.label(image, np.zeros((0, 4)), [])
    assert not out.ycrf.any() and out.masks["Ycrf"].shape == (0, 40, 50)


def test_feature_cache_skips_the_backbone_and_changes_nothing(tmp_path, cls_run, monkeypatch):  # noqa: F811
    import banacli.labeling

    calls = []
    real = banacli.labeling.compute_features
    monkeypatch.setattr(banacli.labeling, "compute_features", lambda *a, **k: calls.append(1) or real(*a, **k))
    plain = Labeler.from_run(cls_run)
    cached = Labeler.from_run(cls_run, feature_cache=1)
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2))
    name = plain.class_names[1]
    boxes = [[[2, 3, 30, 20]], [[10, 12, 50, 38]], [[0, 0, 20, 40]]]
    for box in boxes:  # three boxes on image a, one after another (as a user draws them)
        np.testing.assert_array_equal(cached.label(a, box, [name]).ycrf, plain.label(a, box, [name]).ycrf)
    assert cached.cache_hits == 2 and len(calls) == 3 + 1  # plain: 3 backbone passes, cached: 1
    cached.label(b, boxes[0], [name])  # another image evicts a (cache of one)
    cached.label(a, boxes[0], [name])
    assert cached.cache_hits == 2 and len(calls) == 3 + 3

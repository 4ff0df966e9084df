"""The COCO reader: round trip from the synthetic set, id mapping, crowd regions, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from banacli.data.coco import COCODataset, data_format, open_data, xywh_to_xyxy, xyxy_to_xywh
from banacli.data.palette import load_label_png
from banacli.data.synthetic import SYNTH_CLASSES
from banacli.data.synth_coco import encode_mask, generate_coco
from banacli.data.voc import VOCDataset
from banacli.errors import DataError


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory, synth_root) -> Path:
    """The COCO layout of the very same synthetic set as ``synth_root`` (6 + 2 images, 64 px, seed 0)."""
    root = tmp_path_factory.mktemp("coco")
    generate_coco(root, images=6, size=64, seed=0, val=2)
    return root


def test_round_trip_boxes_masks_and_classes_equal_the_source(coco_root, synth_root):
    voc = VOCDataset(synth_root, "train")
    ds = COCODataset(coco_root, "train")
    assert ds.classes == list(SYNTH_CLASSES) and ds.ids == voc.ids
    assert data_format(coco_root, type("D", (), {"format": "auto", "annotations": None})()) == "coco"
    for i in range(len(ds)):
        s, v = ds.load(i), voc.load(i)
        np.testing.assert_array_equal(s.image, v.image)  # the JPEG is copied, not re-encoded
        np.testing.assert_array_equal(s.boxes, v.boxes)
        np.testing.assert_array_equal(s.labels, v.labels)
        np.testing.assert_array_equal(s.gt, v.gt)  # semantic map painted from the RLE masks
        obj = load_label_png(synth_root / "SegmentationObject" / f"{s.id}.png")
        masks, has = ds.instance_masks(s.id, s.height, s.width)
        assert has.all()
        for k in range(len(s.labels)):
            np.testing.assert_array_equal(masks[k], obj == k + 1)
        assert s.ignore is None
        np.testing.assert_array_equal(s.background(), v.background())


def test_category_ids_map_to_1_to_L_and_back(coco_root):
    ds = COCODataset(coco_root, "train")
    # the synthetic set uses ids 1, 3, 5, 7, 9 (listed in reverse order in the file)
    assert ds.category_to_label == {1: 1, 3: 2, 5: 3, 7: 4, 9: 5}
    assert ds.label_to_category == {1: 1, 2: 3, 3: 5, 4: 7, 5: 9}
    raw = json.loads((coco_root / "annotations" / "instances_train.json").read_text())
    first = [a for a in raw["annotations"] if a["image_id"] == raw["images"][0]["id"]]
    s = ds.load(0)
    assert [ds.label_to_category[int(lab)] for lab in s.labels] == [a["category_id"] for a in first]
    names = {c["id"]: c["name"] for c in raw["categories"]}
    assert [ds.classes[lab - 1] for lab in s.labels] == [names[a["category_id"]] for a in first]


def test_box_convention_has_no_plus_minus_one():
    assert xywh_to_xyxy([10.5, 3, 4, 2.25]) == (10.5, 3.0, 14.5, 5.25)
    assert xyxy_to_xywh(xywh_to_xyxy([1, 2, 3, 4])) == [1.0, 2.0, 3.0, 4.0]


# ----------------------------------------------------------------------------- hand-built files


def _write(root: Path, images: list[dict], anns: list[dict], cats: list[dict], split: str = "train") -> Path:
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / split).mkdir(parents=True, exist_ok=True)
    for im in images:
        p = root / split / im["file_name"]
        if not im.pop("_missing", False):
            Image.fromarray(np.full((im["height"], im["width"], 3), 90, np.uint8)).save(p)
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


CATS = [{"id": 90, "name": "zebra"}, {"id": 2, "name": "cat"}]


def _ann(i, img, cat, bbox, crowd=0, seg=None):
    a = {"id": i, "image_id": img, "category_id": cat, "bbox": bbox, "iscrowd": crowd}
    if seg is not None:
        a["segmentation"] = seg
    return a


def test_noncontiguous_ids_sorted_and_data_classes_reorders(tmp_path):
    _write(tmp_path, [{"id": 7, "file_name": "a.png", "width": 20, "height": 10}],
           [_ann(1, 7, 90, [0, 0, 5, 5]), _ann(2, 7, 2, [5, 5, 4, 3])], CATS)
    ds = COCODataset(tmp_path, "train")
    assert ds.classes == ["cat", "zebra"] and ds.category_to_label == {2: 1, 90: 2}
    s = ds.load(0)
    assert s.id == "a" and ds.coco_ids["a"] == 7
    np.testing.assert_array_equal(s.labels, [2, 1])
    np.testing.assert_array_equal(s.boxes, [[0, 0, 5, 5], [5, 5, 9, 8]])
    assert s.gt is None  # no segmentation in the file
    ds2 = COCODataset(tmp_path, "train", ["zebra", "cat"])
    assert ds2.category_to_label == {90: 1, 2: 2} and ds2.label_to_category == {1: 90, 2: 2}
    with pytest.raises(DataError, match="do not name"):
        COCODataset(tmp_path, "train", ["zebra", "dog"])


def test_crowd_boxes_are_ignored_not_background(tmp_path):
    crowd_seg = encode_mask(np.pad(np.ones((4, 4), bool), ((0, 6), (12, 4))))  # rows 0-3, cols 12-15
    _write(tmp_path, [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
           [_ann(1, 1, 2, [0, 0, 4, 4], seg=encode_mask(np.pad(np.ones((4, 4), bool), ((0, 6), (0, 16))))),
            _ann(2, 1, 90, [10, 0, 8, 6], crowd=1, seg=crowd_seg)], CATS)
    s = COCODataset(tmp_path, "train").load(0)
    assert len(s.labels) == 1  # the crowd box is no object
    expect = np.zeros((10, 20), bool)
    expect[0:6, 10:18] = True
    np.testing.assert_array_equal(s.ignore, expect)
    bg = s.background()
    assert not bg[expect].any() and not bg[0:4, 0:4].any() and bg[8, 8]
    assert (s.gt[0:4, 12:16] == 255).all() and (s.gt[0:4, 0:4] == 1).all() and s.gt[8, 8] == 0


@pytest.mark.parametrize("anns, match", [
    ([_ann(1, 1, 3, [0, 0, 4, 4])], "unknown category id 3"),
    ([_ann(1, 1, 2, [0, 0, 0, 4])], "zero or negative size"),
    ([_ann(1, 1, 2, [30, 0, 4, 4])], "lies outside the 20x10 image"),
    ([], "no \\(non-crowd\\) annotations"),
    ([_ann(1, 1, 2, [0, 0, 4, 4], crowd=1)], "no \\(non-crowd\\) annotations"),
])
def test_bad_annotations_one_line_error_or_counted_skip(tmp_path, anns, match):
    good = {"id": 2, "file_name": "b.png", "width": 20, "height": 10}
    path = _write(tmp_path, [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}, good],
                  [*anns, _ann(99, 2, 2, [1, 1, 3, 3])], CATS)
    with pytest.raises(DataError, match=match) as err:
        COCODataset(tmp_path, "train")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    ds = COCODataset(tmp_path, "train", on_error="skip")
    assert ds.ids == ["b"] and len(ds.skipped) == 1 and "skipped 1 of 2" in ds.summary()


def test_missing_image_file(tmp_path):
    _write(tmp_path, [{"id": 1, "file_name": "a.png", "width": 20, "height": 10, "_missing": True},
                      {"id": 2, "file_name": "b.png", "width": 20, "height": 10}],
           [_ann(1, 1, 2, [0, 0, 4, 4]), _ann(2, 2, 2, [0, 0, 4, 4])], CATS)
    ds = COCODataset(tmp_path, "train")  # raise mode: lazily
    with pytest.raises(DataError, match="a.png: image file not found"):
        ds.load(0)
    ds = COCODataset(tmp_path, "train", on_error="skip")
    assert ds.ids == ["b"] and "a.png" in ds.skipped[0][1]


def test_missing_or_malformed_json_and_explicit_paths(tmp_path):
    with pytest.raises(DataError, match="COCO annotation file not found"):
        COCODataset(tmp_path, "train")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text("{not json")
    with pytest.raises(DataError, match="cannot read COCO JSON"):
        COCODataset(tmp_path, "train")
    other = tmp_path / "elsewhere"
    _write(other, [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}], [_ann(1, 1, 2, [0, 0, 4, 4])], CATS,
           split="val2017")
    data = type("D", (), {"format": "auto", "classes": None, "on_error": "raise",
                          "annotations": str(other / "annotations" / "instances_{split}.json"),
                          "images": str(other / "{split}")})()
    ds = open_data(tmp_path, "val2017", data)
    assert isinstance(ds, COCODataset) and ds.ids == ["a"] and ds.load(0).image.shape == (10, 20, 3)


def test_box_labels_without_the_image_equal_load(coco_root, synth_root):
    for ds in (COCODataset(coco_root, "train"), VOCDataset(synth_root, "train")):
        for i in range(len(ds)):
            s = ds.load(i)
            boxes, labels = ds.box_labels(i, s.height, s.width)
            np.testing.assert_array_equal(boxes, s.boxes)
            np.testing.assert_array_equal(labels, s.labels)


def test_max_side_shrinks_image_boxes_and_crowd_together(tmp_path):
    crowd_seg = encode_mask(np.pad(np.ones((4, 4), bool), ((0, 6), (12, 4))))
    _write(tmp_path, [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
           [_ann(1, 1, 2, [0, 0, 4, 4]), _ann(2, 1, 90, [10, 0, 8, 6], crowd=1, seg=crowd_seg)], CATS)
    notes = []
    ds = COCODataset(tmp_path, "train", max_side=10, notify=notes.append)
    s = ds.load(0)
    assert s.image.shape == (5, 10, 3) and s.orig_hw == (10, 20) and s.reduced
    np.testing.assert_array_equal(s.boxes, [[0, 0, 2, 2]])
    assert s.ignore.shape == (5, 10) and s.ignore[0, 5:9].all() and not s.ignore[4].any()
    assert len(notes) == 1 and "reduced size 10x5" in notes[0]
    # the background fraction counts crowd regions as not-background: 1 - (16 + 48) / 200
    assert ds.background_fraction(0) == pytest.approx(1 - (16 + 48) / 200)

"""The VOC reader: layout, box convention, image modes and every bad-input case."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from banacli.boxes import definite_background
from banacli.data.palette import load_label_png, save_label_png
from banacli.data.synthetic import SYNTH_CLASSES
from banacli.data.voc import VOC_CLASSES, VOCDataset, load_sample, read_split, resolve_classes
from banacli.errors import DataError


# ----------------------------------------------------------------------------- synthetic tree


def test_reads_synthetic_tree(synth_root):
    ds = VOCDataset(synth_root, "train")
    assert ds.classes == list(SYNTH_CLASSES)
    assert ds.class_names[0] == "background"
    assert len(ds) == 6 and read_split(synth_root, "val") == ["000006", "000007"]
    for i in range(len(ds)):
        s = ds[i]
        assert s.image.shape == (64, 64, 3) and s.image.dtype == np.uint8
        assert s.boxes.dtype == np.float32 and s.boxes.shape == (len(s.labels), 4)
        assert s.labels.dtype == np.int64 and s.labels.min() >= 1 and s.labels.max() <= 5
        assert s.gt is not None and s.gt.shape == (64, 64) and s.gt.max() <= 5
        assert s.difficult is not None and not s.difficult.any()
        # every box holds ground-truth pixels of its own class
        for (x0, y0, x1, y1), lab in zip(s.boxes.astype(int), s.labels):
            assert (s.gt[y0:y1, x0:x1] == lab).any()
        # the synthetic boxes are tight: the instance mask's box equals the annotation
        inst = load_label_png(synth_root / "SegmentationObject" / f"{s.id}.png")
        for k, box in enumerate(s.boxes, start=1):
            ys, xs = np.nonzero(inst == k)
            assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()


def test_without_gt(synth_root):
    s = load_sample(synth_root, "000000", list(SYNTH_CLASSES), with_gt=False)
    assert s.gt is None


def test_definite_background_matches_boxes(synth_root):
    s = VOCDataset(synth_root, "train")[0]
    m = s.background()
    inside = np.zeros_like(m)
    for x0, y0, x1, y1 in s.boxes.astype(int):
        inside[y0:y1, x0:x1] = True
    np.testing.assert_array_equal(m, ~inside)


def test_definite_background_fractional_boxes_round_outwards():
    m = definite_background(np.array([[1.5, 0.2, 2.5, 1.0]]), 4, 5)
    expected = np.ones((4, 5), bool)
    expected[0, 1:3] = False  # columns 1..2 (touched), row 0 only (y1 = 1.0 is exclusive)
    np.testing.assert_array_equal(m, expected)
    assert definite_background(np.zeros((0, 4)), 3, 3).all()


# ----------------------------------------------------------------------------- conventions


def test_voc_coordinates_convert_to_zero_based_exclusive(hand_voc):
    xml = hand_voc.xml(
        [("cat", 1, 1, 10, 5), ("dog", 7, 3, 7, 3), ("cat", 40, 20, 60, 40)], size=(48, 32)
    )
    hand_voc.add("a", xml=xml)
    s = load_sample(hand_voc.root, "a", ["cat", "dog"])
    np.testing.assert_array_equal(
        s.boxes,
        [[0, 0, 10, 5],  # xmin=1..xmax=10 covers columns 0..9: 10 px wide
         [6, 2, 7, 3],  # a one-pixel box
         [39, 19, 48, 32]],  # partly outside: clipped to the 48x32 image, no error
    )
    assert s.labels.tolist() == [1, 2, 1]
    area = (s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])
    assert area.tolist() == [50, 1, 9 * 13]
    assert s.boxes.dtype == np.float32


def test_resolve_classes(tmp_path):
    assert resolve_classes(tmp_path) == list(VOC_CLASSES) and len(VOC_CLASSES) == 20
    (tmp_path / "classes.txt").write_text("# comment\nfoo\n\nbar\n")
    assert resolve_classes(tmp_path) == ["foo", "bar"]
    assert resolve_classes(tmp_path, ["x"]) == ["x"]
    with pytest.raises(DataError, match="background"):
        resolve_classes(tmp_path, ["background", "cat"])
    with pytest.raises(DataError, match="duplicate"):
        resolve_classes(tmp_path, ["cat", "cat"])


def test_split_errors(tmp_path):
    with pytest.raises(DataError, match=r"train\.txt: split file not found"):
        read_split(tmp_path, "train")
    p = tmp_path / "ImageSets/Segmentation/train.txt"
    p.parent.mkdir(parents=True)
    p.write_text("\n\n")
    with pytest.raises(DataError, match="no image ids"):
        read_split(tmp_path, "train")


# ----------------------------------------------------------------------------- image modes


@pytest.mark.parametrize("mode,fmt,suffix", [
    ("L", "JPEG", ".jpg"), ("CMYK", "JPEG", ".jpg"), ("RGBA", "PNG", ".png"),
    ("P", "PNG", ".png"), ("LA", "PNG", ".png"), ("I;16", "PNG", ".png"),
])
def test_image_modes_are_converted_to_rgb(hand_voc, mode, fmt, suffix):
    rgb = np.random.default_rng(0).integers(0, 255, size=(32, 48, 3), dtype=np.uint8)
    img = Image.fromarray(rgb)
    img = img.convert("L").convert(mode) if mode in ("I;16",) else img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    hand_voc.add("m", image=buf.getvalue(), suffix=suffix)
    s = load_sample(hand_voc.root, "m", hand_voc.classes)
    assert s.image.shape == (32, 48, 3) and s.image.dtype == np.uint8
    if mode in ("L", "LA", "I;16"):
        assert (s.image[..., 0] == s.image[..., 1]).all()


# ----------------------------------------------------------------------------- bad input


def _load(hv, image_id="x"):
    return load_sample(hv.root, image_id, hv.classes)


def test_unreadable_image(hand_voc):
    hand_voc.add("x", image=b"this is not a jpeg")
    with pytest.raises(DataError, match=r"JPEGImages/x\.jpg: cannot read image \("):
        _load(hand_voc)


def test_truncated_jpeg(hand_voc):
    rng = np.random.default_rng(1)
    data = hand_voc.jpeg(rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8))
    hand_voc.add("x", image=data[: len(data) // 2])
    with pytest.raises(DataError, match=r"JPEGImages/x\.jpg: cannot read image \(.*truncated"):
        _load(hand_voc)


def test_xml_without_objects(hand_voc):
    hand_voc.add("x", xml=hand_voc.xml([], size=(48, 32)))
    with pytest.raises(DataError, match=r"Annotations/x\.xml: no <object> boxes"):
        _load(hand_voc)


def test_malformed_xml(hand_voc):
    hand_voc.add("x", xml="<annotation><object>")
    with pytest.raises(DataError, match=r"x\.xml: cannot parse annotation XML"):
        _load(hand_voc)


def test_box_wholly_outside_image(hand_voc):
    hand_voc.add("x", xml=hand_voc.xml([("cat", 2, 2, 8, 8), ("dog", 60, 5, 70, 9)], size=(48, 32)))
    with pytest.raises(DataError, match=r"x\.xml: box 2 \(xmin=60 .*\) lies outside the 48x32 image"):
        _load(hand_voc)


def test_box_of_zero_area(hand_voc):
    hand_voc.add("x", xml=hand_voc.xml([("cat", 10, 5, 9, 9)], size=(48, 32)))
    with pytest.raises(DataError, match=r"x\.xml: box 1 .* zero or negative size"):
        _load(hand_voc)


def test_unknown_class(hand_voc):
    hand_voc.add("x", xml=hand_voc.xml([("horse", 2, 2, 8, 8)], size=(48, 32)))
    with pytest.raises(DataError, match=r"x\.xml: unknown class 'horse' .*known: cat, dog"):
        _load(hand_voc)


def test_missing_files(hand_voc):
    hand_voc.add("noimg", image=b"")
    with pytest.raises(DataError, match=r"JPEGImages/noimg\.jpg: image file not found"):
        _load(hand_voc, "noimg")
    hand_voc.add("noxml", xml="")
    with pytest.raises(DataError, match=r"Annotations/noxml\.xml: annotation file not found"):
        _load(hand_voc, "noxml")


def test_size_mismatch(hand_voc):
    hand_voc.add("x", xml=hand_voc.xml([("cat", 2, 2, 8, 8)], size=(100, 100)))
    with pytest.raises(DataError, match=r"<size> says 100x100 but .*x\.jpg is 48x32"):
        _load(hand_voc)


def test_bad_ground_truth(hand_voc):
    hand_voc.add("x")
    gt = np.zeros((32, 48), np.uint8)
    gt[0, 0] = 7  # only classes 0..2 and 255 are allowed
    save_label_png(hand_voc.root / "SegmentationClass" / "x.png", gt)
    with pytest.raises(DataError, match=r"SegmentationClass/x\.png: label value 7"):
        _load(hand_voc)
    save_label_png(hand_voc.root / "SegmentationClass" / "x.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataError, match=r"x\.png: mask is 10x10, image is 48x32"):
        _load(hand_voc)


def test_gt_from_segmentation_class_aug(hand_voc):
    hand_voc.add("x")
    gt = np.full((32, 48), 255, np.uint8)
    gt[:4] = 2
    save_label_png(hand_voc.root / "SegmentationClassAug" / "x.png", gt)
    np.testing.assert_array_equal(_load(hand_voc).gt, gt)


# ----------------------------------------------------------------------------- skip mode


def test_on_error_skip_counts_and_summary(hand_voc):
    for i in range(3):
        hand_voc.add(f"good{i}")
    rng = np.random.default_rng(2)
    data = hand_voc.jpeg(rng.integers(0, 255, size=(32, 48, 3), dtype=np.uint8))
    hand_voc.add("trunc", image=data[: len(data) // 2])
    hand_voc.add("garbage", image=b"nope")
    hand_voc.add("noobj", xml=hand_voc.xml([], size=(48, 32)))
    hand_voc.add("unknown", xml=hand_voc.xml([("yak", 1, 1, 5, 5)], size=(48, 32)))
    hand_voc.add("outside", xml=hand_voc.xml([("cat", 90, 1, 95, 5)], size=(48, 32)))
    hand_voc.add("missing", image=b"")

    with pytest.raises(DataError):
        strict = VOCDataset(hand_voc.root, "train")
        [strict[i] for i in range(len(strict))]

    ds = VOCDataset(hand_voc.root, "train", on_error="skip")
    assert ds.ids == ["good0", "good1", "good2"]
    assert [i for i, _ in ds.skipped] == ["trunc", "garbage", "noobj", "unknown", "outside", "missing"]
    assert all(len(ds[i].labels) == 1 for i in range(len(ds)))
    text = ds.summary()
    assert "3 images" in text and "skipped 6 of 9" in text and "trunc.jpg" in text
    assert "and 1 more" in text


def test_on_error_skip_with_nothing_left(hand_voc):
    hand_voc.add("garbage", image=b"nope")
    with pytest.raises(DataError, match="no usable images"):
        VOCDataset(hand_voc.root, "train", on_error="skip")


def test_dataset_with_transform(synth_root):
    ds = VOCDataset(synth_root, "val", transform=lambda s: s.id)
    assert [ds[i] for i in range(len(ds))] == ["000006", "000007"]

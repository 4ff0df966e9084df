"""The synthetic generator: layout, determinism, fill rates and the box-as-mask baseline."""

from __future__ import annotations

import numpy as np
import pytest

from banacli.data.palette import load_label_png
from banacli.data.synthetic import SYNTH_CLASSES, box_as_mask, box_baseline_miou, generate, _miou
from banacli.data.voc import VOCDataset, read_split
from banacli.errors import DataError


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_and_splits(synth_root):
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        assert len(list((synth_root / d).iterdir())) == 8, d
    assert read_split(synth_root, "train") == [f"{i:06d}" for i in range(6)]
    assert read_split(synth_root, "trainval") == [f"{i:06d}" for i in range(8)]
    assert (synth_root / "classes.txt").read_text().split() == list(SYNTH_CLASSES)
    assert not list(synth_root.rglob("*.tmp"))


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    sa = generate(a, images=4, size=64, seed=7, val=1)
    sb = generate(b, images=4, size=64, seed=7, val=1)
    generate(c, images=4, size=64, seed=8, val=1)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa == fb
    assert sa == {**sb, "root": sa["root"]}
    labels = [k for k in fa if k.startswith("SegmentationClass/")]
    assert len(labels) == 5
    assert all(fa[k] != fc[k] for k in labels)
    # image i does not depend on how many images are made
    generate(tmp_path / "d", images=2, size=64, seed=7)
    assert _files(tmp_path / "d")["SegmentationClass/000001.png"] == fa["SegmentationClass/000001.png"]


@pytest.fixture(scope="module")
def larger(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth40")
    return root, generate(root, images=40, size=64, seed=3, val=4)


def test_fill_rate_and_box_baseline(larger):
    root, summary = larger
    assert 0.4 <= summary["mean_fill_rate"] <= 0.8
    # box-as-mask is clearly imperfect, but not useless
    assert 0.35 < summary["box_miou"] < 0.8
    assert box_baseline_miou(root, "train") == pytest.approx(summary["box_miou"], abs=1e-9)
    ds = VOCDataset(root, "train")
    fills, n_objects, overlapping, classes = [], [], 0, set()
    for i in range(len(ds)):
        s = ds[i]
        n_objects.append(len(s.labels))
        classes.update(s.labels.tolist())
        inst = load_label_png(root / "SegmentationObject" / f"{s.id}.png")
        for k, (x0, y0, x1, y1) in enumerate(s.boxes.astype(int), start=1):
            fills.append((inst[y0:y1, x0:x1] == k).mean())
        b = s.boxes
        ix = np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0])
        iy = np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1])
        overlap = (ix > 0) & (iy > 0)
        np.fill_diagonal(overlap, False)
        overlapping += int(overlap.any())
    assert np.mean(fills) == pytest.approx(summary["mean_fill_rate"])
    assert np.std(fills) > 0.05  # fill rates vary
    assert min(n_objects) >= 1 and max(n_objects) <= 4 and len(set(n_objects)) >= 3
    assert classes == {1, 2, 3, 4, 5}
    assert overlapping >= len(ds) // 4  # boxes often overlap


def test_box_as_mask_draws_smaller_boxes_on_top():
    boxes = np.array([[0, 0, 4, 4], [1, 1, 3, 3]], np.float32)
    m = box_as_mask(boxes[::-1], np.array([2, 1]), 5, 6)  # small box first: still on top
    expected = np.zeros((5, 6), np.uint8)
    expected[0:4, 0:4] = 1
    expected[1:3, 1:3] = 2
    np.testing.assert_array_equal(m, expected)


def test_miou_by_hand():
    conf = np.array([[3, 1], [0, 2]])  # IoU 3/4 and 2/3
    assert _miou(conf) == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert _miou(np.array([[5, 0, 0], [0, 0, 0], [0, 0, 1]])) == 1.0  # absent class ignored


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(DataError):
        generate(tmp_path, images=0, size=64, seed=0)
    with pytest.raises(DataError):
        generate(tmp_path, images=2, size=8, seed=0)


def test_progress_is_called_per_image(tmp_path):
    calls = []
    generate(tmp_path, images=2, size=32, seed=0, val=1, progress=lambda n=1: calls.append(n))
    assert calls == [1, 1, 1]


# ----------------------------------------------------------------------------- --context P


def _habitats(root):
    return dict(line.split() for line in (root / "habitats.txt").read_text().splitlines())


def test_context_zero_is_unchanged_and_context_images_nest(tmp_path):
    base, half, most = tmp_path / "p0", tmp_path / "p5", tmp_path / "p8"
    s0 = generate(base, images=12, size=48, seed=5)
    s5 = generate(half, images=12, size=48, seed=5, context=0.5)
    generate(most, images=12, size=48, seed=5, context=0.8)
    assert s0["context_images"] == 0 and set(_habitats(base).values()) == {"-"}
    f0, f5 = _files(base), _files(half)
    h5, h8 = _habitats(half), _habitats(most)
    ctx5 = {i for i, h in h5.items() if h != "-"}
    assert 0 < len(ctx5) == s5["context_images"] < 12
    assert ctx5 <= {i for i, h in h8.items() if h != "-"}
    for image_id, h in h5.items():
        jpg = f"JPEGImages/{image_id}.jpg"
        # objects (class map, instance map, boxes) never change with P; backgrounds only in context images
        for k in (f"SegmentationClass/{image_id}.png", f"SegmentationObject/{image_id}.png", f"Annotations/{image_id}.xml"):
            assert f5[k] == f0[k]
        assert (f5[jpg] == f0[jpg]) == (h == "-")


def test_context_background_is_the_habitat_of_an_object_class(tmp_path):
    import cv2

    from banacli.data.synthetic import HABITATS, _HUES

    # no habitat hue lies in an object's hue band (class hue +-12 degrees)
    for hab in HABITATS.values():
        lo, hi = hab["hue"]
        for h in _HUES.values():
            assert min(abs(((x - h + 180) % 360) - 180) for x in np.linspace(lo, hi, 31)) > 12
    root = tmp_path / "p1"
    generate(root, images=10, size=64, seed=2, context=1.0)
    ds = VOCDataset(root, "train", with_gt=True)
    habitats = _habitats(root)
    for i in range(len(ds)):
        s = ds.load(i)
        cls = habitats[s.id]
        assert SYNTH_CLASSES.index(cls) + 1 in s.labels.tolist()
        bg = s.gt == 0
        # skip the ring of pixels next to objects (JPEG blur) and look at the background's hue
        bg = cv2.erode(bg.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        hsv = cv2.cvtColor(s.image, cv2.COLOR_RGB2HSV_FULL)[bg].astype(np.float64)
        bright = hsv[:, 1] > 25  # hue is undefined for grey pixels and the star field's dots
        hue = hsv[bright, 0] * 360.0 / 256.0
        lo, hi = HABITATS[cls]["hue"]
        centre = (lo + hi) / 2
        dist = np.abs(((hue - centre + 180) % 360) - 180)
        assert np.median(dist) < (hi - lo) / 2 + 12, (s.id, cls)


def test_context_out_of_range_is_refused(tmp_path):
    with pytest.raises(DataError, match="context"):
        generate(tmp_path / "x", images=2, size=48, seed=0, context=1.5)

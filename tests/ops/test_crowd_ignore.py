"""COCO crowd regions (``ignore``): no background query uses them, labels are void there, and
without them (VOC data) every output is byte-identical to before."""

from __future__ import annotations

import numpy as np
import torch

import banacli.ops.pseudo as pseudo
from banacli.data.voc import Sample
from banacli.ops.pseudo import generate_pseudo_labels

from .test_pseudo import BOXES, LABELS, H, W, _inside_mask, _scene

CROWD = (slice(0, 8), slice(40, 64))  # top right, outside both boxes


def _ignore() -> np.ndarray:
    m = np.zeros((H, W), dtype=bool)
    m[CROWD] = True
    return m


def test_no_ignore_is_byte_identical():
    image, feats, weight, _ = _scene()
    base = generate_pseudo_labels(image, feats, weight, BOXES, LABELS)
    for ign in (None, np.zeros((H, W), bool)):
        out = generate_pseudo_labels(image, feats, weight, BOXES, LABELS, ignore=ign)
        assert out.ycrf.tobytes() == base.ycrf.tobytes() and out.yret.tobytes() == base.yret.tobytes()
        np.testing.assert_array_equal(out.attention, base.attention)


def test_ignored_pixels_are_void_and_not_background_queries(monkeypatch):
    image, feats, weight, expected = _scene()
    seen = {}
    real = pseudo.background_attention

    def spy(field, background, **kw):
        seen["bg"] = background.copy()
        return real(field, background, **kw)

    monkeypatch.setattr(pseudo, "background_attention", spy)
    out = generate_pseudo_labels(image, feats, weight, BOXES, LABELS, ignore=_ignore())
    np.testing.assert_array_equal(seen["bg"], ~_inside_mask() & ~_ignore())
    assert (out.ycrf[CROWD] == 255).all() and (out.yret[CROWD] == 255).all()
    keep = ~_ignore()
    np.testing.assert_array_equal(out.ycrf[keep], expected[keep])


def test_ignore_never_voids_box_pixels():
    image, feats, weight, expected = _scene()
    out = generate_pseudo_labels(image, feats, weight, BOXES, LABELS, ignore=np.ones((H, W), bool))
    inside = _inside_mask()
    assert (out.ycrf[~inside] == 255).all()
    np.testing.assert_array_equal(out.ycrf[inside], expected[inside])


def test_train_cls_background_leaves_out_ignored_pixels():
    from banacli.data.transforms import JointAugment
    from bana_plugins.train_cls import ClsTrainSet

    ign = np.zeros((32, 32), bool)
    ign[:, 20:] = True
    s = Sample(id="a", image=np.zeros((32, 32, 3), np.uint8), boxes=np.array([[0, 0, 8, 8]], np.float32),
               labels=np.array([1]), ignore=ign)

    class DS:
        def __len__(self):
            return 1

        def load(self, i):
            return s

    aug = JointAugment(32, scale=(1.0, 1.0), flip=False, jitter=0.0)
    out = ClsTrainSet(DS(), aug)[(0, 0)]
    assert "ignore" not in out
    bg = out["bg"].numpy()
    assert not bg[:, 20:].any() and not bg[:8, :8].any() and bg[20, 10]
    s.ignore = None
    assert torch.equal(ClsTrainSet(DS(), aug)[(0, 0)]["bg"][:, 20:], torch.ones(32, 12, dtype=torch.bool))

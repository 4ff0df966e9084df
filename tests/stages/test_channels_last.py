"""cls.channels_last / seg.channels_last: the same training in NHWC memory format."""

import shutil

import pytest
import torch

import banacli.engine.loop as loop
from banacli.artifacts import load_model
from banacli.engine import DistInfo, wrap_ddp
from banacli.models.deeplab import build_segmenter

from .conftest import TINY_CLS, TINY_SEG, invoke

CL = ["--set", "cls.channels_last=true"]


@pytest.fixture
def labelled_run(tiny_data, fresh_cls_run, app):
    res = invoke(app, ["gen-labels", "--data", tiny_data, "--run", fresh_cls_run, "-q"])
    assert res.exit_code == 0, res.output
    return fresh_cls_run


def test_wrap_ddp_converts_the_weights_in_place():
    torch.manual_seed(0)
    model = build_segmenter("tiny", 6, weights=None, tau=20.0).eval()
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        want = model(x)["logits"]
    params = list(model.parameters())
    net = wrap_ddp(model, DistInfo(), channels_last=True)
    assert net is model and all(a is b for a, b in zip(params, model.parameters()))  # an optimizer keeps working
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert not all(w.is_contiguous() for w in convs)  # really another layout (1x1 kernels are both)
    with torch.no_grad():
        got = model(x)["logits"]
    assert got.is_contiguous(memory_format=torch.channels_last)  # the convolutions ran NHWC
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def _weights(path):
    tensors, meta = load_model(path)
    return tensors, meta


def test_train_cls_channels_last_trains_the_same_model(tiny_data, app, tmp_path):
    args = ["--data", tiny_data, "--iterations", 4, *TINY_CLS]
    assert invoke(app, ["train-cls", "--run", tmp_path / "a", *args]).exit_code == 0
    res = invoke(app, ["train-cls", "--run", tmp_path / "b", *args, *CL])
    assert res.exit_code == 0, res.output
    a, _ = _weights(tmp_path / "a" / "cls" / "model.safetensors")
    b, meta = _weights(tmp_path / "b" / "cls" / "model.safetensors")
    assert meta["config"]["cls"]["channels_last"] is True
    assert a.keys() == b.keys()
    for k in a:  # 4 SGD steps from the same init and batches: equal up to the order of float sums
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # ... and the sums did run another way


def test_train_cls_channels_last_resumes_exactly(tiny_data, app, tmp_path, monkeypatch):
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["--data", tiny_data, "--iterations", 6, *TINY_CLS, *CL, "--checkpoint-every", "3"]
    assert invoke(app, ["train-cls", "--run", full, *args]).exit_code == 0
    real_save = loop.save_checkpoint

    def save_then_crash(*a, **kw):
        real_save(*a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    assert invoke(app, ["train-cls", "--run", part, *args]).exit_code == 130
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    res = invoke(app, ["train-cls", "--run", part, *args, "--resume"])
    assert res.exit_code == 0, res.output
    a, _ = _weights(full / "cls" / "model.safetensors")
    b, meta = _weights(part / "cls" / "model.safetensors")
    assert meta["metrics"]["resumed_from"] == 3
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_train_seg_channels_last_trains_the_same_model(tiny_data, labelled_run, app, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(labelled_run, other)
    args = ["--data", tiny_data, "--iterations", 3, *TINY_SEG]
    assert invoke(app, ["train-seg", "--run", labelled_run, *args]).exit_code == 0
    res = invoke(app, ["train-seg", "--run", other, *args, "--set", "seg.channels_last=true"])
    assert res.exit_code == 0, res.output
    a, _ = _weights(labelled_run / "seg" / "model.safetensors")
    b, meta = _weights(other / "seg" / "model.safetensors")
    assert meta["config"]["seg"]["channels_last"] is True
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-4, msg=k)

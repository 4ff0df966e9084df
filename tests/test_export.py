"""bana export: ONNX and TorchScript give PyTorch's logits on plain pixels; metadata travels along."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from banacli.artifacts import sha256_file
from banacli.models.deeplab import upsample_logits
from banacli.models.normalize import CAFFE, TORCHVISION, normalize
from banacli.runs import load_segmenter

from .segrun import CLASS_NAMES, invoke, make_seg_run


def _reference(run, image: torch.Tensor) -> torch.Tensor:
    """bana's own path: normalise with the stored convention, run, upsample to the input size."""
    model, meta = load_segmenter(run / "seg" / "model.safetensors")
    with torch.no_grad():
        logits = model(normalize(image, meta["normalization"]))["logits"]
    return upsample_logits(logits, tuple(image.shape[-2:]))


def _pixels(h: int, w: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm", [CAFFE, TORCHVISION], ids=["caffe", "torchvision"])
def test_onnx_matches_pytorch_at_another_size(tmp_path, norm):
    import onnx
    import onnxruntime as ort

    run = make_seg_run(tmp_path / "run", normalization=norm)
    res = invoke(["export", "--run", run, "--format", "onnx", "--input-size", 48])
    assert res.exit_code == 0, res.output
    path = run / "export" / "model.onnx"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].type == "tensor(uint8)"
    image = _pixels(40, 56)  # not the traced size: height and width are dynamic
    logits, mask = sess.run(["logits", "mask"], {"image": image.numpy()})
    ref = _reference(run, image)
    assert logits.shape == (1, 3, 40, 56)
    assert np.abs(logits - ref.numpy()).max() < 1e-4
    assert (mask == ref.argmax(1).numpy()).mean() > 0.999  # ties aside

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["class_names"]) == CLASS_NAMES
    assert json.loads(props["normalization"]) == norm
    meta = json.loads(props["bana"])
    assert meta["tau"] == 20.0 and meta["dynamic_hw"] is True and meta["input"]["dtype"] == "uint8"
    side = json.loads((run / "export" / "model.onnx.json").read_text())
    assert side["class_names"] == CLASS_NAMES and side["sha256"] == sha256_file(path)


def test_torchscript_matches_pytorch(tmp_path):
    from banacli.interop.model_export import load_torchscript

    run = make_seg_run(tmp_path / "run", normalization=CAFFE)
    res = invoke(["export", "--run", run, "--format", "torchscript", "--input-size", 48, "-q"])
    assert res.exit_code == 0, res.output
    path = run / "export" / "model.pt"
    extra = {"bana.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), _extra_files=extra)  # plain torch, no bana needed
    meta = json.loads(extra["bana.json"])
    assert meta["class_names"] == CLASS_NAMES and meta["normalization"] == CAFFE
    image = _pixels(33, 50)
    with torch.no_grad():
        logits, mask = module(image)
    ref = _reference(run, image)
    assert (logits - ref).abs().max() < 1e-4
    assert torch.equal(mask, logits.argmax(1))
    again, meta2 = load_torchscript(path)
    assert meta2 == meta
    assert json.loads((run / "export" / "model.pt.json").read_text())["sha256"] == sha256_file(path)


def test_safetensors_copy_carries_metadata_and_loads_back(tmp_path):
    from safetensors import safe_open

    run = make_seg_run(tmp_path / "run")
    res = invoke(["export", "--run", run, "--format", "safetensors", "-q"])
    assert res.exit_code == 0, res.output
    path = run / "export" / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        md = fh.metadata()
    assert json.loads(md["class_names"]) == CLASS_NAMES
    assert json.loads(md["normalization"]) == TORCHVISION
    copy, meta = load_segmenter(path)  # the sidecar model.json makes it a bana model again
    orig, _ = load_segmenter(run / "seg" / "model.safetensors")
    assert meta["export"]["exported_as"] == "safetensors"
    for (k, a), (_, b) in zip(orig.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), k


def test_export_without_a_model_is_one_clear_error(tmp_path):
    res = invoke(["export", "--run", tmp_path / "run", "--format", "onnx"])
    assert res.exit_code == 1
    assert "segmentation model not found" in res.output and "Traceback" not in res.output

"""bana convert: a state dict with the authors' names becomes a bana model, tensor for tensor."""

from __future__ import annotations

import torch

from banacli.interop.authors_checkpoints import authors_key_map, normalize_keys, target_shapes
from banacli.data.voc import VOC_CLASSES
from banacli.models.normalize import CAFFE
from banacli.models.vgg16 import vgg16_parameter_names
from banacli.runs import load_classifier, load_segmenter

from .segrun import invoke

# The authors' VGG16 (models/Layers.py, after AffinityNet): (out, in) channels and kernel of each conv.
_THEIR_VGG16 = [("conv1_1", 64, 3, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 128, 64, 3), ("conv2_2", 128, 128, 3),
                ("conv3_1", 256, 128, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3),
                ("conv4_1", 512, 256, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3),
                ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3", 512, 512, 3),
                ("fc6", 1024, 512, 3), ("fc7", 1024, 1024, 1)]


def their_state(num_classes: int, *, widths=None, prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """A state dict named like the release's ClsNet / DeepLab_LargeFOV, random values."""
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, out, inp, k in _THEIR_VGG16:
        if widths is not None:
            out, inp = widths[name]
        sd[f"{prefix}{name}.weight"] = torch.randn(out, inp, k, k, generator=gen)
        sd[f"{prefix}{name}.bias"] = torch.randn(out, generator=gen)
    fc7 = sd[f"{prefix}fc7.weight"].shape[0]
    sd["classifier.weight"] = torch.randn(num_classes, fc7, 1, 1, generator=gen)
    return sd


def _tiny_widths() -> dict[str, tuple[int, int]]:
    shapes = target_shapes("cls", "tiny", 3)
    return {n: tuple(shapes[f"backbone.{n}.weight"][:2]) for n, *_ in _THEIR_VGG16}


def test_key_map_covers_our_models_exactly():
    table = authors_key_map()
    for kind, name in (("cls", "vgg16"), ("seg", "largefov")):
        shapes = target_shapes(kind, name, 21)
        assert set(table.values()) == set(shapes), kind
        theirs = their_state(21)
        assert {table[k]: tuple(v.shape) for k, v in theirs.items()} == shapes
    assert len(vgg16_parameter_names()) == 30


def test_prefixes_are_normalised():
    t = torch.zeros(1)
    got = normalize_keys({"module.module.backbone.conv1_1.weight": t, "conv1_1.bias": t, "module.classifier.weight": t})
    assert set(got) == {"backbone.conv1_1.weight", "backbone.conv1_1.bias", "classifier.weight"}


def test_full_size_largefov_converts_and_loads(tmp_path):
    theirs = {f"module.{k}": v for k, v in their_state(21).items()}  # saved from nn.DataParallel
    src = tmp_path / "SegNet_VGG.pt"
    torch.save(theirs, src)
    run = tmp_path / "run"
    res = invoke(["convert", src, "--kind", "seg", "--run", run])
    assert res.exit_code == 0, res.output
    model, meta = load_segmenter(run / "seg" / "model.safetensors")
    assert meta["arch"] == "segnet/largefov" and meta["tau"] == 20.0
    assert meta["class_names"] == ["background", *VOC_CLASSES]
    assert meta["normalization"] == CAFFE
    assert model.backbone.fc6.dilation == (12, 12)
    ours = model.state_dict()
    for key, value in theirs.items():
        assert torch.equal(ours[key.removeprefix("module.")], value), key


def test_tiny_classifier_with_bare_names_and_own_classes(tmp_path):
    theirs = their_state(3, widths=_tiny_widths(), prefix="")
    src = tmp_path / "ClsNet.pth"
    torch.save({"state_dict": theirs}, src)
    out = tmp_path / "cls.safetensors"
    res = invoke(["convert", src, "--kind", "cls", "--backbone", "tiny", "--classes", "cat,dog", "--out", out, "-q"])
    assert res.exit_code == 0, res.output
    model, meta = load_classifier(out)
    assert meta["arch"] == "bap-classifier/tiny" and meta["class_names"] == ["background", "cat", "dog"]
    assert meta["converted_from"]["release"] == "cvlab-yonsei/BANA"
    assert torch.equal(model.classifier.weight, theirs["classifier.weight"])
    assert torch.equal(model.backbone.conv3_2.weight, theirs["conv3_2.weight"])


def test_missing_and_unexpected_keys_in_one_line(tmp_path):
    theirs = their_state(3, widths=_tiny_widths())
    del theirs["backbone.fc7.bias"]
    theirs["backbone.extra.weight"] = torch.zeros(1)
    torch.save(theirs, tmp_path / "bad.pt")
    res = invoke(["convert", tmp_path / "bad.pt", "--kind", "seg", "--model", "tiny", "--classes", "cat,dog",
                  "--out", tmp_path / "x.safetensors"])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert "does not fit segnet/tiny: missing backbone.fc7.bias; unexpected backbone.extra.weight" in lines[0]


def test_wrong_shape_and_class_count_are_named(tmp_path):
    theirs = their_state(3, widths=_tiny_widths())
    torch.save(theirs, tmp_path / "tiny.pt")
    # a tiny checkpoint is not a full VGG-16
    res = invoke(["convert", tmp_path / "tiny.pt", "--kind", "cls", "--classes", "cat,dog", "--out", tmp_path / "a.safetensors"])
    assert res.exit_code == 1 and "backbone.conv1_1.weight has shape (8, 3, 3, 3), bap-classifier/vgg16 needs (64, 3, 3, 3)" in res.output
    # 3 outputs but the 20 VOC classes by default
    res = invoke(["convert", tmp_path / "tiny.pt", "--kind", "cls", "--backbone", "tiny", "--out", tmp_path / "b.safetensors"])
    assert res.exit_code == 1 and "classifier has 3 outputs but there are 21 class names" in res.output


class Payload:
    """Stands for arbitrary pickled code, which torch.load(weights_only=True) must refuse."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"x": Payload()}, tmp_path / "evil.pt")
    res = invoke(["convert", tmp_path / "evil.pt", "--kind", "seg", "--out", tmp_path / "x.safetensors"])
    assert res.exit_code == 1 and "holds a pickled Python object (tests.test_convert.Payload)" in res.output
    (tmp_path / "junk.pt").write_bytes(b"junk")
    res = invoke(["convert", tmp_path / "junk.pt", "--kind", "seg", "--out", tmp_path / "x.safetensors"])
    assert res.exit_code == 1 and "junk.pt: not a " in res.output
    res = invoke(["convert", tmp_path / "evil.pt", "--out", tmp_path / "x.safetensors"])
    assert res.exit_code == 2 and "--kind cls|seg is required" in res.output

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from banacli.artifacts import atomic_path, atomic_write_text, load_model, save_model, sidecar_path
from banacli.errors import ArtifactError

NORM = {"mean": [1.0, 2.0, 3.0], "std": [1.0, 1.0, 1.0], "bgr": True}


def _save(path, **kw):
    sd = {"a.weight": torch.randn(4, 3), "b.bias": torch.arange(5, dtype=torch.float32)}
    save_model(path, sd, arch="tiny", class_names=["background", "cat", "dog"], normalization=NORM,
               config={"cls": {"grid_size": 4}}, inputs={"data": "abc"}, metrics={"loss": 0.5}, **kw)
    return sd


def test_round_trip(tmp_path):
    p = tmp_path / "cls" / "model.safetensors"
    sd = _save(p)
    tensors, meta = load_model(p, arch="tiny", num_classes=3)
    assert set(tensors) == set(sd)
    for k in sd:
        assert torch.equal(tensors[k], sd[k])
    assert meta["class_names"] == ["background", "cat", "dog"]
    assert meta["normalization"] == NORM and meta["config"]["cls"]["grid_size"] == 4
    assert meta["inputs"] == {"data": "abc"} and meta["metrics"] == {"loss": 0.5}
    assert meta["bana_version"]
    # no temp files left behind
    assert sorted(x.name for x in p.parent.iterdir()) == ["model.json", "model.safetensors"]


def test_tampered_weights_detected(tmp_path):
    p = tmp_path / "model.safetensors"
    _save(p)
    data = bytearray(p.read_bytes())
    data[-1] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sidecar"):
        load_model(p)


def test_request_mismatch_and_missing(tmp_path):
    p = tmp_path / "model.safetensors"
    _save(p)
    with pytest.raises(ArtifactError, match="has 3 classes, expected 21"):
        load_model(p, num_classes=21)
    with pytest.raises(ArtifactError, match="architecture is 'tiny', expected 'vgg16'"):
        load_model(p, arch="vgg16")
    with pytest.raises(ArtifactError, match="class names"):
        load_model(p, class_names=["background", "cat", "cow"])
    with pytest.raises(ArtifactError, match="model file not found"):
        load_model(tmp_path / "other.safetensors")
    sidecar_path(p).write_text("{not json")
    with pytest.raises(ArtifactError, match="sidecar is not valid JSON"):
        load_model(p)
    sidecar_path(p).unlink()
    with pytest.raises(ArtifactError, match="sidecar missing"):
        load_model(p)


def test_pickle_is_never_loaded(tmp_path):
    # a pickle renamed to .safetensors with a forged sidecar is rejected, not unpickled
    p = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(1)}, p)
    from banacli.artifacts import sha256_file

    sidecar_path(p).write_text(json.dumps({"format": "bana-model/1", "arch": "x", "num_classes": 1,
                                           "class_names": ["bg"], "weights_sha256": sha256_file(p)}))
    with pytest.raises(ArtifactError, match="cannot read safetensors"):
        load_model(p)


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    p = tmp_path / "x.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["x.txt"]


def test_killed_writer_leaves_old_or_new(tmp_path):
    """SIGKILL a process in the middle of a large atomic write: the old content survives."""
    p = tmp_path / "big.bin"
    atomic_write_text(p, "old")
    code = (
        "import sys, time\n"
        "from banacli.artifacts import atomic_path\n"
        f"with atomic_path({str(p)!r}) as tmp:\n"
        "    with open(tmp, 'wb') as fh:\n"
        "        fh.write(b'x' * 1000)\n"
        "        fh.flush()\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert p.read_text() == "old"


def test_same_weights_give_the_same_file_in_every_process(tmp_path):
    """The weights hash identifies a model across runs (manifests compare it)."""
    code = (
        "import sys, torch\n"
        "from banacli.artifacts import save_model\n"
        "sd = {f'layer{i}.weight': torch.full((2, 2), float(i)) for i in range(6)}\n"
        "save_model(sys.argv[1], sd, arch='tiny', class_names=['bg', 'a'], normalization={})\n"
    )
    digests = set()
    for i in range(4):
        p = tmp_path / f"m{i}.safetensors"
        subprocess.run([sys.executable, "-c", code, str(p)], check=True)
        digests.add(json.loads(sidecar_path(p).read_text())["weights_sha256"])
    assert len(digests) == 1

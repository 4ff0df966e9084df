"""Exporting a trained segmenter: ONNX, TorchScript or a safetensors copy, each self-describing.

Every exported model takes plain pixels, so a user needs nothing from bana to run it:

- input ``image``: (B, 3, H, W) RGB, values 0..255 — ``uint8`` for ONNX (``np.asarray(pil)``
  transposed to channels-first), ``uint8`` or float for TorchScript. The normalisation the
  weights were trained with (Caffe BGR mean, or torchvision mean/std) is applied inside.
- outputs ``logits`` (B, K, H, W) float32 (tau-scaled cosines, upsampled bilinearly with
  align_corners=True to the input size) and ``mask`` (B, H, W) int64 = argmax over K.
  H and W are free (ONNX dynamic axes ``height``/``width``), the batch too.

The class names (background first), the normalisation and tau travel inside every file
(ONNX ``metadata_props``, TorchScript ``_extra_files["bana.json"]``, safetensors metadata) and
in a JSON sidecar beside it (``model.onnx.json``, ``model.pt.json``; the safetensors copy gets
the ordinary model sidecar ``model.json`` so :func:`banacli.runs.load_segmenter` reads it).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from banacli import __version__
from banacli.artifacts import SIDECAR_FORMAT, atomic_path, atomic_write_bytes, atomic_write_json, sha256_file
from banacli.errors import ArtifactError, BanaError
from banacli.models.normalize import check_normalization

EXPORT_FORMAT = "bana-export/1"
INPUT_NAME = "image"
OUTPUT_NAMES = ("logits", "mask")
TORCHSCRIPT_META = "bana.json"  # name of the metadata entry in a TorchScript archive
FILE_NAMES = {"onnx": "model.onnx", "torchscript": "model.pt", "safetensors": "model.safetensors"}

__all__ = [
    "EXPORT_FORMAT", "FILE_NAMES", "PixelSegmenter", "export_metadata", "export_onnx", "export_safetensors",
    "export_sidecar_path", "export_torchscript", "load_torchscript", "max_abs_difference", "read_onnx_metadata",
    "run_onnx",
]


class PixelSegmenter(nn.Module):
    """A segmenter that takes RGB pixels: (B, 3, H, W) in 0..255 -> (logits (B, K, H, W), mask (B, H, W)).

    The stored normalisation becomes two buffers and a channel permutation, so the same
    arithmetic as :func:`banacli.models.normalize.normalize` happens inside the graph.
    """

    def __init__(self, model: nn.Module, normalization: Mapping[str, Any]) -> None:
        super().__init__()
        norm = check_normalization(normalization)
        self.model = model
        self.register_buffer("order", torch.tensor([2, 1, 0] if norm["bgr"] else [0, 1, 2]))
        self.register_buffer("mean", torch.tensor(norm["mean"], dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(norm["std"], dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = image.float().index_select(1, self.order)  # RGB -> the weights' channel order
        x = (x - self.mean) / self.std
        logits = self.model(x)["logits"]  # (B, K, h, w) at stride 8
        logits = F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=True)
        return logits, logits.argmax(1)


def export_sidecar_path(path: str | Path) -> Path:
    """JSON beside an export: ``model.onnx.json``, ``model.pt.json``; ``model.json`` for safetensors."""
    path = Path(path)
    return path.with_suffix(".json") if path.suffix == ".safetensors" else path.with_name(path.name + ".json")


def export_metadata(meta: Mapping[str, Any], fmt: str, **more: Any) -> dict[str, Any]:
    """What every exported file carries, from the trained model's sidecar ``meta``."""
    out = {
        "format": EXPORT_FORMAT,
        "exported_as": fmt,
        "arch": meta["arch"],
        "num_classes": int(meta["num_classes"]),
        "class_names": list(meta["class_names"]),
        "normalization": check_normalization(meta["normalization"]),
        "tau": float(meta.get("tau", 20.0)),
        "input": {
            "name": INPUT_NAME, "layout": "NCHW", "channels": "RGB", "range": "0..255",
            "dtype": "uint8" if fmt == "onnx" else "uint8 or float32",
            "note": "plain pixels; the normalisation above is applied inside the model",
        },
        "outputs": {
            "logits": "(B, K, H, W) float32 tau-scaled cosine scores at the input size",
            "mask": "(B, H, W) int64 class ids (argmax of logits); 0 = class_names[0]",
        },
        "source_weights_sha256": meta.get("weights_sha256"),
        "bana_version": __version__,
    }
    out.update(more)
    return out


@contextlib.contextmanager
def _quiet_torch_warnings() -> Iterator[None]:
    """torch.jit and the TorchScript-based ONNX exporter warn that they are deprecated; we know."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, UserWarning, torch.jit.TracerWarning):
            warnings.filterwarnings("ignore", category=category)
        yield


def _onnx_bytes(wrapper: PixelSegmenter, example: Tensor, opset: int, dynamic: bool) -> bytes:
    axes = None
    if dynamic:
        axes = {
            INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch", 2: "height", 3: "width"},
            "mask": {0: "batch", 1: "height", 2: "width"},
        }
    buf = io.BytesIO()
    with _quiet_torch_warnings():
        # dynamo=False: the TorchScript-based exporter, which needs no onnxscript and handles
        # the dynamic-size bilinear upsampling of this graph.
        torch.onnx.export(wrapper, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
                          output_names=list(OUTPUT_NAMES), opset_version=opset, dynamic_axes=axes,
                          do_constant_folding=True)
    return buf.getvalue()


def run_onnx(model: bytes | str | Path, image: Tensor) -> tuple[Any, Any]:
    """(logits, mask) numpy arrays of an ONNX model on a uint8 (B, 3, H, W) image, via onnxruntime."""
    import onnxruntime as ort

    src = model if isinstance(model, bytes) else str(model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
    logits, mask = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: image.cpu().numpy()})
    return logits, mask


def max_abs_difference(wrapper: PixelSegmenter, image: Tensor, got: Any) -> float:
    """Largest |logit difference| between the PyTorch wrapper and an exported model's output."""
    with torch.no_grad():
        ref = wrapper(image)[0].cpu()
    got_t = torch.as_tensor(got)
    if tuple(got_t.shape) != tuple(ref.shape):
        return float("inf")
    return float((got_t.float() - ref).abs().max())


def export_onnx(
    wrapper: PixelSegmenter,
    path: str | Path,
    *,
    example: Tensor,
    opset: int,
    metadata: dict[str, Any],
    check_size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Write ``path`` (ONNX) with ``metadata`` in its metadata_props, and its JSON sidecar.

    H and W are exported as dynamic axes. When onnxruntime is installed the file is checked
    against PyTorch on ``example`` and on a second size ``check_size``; if the dynamic-size
    graph disagrees, a fixed-size graph is written instead (``dynamic_hw`` records which).
    Returns the metadata written, with ``max_abs_diff`` when checked.
    """
    import onnx

    wrapper = wrapper.eval()
    try:
        import onnxruntime  # noqa: F401

        have_ort = True
    except ImportError:
        have_ort = False

    info: dict[str, Any] = {"opset": opset}
    data = _onnx_bytes(wrapper, example, opset, dynamic=True)
    info["dynamic_hw"] = True
    if have_ort:
        diffs = [max_abs_difference(wrapper, example, run_onnx(data, example)[0])]
        if check_size is not None:
            other = example_input(check_size, seed=1)
            try:
                diffs.append(max_abs_difference(wrapper, other, run_onnx(data, other)[0]))
            except Exception:  # noqa: BLE001 - onnxruntime refuses the shape: fall back below
                diffs.append(float("inf"))
        if diffs[-1] > tolerance and diffs[0] <= tolerance:
            data = _onnx_bytes(wrapper, example, opset, dynamic=False)
            info["dynamic_hw"] = False
            info["input_size"] = [int(example.shape[2]), int(example.shape[3])]
            diffs = diffs[:1]
        info["max_abs_diff"] = max(diffs)
        if info["max_abs_diff"] > tolerance:
            raise BanaError(
                f"{path}: ONNX export disagrees with PyTorch (max |logit difference| "
                f"{info['max_abs_diff']:.3g} > {tolerance:g}); not written"
            )
    model = onnx.load_from_string(data)
    meta = dict(metadata, **info)
    del model.metadata_props[:]
    for key, value in _flat_metadata(meta).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    model.producer_name = "bana"
    model.producer_version = __version__
    model.doc_string = f"bana segmenter {meta['arch']}: RGB uint8 pixels in, logits and mask out"
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString())
    _write_sidecar(path, meta)
    return meta


def _flat_metadata(meta: Mapping[str, Any]) -> dict[str, str]:
    """ONNX / safetensors metadata are str -> str: the whole record as JSON under ``bana``,
    plus the keys a reader most wants on their own."""
    return {
        "bana": json.dumps(meta, sort_keys=True),
        "class_names": json.dumps(meta["class_names"]),
        "normalization": json.dumps(meta["normalization"]),
        "input": json.dumps(meta["input"]),
        "tau": str(meta["tau"]),
        "arch": str(meta["arch"]),
    }


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``bana`` record of an exported ONNX file (ArtifactError when absent)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "bana" not in props:
        raise ArtifactError(f"{path}: no bana metadata in the ONNX file (not exported by bana export)")
    return json.loads(props["bana"])


def export_torchscript(
    wrapper: PixelSegmenter,
    path: str | Path,
    *,
    example: Tensor,
    metadata: dict[str, Any],
    check_size: tuple[int, int] | None = None,
    tolerance: float = 1e-4,
) -> dict[str, Any]:
    """Write ``path`` (a traced TorchScript archive) with ``metadata`` as ``_extra_files["bana.json"]``.

    The trace is checked against the PyTorch wrapper on ``example`` and at ``check_size``.
    """
    wrapper = wrapper.eval()
    with _quiet_torch_warnings():
        with torch.no_grad():
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
        diffs = [max_abs_difference(wrapper, example, traced(example)[0])]
        if check_size is not None:
            other = example_input(check_size, seed=1)
            with torch.no_grad():
                diffs.append(max_abs_difference(wrapper, other, traced(other)[0]))
        meta = dict(metadata, dynamic_hw=True, max_abs_diff=max(diffs))
        if meta["max_abs_diff"] > tolerance:
            raise BanaError(
                f"{path}: TorchScript trace disagrees with PyTorch (max |logit difference| "
                f"{meta['max_abs_diff']:.3g} > {tolerance:g}); not written"
            )
        with atomic_path(path) as tmp:
            torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_META: json.dumps(meta, sort_keys=True)})
    _write_sidecar(path, meta)
    return meta


def load_torchscript(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.jit.ScriptModule, dict]:
    """Load an exported TorchScript model and its ``bana`` metadata."""
    extra = {TORCHSCRIPT_META: ""}
    try:
        with _quiet_torch_warnings():
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except (RuntimeError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot load TorchScript ({str(exc).splitlines()[0]})") from None
    if not extra[TORCHSCRIPT_META]:
        raise ArtifactError(f"{path}: no {TORCHSCRIPT_META} inside (not exported by bana export)")
    return module.eval(), json.loads(extra[TORCHSCRIPT_META])


def export_safetensors(
    tensors: Mapping[str, Tensor], sidecar: Mapping[str, Any], path: str | Path, metadata: dict[str, Any]
) -> dict[str, Any]:
    """Write a safetensors copy whose own metadata holds the class names and normalisation,
    with a model sidecar (``model.json``, format bana-model/1) so bana can load it back."""
    from safetensors.torch import save_file  # loads torch

    path = Path(path)
    flat = {"format": SIDECAR_FORMAT, **_flat_metadata(metadata)}
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=flat)
    side = dict(sidecar)
    side["weights_sha256"] = sha256_file(path)
    side["export"] = metadata
    atomic_write_json(export_sidecar_path(path), side)
    return metadata


def _write_sidecar(path: str | Path, meta: Mapping[str, Any]) -> None:
    side = dict(meta)
    side["sha256"] = sha256_file(path)
    atomic_write_json(export_sidecar_path(path), side)


def example_input(size: int | Sequence[int], seed: int = 0) -> Tensor:
    """A reproducible (1, 3, H, W) uint8 image used for tracing and checking."""
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8, generator=gen)

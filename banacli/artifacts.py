"""Artifacts: atomic writes, safetensors models with JSON sidecars, provenance hashes.

A model is ``NAME.safetensors`` with ``NAME.json`` beside it. The sidecar holds the resolved
config, class names, input normalisation, package version, the sha256 of the inputs the model
was built from, metrics, and the sha256 of the weights file itself, so that a tampered or
mismatched file is detected on load. Nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

from typing import TYPE_CHECKING
import errno as _errno
import pickle
import re
import warnings

from banacli import __version__
from banacli.errors import ArtifactError

if TYPE_CHECKING:  # torch is imported lazily so that `bana --help` stays fast
    import torch

SIDECAR_FORMAT = "bana-model/1"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the destination folder; rename it onto ``path`` on success.

    A process killed mid-write leaves either the old file or the new one, never a partial file.
    On an exception the temporary file is removed and the old file is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp_path, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        io_error = _as_os_error(exc, path)
        if io_error is not None:
            raise io_error from None
        raise


def _as_os_error(exc: BaseException, path: Path) -> OSError | None:
    """An I/O failure of a writer (an OSError without a file name, with or without an errno, or a
    library error whose text carries an errno, as safetensors' "os error 28") as an OSError
    naming ``path``; else None."""

    if isinstance(exc, OSError):
        if exc.filename is not None:
            return None
        if exc.errno is None:  # e.g. PIL's "broken data stream when writing image file"
            return OSError(None, str(exc) or type(exc).__name__, str(path))
        return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))
    if not isinstance(exc, Exception):
        return None
    found = re.search(r"(?:os error|errno|code:?)\s*(\d+)", str(exc), re.IGNORECASE)
    if found and int(found.group(1)) in _errno.errorcode:
        n = int(found.group(1))
        return OSError(n, os.strerror(n), str(path))
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temp_target(temp: Path) -> str:
    """The file name a temporary file of :func:`atomic_path` was to become (``.NAME.XXXX.tmp`` -> NAME)."""
    return temp.name[1:-len(".tmp")].rsplit(".", 1)[0]


def remove_stale_temp_files(folder: str | os.PathLike, targets: Collection[str] | None = None) -> int:
    """Delete temporary files that a killed writer left in ``folder`` (``.NAME.*.tmp``); with
    ``targets``, only those whose NAME is in it.

    Call only where no other process is writing to the same folder, or, with ``targets``, to
    those names. Returns how many were removed.
    """
    wanted = None if targets is None else set(targets)
    n = 0
    for p in Path(folder).glob(".*.tmp"):
        if wanted is not None and temp_target(p) not in wanted:
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


_CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A plain state dict from a third-party weights file: safetensors, or a PyTorch file read
    with ``torch.load(weights_only=True)`` (which refuses pickled Python objects).

    Accepts the dict itself or one wrapped as ``{"state_dict": ...}`` / ``{"model": ...}``.
    Raises ArtifactError naming the file and the problem.
    """

    import torch
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # loads torch

            obj: Any = load_file(str(path), device="cpu")
        else:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of files it then refuses
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip, pickle, safetensors and I/O errors all end here
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
        # torch names the global it refused: "Unsupported global: GLOBAL mod.Name" for an allowed
        # module, "unsupported GLOBAL posix.system whose module posix is blocked" (torch 2.14) otherwise
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", text, re.IGNORECASE)
        if found:
            raise ArtifactError(f"{path}: holds a pickled Python object ({found.group(1)}), not only tensors, "
                                "which bana will not unpickle or execute; refused (checkpoints are read with "
                                "torch.load(weights_only=True))") from None
        if isinstance(exc, pickle.UnpicklingError):
            if _starts_like_pickle(path):
                raise ArtifactError(f"{path}: holds pickled Python objects, which bana will not execute; "
                                    "give a safetensors file or a torch.save'd state dict of tensors") from None
            raise ArtifactError(f"{path}: not a PyTorch checkpoint (corrupt or not written by torch.save)") from None
        first = text.splitlines()[0] if text else type(exc).__name__
        raise ArtifactError(f"{path}: not a readable PyTorch state dict ({first[:200]})") from None
    for key in _CONTAINER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ArtifactError(f"{path}: not a state dict (expected a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ArtifactError(f"{path}: entry {bad[0]!r} is not a tensor; expected a plain state dict")
    return dict(obj)


def _starts_like_pickle(path: Path) -> bool:
    """A raw pickle stream (protocol 2+ starts with 0x80 and the protocol number)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


# Sidecar keys that change what a loaded model computes; their values (and a sha256 of them) are
# kept in the safetensors metadata, so an edited sidecar is caught on load.
OUTPUT_KEYS = ("arch", "num_classes", "class_names", "normalization", "tau")


def _output_values(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: meta[k] for k in OUTPUT_KEYS if k in meta}


def _values_sha256(values: Mapping[str, Any]) -> str:
    return sha256_bytes(json.dumps(values, sort_keys=True, default=str).encode())


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def save_model(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    arch: str,
    class_names: list[str],
    normalization: Mapping[str, Any],
    config: Mapping[str, Any] | None = None,
    inputs: Mapping[str, str] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (safetensors) and its JSON sidecar, both atomically.

    ``class_names`` includes the background at index 0. ``inputs`` maps a name (e.g. the
    classifier checkpoint, a label folder) to the sha256 of what the model was built from.
    """
    from safetensors.torch import save_file  # loads torch

    path = Path(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    outputs = _output_values({"arch": arch, "num_classes": len(class_names), "class_names": list(class_names),
                              "normalization": dict(normalization), **dict(extra or {})})
    # sidecar content that affects outputs, covered by the weights file's own hash
    stamp = {"format": SIDECAR_FORMAT, "arch": arch, "outputs": outputs, "outputs_sha256": _values_sha256(outputs)}
    with atomic_path(path) as tmp:
        # one metadata key only: safetensors keeps metadata in a hash map whose order varies
        # between processes, and the file's sha256 must not
        save_file(tensors, str(tmp), metadata={"bana": json.dumps(stamp, sort_keys=True)})
    sidecar = {
        "format": SIDECAR_FORMAT,
        "arch": arch,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "normalization": dict(normalization),
        "bana_version": __version__,
        "config": dict(config or {}),
        "inputs": dict(inputs or {}),
        "metrics": dict(metrics or {}),
        "weights_sha256": sha256_file(path),
    }
    if extra:
        sidecar.update(extra)
    atomic_write_json(sidecar_path(path), sidecar)
    return path


def read_sidecar(path: str | os.PathLike) -> dict[str, Any]:
    side = sidecar_path(path)
    if not side.is_file():
        raise ArtifactError(f"{side}: sidecar missing (every model needs its JSON sidecar)")
    try:
        meta = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{side}: sidecar is not valid JSON ({exc})") from None
    if meta.get("format") != SIDECAR_FORMAT:
        raise ArtifactError(f"{side}: not a bana model sidecar (format {meta.get('format')!r})")
    return meta


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    device: str | torch.device = "cpu",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Load weights and sidecar, checking integrity and the request. Never unpickles.

    Raises ArtifactError naming the file when it is missing, tampered with (sha256 differs
    from the sidecar), or does not match the requested architecture / classes.
    """
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: model file not found")
    meta = read_sidecar(path)
    digest = sha256_file(path)
    if digest != meta.get("weights_sha256"):
        raise ArtifactError(
            f"{path}: sha256 {digest[:12]}… does not match its sidecar "
            f"({str(meta.get('weights_sha256'))[:12]}…); the file was modified or truncated"
        )
    if arch is not None and meta["arch"] != arch:
        raise ArtifactError(f"{path}: architecture is {meta['arch']!r}, expected {arch!r}")
    if num_classes is not None and meta["num_classes"] != num_classes:
        raise ArtifactError(
            f"{path}: model has {meta['num_classes']} classes, expected {num_classes}"
        )
    if class_names is not None and list(meta["class_names"]) != list(class_names):
        raise ArtifactError(
            f"{path}: class names {meta['class_names']} differ from the dataset's {list(class_names)}"
        )
    from safetensors import SafetensorError  # with the next line: torch only when a file is read
    from safetensors.torch import load_file  # loads torch

    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: cannot read safetensors ({exc})") from None
    check_sidecar_outputs(path, meta)
    return tensors, meta


def check_sidecar_outputs(path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """ArtifactError naming the keys when the sidecar's output-affecting values (``OUTPUT_KEYS``)
    differ from those stamped into the weights file. Files written before the stamp pass."""
    from safetensors import safe_open  # safetensors only when a file is read

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            stamp = json.loads((fh.metadata() or {}).get("bana", "{}"))
    except Exception:  # noqa: BLE001 - unreadable metadata was already reported by load_file
        return
    saved = stamp.get("outputs") if isinstance(stamp, dict) else None
    if not isinstance(saved, dict) or stamp.get("outputs_sha256") != _values_sha256(saved):
        return
    now = _output_values(meta)
    differs = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if differs:
        raise ArtifactError(f"{sidecar_path(path)}: {', '.join(differs)} edited after the model was saved "
                            f"(the weights file {path.name} records other values); restore the sidecar")

"""Golden check: the whole pipeline on a fixed synthetic set, and the sha256 of every output.

Issue 20 (regrouping the library) must not change behaviour. This script runs, in a fresh
folder, with the ``tiny`` backbone and fixed seeds::

    synth -> train-cls -> gen-labels (Ycrf, Yret, instance results) -> train-seg -> eval
          -> export (safetensors, torchscript) -> predict

and writes one line ``<sha256>  <path>`` per output file. Files that carry the time of a run
are hashed after normalising it: JSON / YAML values under keys that hold wall-clock facts
(``time``, ``seconds``, ``started``, ...) are blanked, CSV columns of that kind are dropped,
and text logs are left out (they are progress, not results). Everything else, including every
label PNG, model file and report number, is hashed byte for byte.

    python benchmarks/golden.py OUT                 # run, print the hashes, write OUT/golden.txt
    python benchmarks/golden.py OUT --check FILE    # exit 1 and list the files that differ

``--small`` is the size the test suite runs (tests/test_golden.py); the default size is a
little larger and is what a refactoring session runs before and after each step. Hashes
depend on the CPU's vector features and the torch build (docs/performance.md): a recorded
file names both, and ``--check`` says so when they differ instead of calling it a regression.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

# keys whose values are wall-clock facts, never results
VOLATILE = re.compile(r"(^|_)(time|times|seconds|secs|elapsed|duration|started|finished|created|date|"
                      r"timestamp|wall|eta|host|hostname|pid|images_per_s|per_s|rate|cpu_seconds|"
                      r"peak_rss|rss|python|platform|version|argv|command|cwd|sha256|digest|source)($|_)", re.I)
SKIP_SUFFIXES = {".log", ".lock", ".tmp"}
SIZES = {
    "small": dict(images=8, val=4, size=48, cls_it=6, seg_it=6, batch=4),
    "default": dict(images=16, val=6, size=64, cls_it=20, seg_it=20, batch=4),
}


def fingerprint() -> dict:
    """What the hashes depend on besides the code: the torch build and the CPU kernels it runs."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: ("<volatile>" if VOLATILE.search(str(k)) else _scrub(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, str) and os.sep in obj:
        return "<path>"  # absolute paths of the temporary folder
    return obj


def normalised_bytes(path: Path) -> bytes | None:
    """The bytes that stand for ``path`` in the golden file, or None to leave it out."""
    if path.suffix in SKIP_SUFFIXES:
        return None
    raw = path.read_bytes()
    if path.suffix == ".json":
        return json.dumps(_scrub(json.loads(raw)), sort_keys=True).encode()
    if path.suffix in {".yaml", ".yml"}:
        import yaml

        return json.dumps(_scrub(yaml.safe_load(raw)), sort_keys=True, default=str).encode()
    if path.suffix == ".csv":
        rows = list(csv.reader(io.StringIO(raw.decode())))
        if not rows:
            return raw
        keep = [i for i, name in enumerate(rows[0]) if not VOLATILE.search(name)]
        return "\n".join(",".join(r[i] for i in keep if i < len(r)) for r in rows).encode()
    if path.suffix in {".md", ".txt"}:
        return None  # human-readable reports repeat the JSON numbers and carry times
    if path.suffix == ".safetensors":
        return _safetensors_bytes(raw)
    if path.suffix == ".pt" and zipfile.is_zipfile(path):
        return _torchscript_bytes(path)
    return raw


def _json_or_text(value: str):
    try:
        return _scrub(json.loads(value))
    except ValueError:
        return value


def _safetensors_bytes(raw: bytes) -> bytes:
    """Tensor bytes as stored, plus the metadata header with its volatile values blanked
    (checkpoints keep loss histories with times, sidecars keep source paths)."""
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    meta = {k: _json_or_text(v) for k, v in header.pop("__metadata__", {}).items()}
    return json.dumps([header, _scrub(meta)], sort_keys=True).encode() + raw[8 + n:]


def _torchscript_bytes(path: Path) -> bytes:
    """A TorchScript zip by its members: code and tensor data as stored; left out are the
    archive's folder name (from a temporary file name), debug pickles (source paths) and the
    random serialization id."""
    digest = hashlib.sha256()
    with zipfile.ZipFile(path) as zf:
        for name in sorted(zf.namelist()):
            member = name.split("/", 1)[1] if "/" in name else name
            if member.endswith(".debug_pkl") or member.endswith("serialization_id"):
                continue
            data = zf.read(name)
            if member.endswith(".json"):
                data = json.dumps(_scrub(json.loads(data)), sort_keys=True).encode()
            digest.update(member.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.digest()


def hash_tree(root: Path, *, exclude: set[str] = frozenset()) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in exclude:
            continue
        data = normalised_bytes(path)
        if data is not None:
            out[rel] = hashlib.sha256(data).hexdigest()
    return out


def run_pipeline(out: Path, size: str = "default") -> Path:
    """Run every stage into OUT/data and OUT/run; returns OUT."""
    s = SIZES[size]
    data, run, masks = out / "data", out / "run", out / "run" / "masks"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", BANA_OVERRIDES="")
    common = ["--device", "cpu"]
    steps = [
        ["synth", data, "--images", s["images"], "--val", s["val"], "--size", s["size"], "--seed", 7],
        ["train-cls", "--data", data, "--run", run, "--backbone", "tiny", "--iterations", s["cls_it"],
         "--batch-size", s["batch"], "--crop-size", s["size"], "--lr", 0.01, "--seed", 3, "--log-every", 2],
        ["gen-labels", "--data", data, "--run", run, "--workers", 1, "--viz", 2],
        ["train-seg", "--data", data, "--run", run, "--model", "tiny", "--iterations", s["seg_it"],
         "--batch-size", s["batch"], "--crop-size", s["size"], "--lr", 0.01, "--seed", 3, "--log-every", 2],
        ["eval", "--data", data, "--run", run, "--split", "val", "--no-ms", "--no-flip"],
        ["eval", "--data", data, "--run", run, "--split", "train", "--what", "labels"],
        ["export", "--run", run, "--format", "safetensors"],
        ["export", "--run", run, "--format", "torchscript", "--input-size", s["size"]],
        ["predict", "--run", run, data / "JPEGImages", "--out", masks, "--no-ms", "--no-flip"],
    ]
    for step in steps:
        cmd = [sys.executable, "-m", "banacli", *map(str, step), *common]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"golden: `bana {' '.join(map(str, step))}` failed (rc {proc.returncode}):\n"
                             f"{proc.stderr[-3000:]}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="empty folder for the run (created)")
    ap.add_argument("--small", action="store_true", help="the test suite's size")
    ap.add_argument("--check", type=Path, help="golden file to compare with; exit 1 on any difference")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if any(args.out.iterdir()):
        ap.error(f"{args.out}: not empty (golden runs start from nothing)")
    run_pipeline(args.out, "small" if args.small else "default")
    hashes = hash_tree(args.out)
    fp = fingerprint()
    text = f"# {json.dumps(fp, sort_keys=True)} size={'small' if args.small else 'default'}\n" + "".join(
        f"{h}  {p}\n" for p, h in hashes.items())
    (args.out / "golden.txt").write_text(text)
    print(text, end="")
    if args.check:
        return compare(read_golden(args.check), (fp, hashes))
    return 0


def read_golden(path: Path) -> tuple[dict, dict[str, str]]:
    lines = path.read_text().splitlines()
    fp = json.loads(lines[0][2:].rsplit(" size=", 1)[0])
    return fp, {p: h for h, p in (line.split("  ", 1) for line in lines[1:] if line.strip())}


def compare(expected: tuple[dict, dict[str, str]], actual: tuple[dict, dict[str, str]]) -> int:
    (fp0, want), (fp1, got) = expected, actual
    diff = sorted(p for p in set(want) | set(got) if want.get(p) != got.get(p))
    if not diff:
        print(f"golden: all {len(want)} files identical")
        return 0
    for p in diff:
        print(f"golden: differs: {p} ({'missing' if p not in got else 'new' if p not in want else 'changed'})")
    if fp0 != fp1:
        print(f"golden: recorded on {fp0}, run on {fp1}: the difference may be the platform's")
    return 1


if __name__ == "__main__":
    raise SystemExit(main())

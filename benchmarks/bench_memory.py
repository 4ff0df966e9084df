"""Peak memory of gen-labels, train-cls and predict on one image of a given size (issue 13),
and a soak run of gen-labels over many small images with the RSS sampled as it goes.

Sizes: each stage runs as its own ``bana`` process on a one-image dataset (VOC's 20 classes,
two boxes) with VGG-16 at random init (``cls.weights=null``; the memory does not depend on the
weights' values) on the CPU, and the process's peak resident set (``ru_maxrss`` from
``wait4``; with ``--workers 1`` joblib runs the labelling in the same process, so the number
covers features, DenseCRF and writing). predict uses a random-init DeepLab-LargeFOV (VGG-16)
saved as train-seg would.

    .venv/bin/python benchmarks/bench_memory.py sizes                      # 500x375, 2000x1500, 4000x3000
    .venv/bin/python benchmarks/bench_memory.py sizes --max-side null --sizes 2000x1500   # without the cap
    .venv/bin/python benchmarks/bench_memory.py soak --images 2000         # RSS every 100 images

Soak: trains a tiny classifier for 2 iterations, then runs ``bana gen-labels`` (the bana
labeler, Ycrf + Yret) over ``--images`` synthetic 48 px images and samples the RSS of the
main process and of its worker processes (from /proc) each time another 100 labels exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BANA = [sys.executable, "-m", "banacli"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def run_peak(args: list[str]) -> tuple[float, float, int]:
    """Run ``bana ARGS``; (peak RSS in MB, seconds, exit code)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([*BANA, *args], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err_chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    if proc.returncode != 0:
        sys.stderr.write(b"".join(err_chunks).decode(errors="replace")[-2000:])
    return usage.ru_maxrss / 1024, time.perf_counter() - t0, proc.returncode


def make_dataset(root: Path, width: int, height: int, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    cells = rng.integers(0, 256, (height // 32 + 1, width // 32 + 1, 3), dtype=np.uint8)
    image = np.kron(cells, np.ones((32, 32, 1), np.uint8))[:height, :width]
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    Image.fromarray(image).save(root / "JPEGImages" / "big.jpg", quality=90)
    boxes = [("cat", 0.1, 0.15, 0.55, 0.9), ("dog", 0.5, 0.3, 0.95, 0.8)]
    objs = "".join(
        f"<object><name>{n}</name><bndbox><xmin>{int(a * width) + 1}</xmin><ymin>{int(b * height) + 1}</ymin>"
        f"<xmax>{int(c * width)}</xmax><ymax>{int(d * height)}</ymax></bndbox></object>"
        for n, a, b, c, d in boxes)
    (root / "Annotations" / "big.xml").write_text(
        f"<annotation><size><width>{width}</width><height>{height}</height><depth>3</depth></size>{objs}</annotation>")
    (root / "ImageSets" / "Segmentation" / "train.txt").write_text("big\n")


def save_segmenter(run: Path) -> None:
    import torch

    from banacli.artifacts import save_model
    from banacli.data.voc import VOC_CLASSES
    from banacli.models.deeplab import build_segmenter
    from banacli.runs import seg_arch

    torch.manual_seed(0)
    model = build_segmenter("largefov", 21, weights=None, tau=20.0)
    save_model(run / "seg" / "model.safetensors", model.state_dict(), arch=seg_arch("largefov"),
               class_names=["background", *VOC_CLASSES], normalization=model.normalization, extra={"tau": 20.0})


def bench_sizes(sizes: list[tuple[int, int]], max_side: str, out: Path | None) -> list[dict]:
    rows = []
    for width, height in sizes:
        with tempfile.TemporaryDirectory(prefix="bana-mem-") as tmp:
            tmp = Path(tmp)
            data, run = tmp / "data", tmp / "run"
            make_dataset(data, width, height)
            common = ["--data", str(data), "--run", str(run), "--device", "cpu", "-q",
                      "--set", f"data.max_side={max_side}"]
            cls = ["train-cls", *common, "--backbone", "vgg16", "--set", "cls.weights=null", "--iterations", "1",
                   "--batch-size", "1", "--checkpoint-every", "1"]
            gen = ["gen-labels", *common, "--workers", "1"]
            save_segmenter(run)
            pred = ["predict", str(data / "JPEGImages" / "big.jpg"), "--run", str(run), "--out", str(tmp / "out"),
                    "--device", "cpu", "-q", "--set", f"data.max_side={max_side}"]
            for stage, args in (("train-cls", cls), ("gen-labels", gen), ("predict", pred)):
                peak, secs, code = run_peak(args)
                row = {"stage": stage, "size": f"{width}x{height}", "max_side": max_side,
                       "peak_rss_mb": round(peak), "seconds": round(secs, 1), "exit": code}
                print(json.dumps(row), flush=True)
                rows.append(row)
    if out is not None:
        out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            kids = [int(k) for k in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out


def bench_soak(images: int, every: int, workers: int, out: Path | None) -> list[dict]:
    from banacli.data.synthetic import generate

    with tempfile.TemporaryDirectory(prefix="bana-soak-") as tmp:
        tmp = Path(tmp)
        data, run = tmp / "data", tmp / "run"
        t0 = time.perf_counter()
        generate(data, images=images, size=48, seed=0)
        print(f"dataset: {images} images in {time.perf_counter() - t0:.0f} s", flush=True)
        _, _, code = run_peak(["train-cls", "--data", str(data), "--run", str(run), "--backbone", "tiny", "--set",
                               "cls.weights=null", "--iterations", "2", "--batch-size", "2", "--crop-size", "48",
                               "--device", "cpu", "-q"])
        assert code == 0
        proc = subprocess.Popen([*BANA, "gen-labels", "--data", str(data), "--run", str(run), "--device", "cpu", "-q",
                                 "--workers", str(workers)], env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        labels = run / "labels" / "Ycrf"
        rows, next_mark, t0 = [], every, time.perf_counter()
        while proc.poll() is None:
            n = sum(1 for _ in labels.glob("*.png")) if labels.is_dir() else 0
            if n >= next_mark:
                kids = _descendants(proc.pid)
                row = {"labels": n, "main_rss_mb": round(_rss_mb(proc.pid)),
                       "workers_rss_mb": [round(_rss_mb(k)) for k in kids], "seconds": round(time.perf_counter() - t0, 1)}
                print(json.dumps(row), flush=True)
                rows.append(row)
                next_mark = (n // every + 1) * every
            time.sleep(0.1)
        print(json.dumps({"exit": proc.returncode, "labels": sum(1 for _ in labels.glob('*.png'))}), flush=True)
    if out is not None:
        out.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("sizes")
    s.add_argument("--sizes", default="500x375,2000x1500,4000x3000")
    s.add_argument("--max-side", default="800", help="data.max_side for the runs ('null': no cap)")
    s.add_argument("--out", type=Path)
    k = sub.add_parser("soak")
    k.add_argument("--images", type=int, default=2000)
    k.add_argument("--every", type=int, default=100)
    k.add_argument("--workers", type=int, default=2)
    k.add_argument("--out", type=Path)
    args = ap.parse_args()
    if args.what == "sizes":
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
        bench_sizes(sizes, args.max_side, args.out)
    else:
        bench_soak(args.images, args.every, args.workers, args.out)


if __name__ == "__main__":
    main()

"""Peak memory and time of stage-2 pseudo labels: efficient (low-res) vs naive (full-res) path.

Each measurement runs in a fresh subprocess: after imports and building the inputs the
worker reads ``ru_maxrss`` (peak resident set), runs the path, and reports the increase
of the peak, which counts every CPU allocation (torch tensors included, which
tracemalloc does not see). Time: the first call and the median of ``--repeat`` calls.

    .venv/bin/python benchmarks/bench_labels_memory.py            # 500×375, C = 1024
    .venv/bin/python benchmarks/bench_labels_memory.py --threads 1 --repeat 3

Rows: ``efficient`` and ``naive`` are the whole of ``generate_pseudo_labels`` (steps 1–9,
DenseCRF included); ``*-nocrf`` are the feature steps alone (1–6 and 9, no DenseCRF);
``crf only`` is step 7 alone on the same-size input, the part both paths share.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _inputs(height: int, width: int, channels: int, seed: int = 0):
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(seed)
    h, w = (height - 1) // 8 + 1, (width - 1) // 8 + 1  # stride-8 map, align_corners
    feats = torch.randn(channels, h, w, generator=g).clamp_min(0)  # ReLU-like (C, h, w)
    weight = torch.randn(21, channels, generator=g) * 0.01  # VOC: L + 1 = 21
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    boxes = np.array(
        [[0.1 * width, 0.1 * height, 0.6 * width, 0.9 * height],
         [0.4 * width, 0.3 * height, 0.95 * width, 0.8 * height],
         [0.7 * width, 0.05 * height, 0.9 * width, 0.3 * height]]
    )
    labels = np.array([15, 12, 15])
    return image, feats, weight, boxes, labels


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _worker(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from banacli.ops.crf import dense_crf
    from banacli.ops.pseudo import (
        FeatureField,
        background_attention,
        compute_unaries,
        generate_pseudo_labels,
        retrieve_labels,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    image, feats, weight, boxes, labels = _inputs(args.height, args.width, args.channels)
    n = 1 + len(np.unique(labels))
    probs = np.random.default_rng(1).dirichlet(np.ones(n), size=args.height * args.width)
    probs = np.ascontiguousarray(probs.T.reshape(n, args.height, args.width).astype(np.float32))

    if args.worker == "crf":
        def run():
            return dense_crf(image, probs)
    elif args.worker.endswith("-nocrf"):
        exact = args.worker.startswith("naive")

        def run():  # steps 1–6 and 9; Ycrf replaced by the argmax of the CRF input
            field = FeatureField(feats, (args.height, args.width), exact=exact)
            inside = np.zeros((args.height, args.width), dtype=bool)
            for x0, y0, x1, y1 in boxes.astype(int):
                inside[y0:y1, x0:x1] = True
            att = background_attention(field, ~inside)
            un = compute_unaries(field, weight, boxes, labels, att)
            ycrf = np.asarray(un.classes, dtype=np.uint8)[un.probs.argmax(0)]
            return retrieve_labels(field, ycrf, boxes, labels, un.classes, weight)
    else:
        exact = args.worker == "naive"

        def run():
            return generate_pseudo_labels(image, feats, weight, boxes, labels, exact=exact)

    before = _peak_mib()
    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    peak = _peak_mib() - before
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"peak_mib": peak, "first_s": first, "median_s": statistics.median(times) if times else first}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--channels", type=int, default=1024)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--worker", choices=["efficient", "naive", "efficient-nocrf", "naive-nocrf", "crf"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return

    h, w = (args.height - 1) // 8 + 1, (args.width - 1) // 8 + 1
    full_gib = args.channels * args.height * args.width * 4 / 2**30
    print(
        f"image {args.width}x{args.height}, features {args.channels}x{h}x{w} (stride 8); "
        f"full-res features would be {full_gib:.2f} GiB float32; threads={args.threads or 'default'}"
    )
    print(f"{'path':<16} {'peak +MiB':>10} {'first s':>9} {'median s':>9}")
    for name in ("efficient", "naive", "efficient-nocrf", "naive-nocrf", "crf"):
        cmd = [sys.executable, __file__, "--worker", name] + [
            f"--{k}={v}" for k, v in
            (("height", args.height), ("width", args.width), ("channels", args.channels),
             ("repeat", args.repeat), ("threads", args.threads))
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        label = "crf only" if name == "crf" else name
        print(f"{label:<16} {r['peak_mib']:>10.1f} {r['first_s']:>9.3f} {r['median_s']:>9.3f}")


if __name__ == "__main__":
    main()

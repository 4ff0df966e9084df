"""Train-step time of the demo's networks with and without channels-last weights (cls/seg.channels_last).

    .venv/bin/python benchmarks/bench_channels_last.py             # 1 torch thread, as each demo run
    .venv/bin/python benchmarks/bench_channels_last.py --threads 2

One SGD step (forward, loss, backward, update) at batch 8 of 96 x 96 inputs, as ``bana demo``
trains them: the ``tiny-bn`` BAP classifier (3 boxes per image) and the ``tiny`` DeepLab (mean of
the logits as the loss: the loss's cost is the same either way). Layouts: ``nchw`` (the default),
``channels_last`` (what ``wrap_ddp(channels_last=True)`` does: the weights only). The layouts are
timed in turns, ``--rounds`` rounds of ``--steps`` steps after a warm-up; the minimum per step is
reported (the least disturbed round) with the median beside it.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from banacli.boxes import definite_background_tensor
from banacli.engine import DistInfo, wrap_ddp
from banacli.models.deeplab import build_segmenter
from bana_plugins.train_cls import build_classifier

LAYOUTS = ("nchw", "channels_last")


def _cls_step(channels_last: bool, batch: int, size: int):
    torch.manual_seed(0)
    model = build_classifier("tiny-bn", None, 6)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    wrap_ddp(model, DistInfo(), channels_last=channels_last)
    x = torch.randn(batch, 3, size, size)
    boxes = torch.tensor([[b, x0, y0, x0 + size // 2, y0 + size // 2] for b in range(batch)
                          for x0, y0 in ((4, 4), (size // 3, size // 4), (size // 2, size // 3))], dtype=torch.float32)
    labels = torch.arange(len(boxes)) % 5 + 1
    bg = definite_background_tensor(boxes, torch.ones(batch, size, size, dtype=torch.bool))

    def step():
        out = model(x, boxes, labels, bg, grid_size=4, roi_size=2, pooling="bap", bg_fallback=0.125)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()

    return step


def _seg_step(channels_last: bool, batch: int, size: int):
    torch.manual_seed(0)
    model = build_segmenter("tiny", 6, weights=None, tau=20.0)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    wrap_ddp(model, DistInfo(), channels_last=channels_last)
    x = torch.randn(batch, 3, size, size)

    def step():
        loss = model(x)["logits"].float().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {platform.machine()}, {a.threads} thread(s), batch {a.batch} of {a.size} px")
    print("| network | nchw s/step (min, median) | channels_last s/step (min, median) | speed-up (min) |")
    print("| --- | ---: | ---: | ---: |")
    for name, make in (("tiny-bn BAP classifier", _cls_step), ("tiny DeepLab", _seg_step)):
        steps = {lay: make(lay == "channels_last", a.batch, a.size) for lay in LAYOUTS}
        for s in steps.values():
            for _ in range(3):
                s()
        times = {lay: [] for lay in LAYOUTS}
        for _ in range(a.rounds):
            for lay, s in steps.items():
                t0 = time.perf_counter()
                for _ in range(a.steps):
                    s()
                times[lay].append((time.perf_counter() - t0) / a.steps)
        lo = {lay: min(v) for lay, v in times.items()}
        med = {lay: statistics.median(v) for lay, v in times.items()}
        print(f"| {name} | {lo['nchw']:.4f}, {med['nchw']:.4f} | {lo['channels_last']:.4f}, "
              f"{med['channels_last']:.4f} | x{lo['nchw'] / lo['channels_last']:.2f} |")


if __name__ == "__main__":
    main()

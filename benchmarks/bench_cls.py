"""Stage-1 (train-cls) cost: forward+backward per image, and batched BAP pooling vs a loop.

    .venv/bin/python benchmarks/bench_cls.py            # about 1-3 minutes on 2 CPU cores
    .venv/bin/python benchmarks/bench_cls.py --quick    # smaller, for a smoke test

Reports (1) BAPClassifier forward + backward (BAP loss, train mode) per image for vgg16 and
tiny at 321 x 321, (2) ``pool_boxes`` (one roi_align) against ``pool_boxes_loop`` (a Python
loop over boxes with grid_sample) on the same inputs, after checking they agree.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from banacli.models import BAPClassifier, build_backbone
from banacli.ops.bap import boxes_to_feature_coords, pool_boxes, pool_boxes_loop


def _batch(batch: int, size: int, boxes_per_image: int, g: torch.Generator):
    boxes, labels = [], []
    bg = torch.ones(batch, size, size, dtype=torch.bool)
    for b in range(batch):
        for _ in range(boxes_per_image):
            x0, y0 = (torch.randint(0, size // 2, (2,), generator=g)).tolist()
            w, h = (torch.randint(size // 8, size // 2, (2,), generator=g)).tolist()
            x1, y1 = min(x0 + w, size), min(y0 + h, size)
            boxes.append([b, x0, y0, x1, y1])
            labels.append(int(torch.randint(1, 21, (1,), generator=g)))
            bg[b, y0:y1, x0:x1] = False
    return torch.tensor(boxes, dtype=torch.float32), torch.tensor(labels), bg


def _time(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_train_step(name: str, size: int, batch: int, repeats: int) -> float:
    g = torch.Generator().manual_seed(0)
    net = BAPClassifier(build_backbone(name), num_classes=21).train()
    images = torch.randn(batch, 3, size, size, generator=g)
    boxes, labels, bg = _batch(batch, size, 3, g)

    def step():
        net.zero_grad(set_to_none=True)
        net(images, boxes, labels, bg)["loss"].backward()

    times = _time(step, repeats)
    per_image = statistics.median(times) / batch
    print(f"{name:6s} {size}x{size} batch {batch}: forward+backward {per_image * 1000:8.1f} ms/image median, "
          f"{min(times) / batch * 1000:8.1f} min (runs {', '.join(f'{t:.2f}' for t in times)} s)")
    return per_image


def bench_pooling(batch: int, channels: int, side: int, boxes_per_image: int, roi: int, repeats: int):
    g = torch.Generator().manual_seed(1)
    feats = torch.randn(batch, channels, side, side, generator=g)
    weights = torch.rand(batch, side, side, generator=g)
    boxes, _, _ = _batch(batch, side * 8 - 7, boxes_per_image, g)
    fboxes = boxes_to_feature_coords(boxes, 8)
    with torch.no_grad():
        a = pool_boxes(feats, weights, fboxes, roi)
        b = pool_boxes_loop(feats, weights, fboxes, roi)
    err = (a - b).abs().max().item()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    res = {}
    for label, fn in (("batched roi_align", pool_boxes), ("per-box loop", pool_boxes_loop)):
        with torch.no_grad():
            t_fwd = statistics.median(_time(lambda: fn(feats, weights, fboxes, roi), repeats))
        f = feats.clone().requires_grad_(True)
        w = weights.clone().requires_grad_(True)
        t_fb = statistics.median(_time(lambda: fn(f, w, fboxes, roi).sum().backward(), repeats))
        res[label] = (t_fwd, t_fb)
        print(f"pool_boxes {label:18s}: forward {t_fwd * 1000:8.1f} ms, forward+backward {t_fb * 1000:8.1f} ms")
    (bf, bb), (lf, lb) = res["batched roi_align"], res["per-box loop"]
    print(f"  {len(boxes)} boxes, feats {tuple(feats.shape)}, R={roi}; max |batched - loop| = {err:.2e}; "
          f"loop / batched: forward x{lf / bf:.1f}, forward+backward x{lb / bb:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one repeat")
    ap.add_argument("--vgg-repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    if args.quick:
        bench_train_step("tiny", 97, 2, 1)
        bench_pooling(2, 32, 13, 3, 2, 1)
        return
    bench_train_step("vgg16", 321, 1, args.vgg_repeats)
    bench_train_step("tiny", 321, 4, 5)
    bench_pooling(20, 1024, 41, 3, 2, 5)


if __name__ == "__main__":
    main()

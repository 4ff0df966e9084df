"""Stage-3 training throughput: forward + NAL + backward + SGD step, images per second.

    .venv/bin/python benchmarks/bench_seg.py                       # largefov 321 px + tiny, CPU
    .venv/bin/python benchmarks/bench_seg.py --model tiny --size 96 --batch 8 --iters 10

Random weights and random labels (Ycrf, Yret with ~20% disagreement): throughput does not
depend on them. Prints one line per model and the torch version, device and thread count.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from banacli.models.deeplab import SEG_MODELS, build_segmenter, upsample_logits
from banacli.ops.nal import nal_loss


def bench(
    name: str, *, size: int, batch: int, iters: int, warmup: int, num_classes: int, device: str
) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_segmenter(name, num_classes).to(device).train()
    opt = torch.optim.SGD(model.param_groups(1e-3, 5e-4), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device)
    ycrf = torch.randint(0, num_classes, (batch, size, size), device=device)
    noise = torch.randint(0, num_classes, (batch, size, size), device=device)
    yret = torch.where(torch.rand(batch, size, size, device=device) < 0.2, noise, ycrf)

    def step() -> None:
        logits = upsample_logits(model(x)["logits"], (size, size))
        loss, _ = nal_loss(logits, ycrf, yret, tau=model.tau)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"s_per_iter": dt / iters, "images_per_s": batch * iters / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=SEG_MODELS, action="append", help="repeatable; default: largefov and tiny")
    ap.add_argument("--size", type=int, help="crop side (default: 321 largefov/aspp, 96 tiny)")
    ap.add_argument("--batch", type=int, help="batch size (default: 2 largefov/aspp, 8 tiny)")
    ap.add_argument("--iters", type=int, default=3, help="timed iterations")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, {cpu}")
    for name in args.model or ["largefov", "tiny"]:
        size = args.size or (96 if name == "tiny" else 321)
        batch = args.batch or (8 if name == "tiny" else 2)
        iters = args.iters if name != "tiny" else max(args.iters, 10)
        r = bench(
            name, size=size, batch=batch, iters=iters, warmup=args.warmup, num_classes=args.classes, device=args.device
        )
        print(
            f"{name:9s} {size}x{size} batch {batch:2d} iters {iters:3d}: "
            f"{r['s_per_iter']:.3f} s/iter, {r['images_per_s']:.2f} images/s"
        )


if __name__ == "__main__":
    main()

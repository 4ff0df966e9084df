"""Latency of ``bana serve``: one box per request, as Label Studio's interactive mode sends.

    .venv/bin/python benchmarks/bench_serve.py                    # vgg16 500x375 and tiny 96 px
    .venv/bin/python benchmarks/bench_serve.py --cases tiny96 --requests 40

For each case a run with a randomly initialised classifier (vgg16: the paper's backbone,
random weights give the same cost as trained ones) is served by a real ``bana serve``
subprocess on 127.0.0.1 (``--workers``, ``--threads`` intra-op threads); requests are the
recorded Label Studio request shape with one rectangle on a blocky synthetic picture. Two
kinds of request: ``new image`` (every request another image, so the server's feature cache
never helps: the cost of a first box) and ``same image`` (one image, another box each time: a
user drawing box after box, the backbone skipped after the first). Reported per case, kind and
client count: latency p50 / p95 per request (client side, HTTP included), requests per second,
the model load time the server prints, and the server's peak RSS (VmHWM). The first request of
each case is a warm-up and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CASES = {"vgg16_500x375": ("vgg16", 375, 500), "tiny96": ("tiny", 96, 96)}


def make_run(run: Path, backbone: str) -> None:
    import torch

    from banacli.artifacts import save_model
    from banacli.models.backbones import build_backbone
    from banacli.models.classifier import BAPClassifier
    from banacli.runs import cls_arch

    torch.manual_seed(0)
    model = BAPClassifier(build_backbone(backbone, weights=None), 3)
    save_model(run / "cls" / "model.safetensors", model.state_dict(), arch=cls_arch(backbone),
               class_names=["background", "cat", "dog"], normalization=model.backbone.normalization)


def blocky_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.kron(small, np.ones((8, 8, 1), dtype=np.uint8))[:h, :w].copy()


def request_body(rel: str, h: int, w: int, shift: int = 0) -> dict:
    label_config = ('<View><Image name="image" value="$image"/><RectangleLabels name="box" toName="image">'
                    '<Label value="cat"/><Label value="dog"/></RectangleLabels><BrushLabels name="mask" '
                    'toName="image"><Label value="cat"/><Label value="dog"/></BrushLabels></View>')
    rect = {"id": "b0", "type": "rectanglelabels", "from_name": "box", "to_name": "image", "original_width": w,
            "original_height": h, "value": {"x": 30 - shift % 20, "y": 25, "width": 40, "height": 45, "rotation": 0,
                                            "rectanglelabels": ["cat"]}}
    return {"tasks": [{"id": 1, "data": {"image": f"/data/local-files/?d={rel}"}}], "label_config": label_config,
            "project": "1.1", "params": {"context": {"result": [rect]}}}


def post(url: str, body: bytes) -> int:
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        out = json.loads(resp.read())
    assert out["results"][0]["result"] is not None
    return resp.status


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_case(name: str, work: Path, clients_list: list[int], requests: int, workers: int, threads: int) -> list[dict]:
    from banacli.serve.app import free_port
    from PIL import Image

    backbone, h, w = CASES[name]
    run = work / name / "run"
    make_run(run, backbone)
    images = work / name / "images"
    images.mkdir(parents=True)
    n_images = max(requests, 16)  # more than the feature cache holds: "new image" always misses
    for i in range(n_images):
        Image.fromarray(blocky_image(h, w, seed=i)).save(images / f"img{i}.png")
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    proc = subprocess.Popen([str(BIN / "bana"), "serve", "--run", str(run), "--port", str(port), "--images-root",
                             str(images), "--workers", str(workers)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    url = f"http://127.0.0.1:{port}"
    first = proc.stdout.readline()
    load = re.search(r"loaded in ([0-9.]+) s", first)
    bodies = {"new image": [json.dumps(request_body(f"img{i}.png", h, w)).encode() for i in range(n_images)],
              "same image": [json.dumps(request_body("img0.png", h, w, shift=i)).encode() for i in range(n_images)]}
    body = bodies["new image"][0]
    rows = []
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                post(f"{url}/predict", body)  # warm-up (not counted)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"bana serve did not come up: {first}{proc.stdout.read() if proc.poll() else ''}")
                time.sleep(0.3)
        for kind, clients in [(k, c) for k in bodies for c in clients_list]:
            lat: list[float] = []
            lock = threading.Lock()
            per_client = max(1, requests // clients)
            counter = iter(range(10**9))

            def client() -> None:
                for _ in range(per_client):
                    with lock:
                        n = next(counter)
                    t = time.perf_counter()
                    post(f"{url}/predict", bodies[kind][(n + 1) % n_images])
                    with lock:
                        lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            ts = [threading.Thread(target=client) for _ in range(clients)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            arr = np.array(lat)
            rows.append({"case": name, "backbone": backbone, "size": f"{w}x{h}", "kind": kind, "clients": clients,
                         "requests": len(lat), "p50_s": round(float(np.percentile(arr, 50)), 3),
                         "p95_s": round(float(np.percentile(arr, 95)), 3), "req_per_s": round(len(lat) / wall, 2),
                         "load_s": float(load.group(1)) if load else None, "peak_rss_mb": None,
                         "workers": workers, "threads": threads})
            print(json.dumps(rows[-1]), flush=True)
        peak = peak_rss_mb(proc.pid)
        for r in rows:
            r["peak_rss_mb"] = round(peak)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--clients", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--requests", type=int, default=16, help="requests per client count (split over the clients)")
    ap.add_argument("--workers", type=int, default=1, help="bana serve --workers")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of the server (OMP_NUM_THREADS)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bana-bench-serve-") as tmp:
        for name in args.cases:
            rows += bench_case(name, Path(tmp), args.clients, args.requests, args.workers, args.threads)
    print("\n| case | requests | clients | n | p50 s | p95 s | req/s | model load s | peak RSS MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['backbone']} {r['size']} | {r['kind']} | {r['clients']} | {r['requests']} | {r['p50_s']:.2f} | "
              f"{r['p95_s']:.2f} | "
              f"{r['req_per_s']:.2f} | {r['load_s']} | {r['peak_rss_mb']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())

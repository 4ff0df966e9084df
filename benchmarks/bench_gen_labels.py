"""Throughput (images/s) and peak memory per process of ``bana gen-labels`` at several worker
counts, for the tiny and vgg16 classifiers, on VOC-sized images (500 x 375) — and, with
``--features``, the CPU feature-extraction variants (threads, inference mode, channels-last).

The dataset is the synthetic one, generated at 500 px and resized to 500 x 375 with its boxes.
Classifiers are randomly initialised and saved as a run directory (labels from an untrained
classifier cost the same as from a trained one). Each measurement is a fresh
``bana gen-labels --device cpu`` process:

* images/s incl. start-up: images / wall time of the whole process;
* images/s excl. start-up: from the output files' modification times, (n - w) images over the
  time between the w-th and the last image written (w = workers: the first w finish together);
* peak RSS: the largest VmHWM over the main process and over the worker processes (sampled
  from /proc every 0.2 s).

    python benchmarks/bench_gen_labels.py --images 24
    python benchmarks/bench_gen_labels.py --features
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from banacli.artifacts import save_model  # noqa: E402
from banacli.data.synthetic import generate  # noqa: E402
from banacli.models.backbones import build_backbone  # noqa: E402
from banacli.models.classifier import BAPClassifier  # noqa: E402
from banacli.runs import cls_arch  # noqa: E402


def make_voc_sized(root: Path, n: int) -> None:
    generate(root, images=n, size=500, seed=0, val=0)
    sx, sy = 1.0, 375 / 500
    for img_path in (root / "JPEGImages").glob("*.jpg"):
        Image.open(img_path).resize((500, 375), Image.BILINEAR).save(img_path, quality=95)
        for sub in ("SegmentationClass", "SegmentationObject"):
            p = root / sub / f"{img_path.stem}.png"
            if p.is_file():
                im = Image.open(p)
                im.resize((500, 375), Image.NEAREST).save(p)
        xml = root / "Annotations" / f"{img_path.stem}.xml"
        tree = ET.parse(xml)
        tree.find("size/height").text = "375"
        for bb in tree.iter("bndbox"):
            for tag, s in (("xmin", sx), ("xmax", sx), ("ymin", sy), ("ymax", sy)):
                el = bb.find(tag)
                v = float(el.text)
                el.text = str(int(np.clip(round(v * s), 1, 375 if tag.startswith("y") else 500)))
        tree.write(xml)


def make_run(run: Path, backbone: str, classes: list[str]) -> None:
    model = BAPClassifier(build_backbone(backbone, weights=None), len(classes) + 1)
    save_model(run / "cls" / "model.safetensors", model.state_dict(), arch=cls_arch(backbone),
               class_names=["background", *classes], normalization=model.backbone.normalization)


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def run_once(bana: list[str], data: Path, run: Path, workers: int, n: int, env=None) -> dict[str, float]:
    t0 = time.time()
    proc = subprocess.Popen([*bana, "gen-labels", "--data", str(data), "--run", str(run), "--workers", str(workers),
                             "--device", "cpu", "-q"], env=env)
    peak: dict[int, float] = {}
    while proc.poll() is None:
        for pid in _tree(proc.pid):
            hwm = _hwm_mb(pid)
            if hwm is not None:
                peak[pid] = max(peak.get(pid, 0.0), hwm)
        time.sleep(0.2)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"gen-labels failed with {proc.returncode}")
    stamps = sorted(p.stat().st_mtime for p in (run / "labels" / "Yret").glob("*.png"))
    k = min(workers, len(stamps) - 1)
    steady = (len(stamps) - 1 - (k - 1)) / max(1e-9, stamps[-1] - stamps[k - 1]) if len(stamps) > 1 else float("nan")
    main_mb = peak.pop(proc.pid, float("nan"))
    worker_mb = max(peak.values()) if peak else float("nan")
    return {"wall": wall, "incl": n / wall, "excl": steady, "main_mb": main_mb, "worker_mb": worker_mb}


def bench_features(images: int = 4) -> None:
    """Per-image time of vgg16 features at 500 x 375 on the CPU for each variant, and whether the
    features (bits) and labels (pixels) equal the reference (no_grad, contiguous, 1 thread)."""
    import torch

    from banacli.labeling.features import compute_features, thread_invariant
    from banacli.models.normalize import normalize
    from banacli.ops.pseudo import generate_pseudo_labels

    torch.manual_seed(0)
    model = BAPClassifier(build_backbone("vgg16", weights=None), 6).eval()
    norm = model.backbone.normalization
    tmp = Path(tempfile.mkdtemp(prefix="bench-feat-"))
    try:
        make_voc_sized(tmp, images)
        from banacli.data.voc import VOCDataset

        ds = VOCDataset(tmp, "train")
        samples = [ds.load(i) for i in range(len(ds))]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    weight = model.classifier.weight.detach().flatten(1)

    def plain(img, cl=False, inference=False):
        ctx = torch.inference_mode() if inference else torch.no_grad()
        with ctx:
            x = normalize(torch.from_numpy(img).permute(2, 0, 1)[None].float(), norm)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            return model.features(x)[0].float().contiguous().numpy()

    def timed(fn, threads):
        torch.set_num_threads(threads)
        fn(samples[0].image)  # warm-up
        t = time.perf_counter()
        feats = [fn(s.image) for s in samples]
        return feats, (time.perf_counter() - t) / len(samples)

    ref, t_ref = timed(plain, 1)
    ref_labels = [generate_pseudo_labels(s.image, f, weight, s.boxes, s.labels).yret for s, f in zip(samples, ref)]
    rows = [("no_grad, 1 thread (reference)", 1, t_ref, ref)]
    for threads in (2,):
        feats, t = timed(plain, threads)
        rows.append((f"no_grad, {threads} threads", threads, t, feats))
    feats, t = timed(lambda im: plain(im, inference=True), 1)
    rows.append(("inference_mode, 1 thread", 1, t, feats))
    model.to(memory_format=torch.channels_last)
    feats, t = timed(lambda im: plain(im, cl=True), 1)
    rows.append(("channels_last, 1 thread", 1, t, feats))
    model.to(memory_format=torch.contiguous_format)
    thread_invariant(model)
    for threads in (1, 2):
        feats, t = timed(lambda im: compute_features(model, norm, [im], torch.device("cpu"))[0], threads)
        rows.append((f"bana (inference_mode, 1x1 via oneDNN), {threads} thread(s)", threads, t, feats))
    print(f"vgg16 features at 500x375, {len(samples)} images, s/image; labels: Yret pixel agreement with reference")
    print("| variant | s/image | features bit-identical | max abs diff | Yret agreement % |")
    print("| --- | ---: | --- | ---: | ---: |")
    for name, _, t, feats in rows:
        same = all(np.array_equal(a, b) for a, b in zip(feats, ref))
        diff = max(float(np.abs(a - b).max()) for a, b in zip(feats, ref))
        labs = [generate_pseudo_labels(s.image, f, weight, s.boxes, s.labels).yret for s, f in zip(samples, feats)]
        agree = sum(int((a == b).sum()) for a, b in zip(labs, ref_labels)) / sum(a.size for a in ref_labels)
        print(f"| {name} | {t:.2f} | {'yes' if same else 'no'} | {diff:.1e} | {100 * agree:.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--backbones", nargs="+", default=["tiny", "vgg16"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--features", action="store_true", help="benchmark the CPU feature variants instead")
    ap.add_argument("--src", type=Path, default=None,
                    help="run the bana of another source tree (e.g. an export of main) for comparison")
    args = ap.parse_args()
    if args.features:
        bench_features()
        return
    bana = [os.path.join(os.path.dirname(sys.executable), "bana")]
    env = None
    if args.src is not None:
        bana = [sys.executable, "-m", "banacli"]
        env = {**os.environ, "PYTHONPATH": str(args.src.resolve())}
    tmp = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    try:
        data = tmp / "data"
        make_voc_sized(data, args.images)
        classes = (data / "classes.txt").read_text().split()
        from banacli.cores import available_cores

        print(f"{args.images} images of 500x375, {available_cores()} cores available, load average "
              f"{os.getloadavg()[0]:.1f} at start")
        print("| backbone | workers | seconds | images/s incl. start-up | images/s excl. start-up "
              "| peak RSS main MB | peak RSS per worker MB |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for backbone in args.backbones:
            for w in args.workers:
                run = tmp / f"run-{backbone}-{w}"
                make_run(run, backbone, classes)
                r = run_once(bana, data, run, w, args.images, env)
                print(f"| {backbone} | {w} | {r['wall']:.1f} | {r['incl']:.2f} | {r['excl']:.2f} | "
                      f"{r['main_mb']:.0f} | {r['worker_mb']:.0f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

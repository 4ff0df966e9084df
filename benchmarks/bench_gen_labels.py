"""Throughput of ``bana gen-labels`` (images/s) at 1 and 2 workers, for the tiny and vgg16
classifiers, on VOC-sized images (500 x 375).

The dataset is the synthetic one, generated at 500 px and resized to 500 x 375 with its boxes.
Classifiers are randomly initialised and saved as a run directory (labels from an untrained
classifier cost the same as from a trained one). Each measurement is a fresh ``bana gen-labels``
process on the CPU; the time includes start-up, features, DenseCRF, retrieval and PNG writing.

    python benchmarks/bench_gen_labels.py --images 24
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
from banacli.data.synth import generate  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--backbones", nargs="+", default=["tiny", "vgg16"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = ap.parse_args()
    bana = os.path.join(os.path.dirname(sys.executable), "bana")
    tmp = Path(tempfile.mkdtemp(prefix="bench-labels-"))
    try:
        data = tmp / "data"
        make_voc_sized(data, args.images)
        classes = (data / "classes.txt").read_text().split()
        print(f"{args.images} images of 500x375, {os.cpu_count()} CPUs; images/s of a whole gen-labels run")
        print("| backbone | workers | seconds | images/s |")
        print("| --- | ---: | ---: | ---: |")
        for backbone in args.backbones:
            for w in args.workers:
                run = tmp / f"run-{backbone}-{w}"
                make_run(run, backbone, classes)
                t = time.perf_counter()
                subprocess.run([bana, "gen-labels", "--data", str(data), "--run", str(run), "--workers", str(w),
                                "--device", "cpu", "-q"], check=True)
                dt = time.perf_counter() - t
                print(f"| {backbone} | {w} | {dt:.1f} | {args.images / dt:.2f} |", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

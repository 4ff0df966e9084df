"""The paper's Table 2 on synthetic COCO data: COCO mask AP of the instance pseudo masks.

Rows (all scored on the *train* split of the target set, as the paper scores COCO train2017):

* COCO-to-COCO, Ycrf / Yret: the BAP classifier is trained on the target set itself and
  gen-labels uses its class weights (the default generator).
* VOC-to-COCO, Ycrf / Yret: the classifier is trained on a *different* synthetic set (other
  seed, other images) that holds only 3 of the 5 classes (ring, star, triangle); gen-labels on
  the target runs the class-agnostic generator (``labels.class_agnostic=true``: 1 − u0 as the
  foreground of every box), so blob and bar are classes the classifier never saw, and no target
  image was used in training — the paper's cross-dataset setting in miniature.
* Box: every box's rectangle as its mask (score 1).

Everything goes through the ``bana`` CLI (synth --format coco, train-cls, gen-labels,
eval --what instances). Tiny classifier from random init, as in ``bana demo``.

    python benchmarks/instances_table2.py --work /tmp/table2 [--images 200 --size 128 --iterations 400]

Prints a markdown table and writes WORK/table2.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SOURCE_CLASSES = ("ring", "star", "triangle")


def bana(*args) -> None:
    cmd = [sys.executable, "-m", "banacli", *[str(a) for a in args]]
    print("$ bana " + " ".join(str(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def keep_classes(src: Path, dst: Path, names: tuple[str, ...]) -> None:
    """A copy of a COCO set with only the categories ``names`` (images left without objects dropped)."""
    data = json.loads((src / "annotations" / "instances_train.json").read_text())
    cats = [c for c in data["categories"] if c["name"] in names]
    ids = {c["id"] for c in cats}
    anns = [a for a in data["annotations"] if a["category_id"] in ids]
    used = {a["image_id"] for a in anns}
    images = [im for im in data["images"] if im["id"] in used]
    (dst / "annotations").mkdir(parents=True, exist_ok=True)
    (dst / "train").mkdir(parents=True, exist_ok=True)
    for im in images:
        shutil.copy(src / "train" / im["file_name"], dst / "train" / im["file_name"])
    (dst / "annotations" / "instances_train.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))


def ap_row(run: Path, source: str) -> dict:
    return json.loads((run / "eval" / f"metrics-instances-{source}-train.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    w = args.work  # an existing WORK is reused: finished steps (datasets, classifiers) are kept
    t0 = time.perf_counter()
    target, full_src, source = w / "coco", w / "other-full", w / "other-3cls"
    if not (target / "annotations" / "instances_train.json").is_file():
        bana("synth", target, "--format", "coco", "--images", args.images, "--val", 0, "--size", args.size,
             "--seed", args.seed, "-q")
    if not (source / "annotations" / "instances_train.json").is_file():
        bana("synth", full_src, "--format", "coco", "--images", args.images, "--val", 0, "--size", args.size,
             "--seed", args.seed + 1000, "-q")
        keep_classes(full_src, source, SOURCE_CLASSES)
    cls = ["--backbone", "tiny", "--set", "cls.weights=null", "--iterations", args.iterations, "--batch-size", 8,
           "--crop-size", args.size, "--lr", 0.01, "--set", f"cls.lr_step={int(args.iterations * 0.75)}",
           "--seed", args.seed, "-q"]
    same, cross = w / "run-coco-to-coco", w / "run-voc-to-coco"
    if not (same / "cls" / "model.safetensors").is_file():
        bana("train-cls", "--data", target, "--run", same, *cls)
    bana("gen-labels", "--data", target, "--run", same, "--workers", args.workers, "-q")
    if not (cross / "cls" / "model.safetensors").is_file():
        bana("train-cls", "--data", source, "--run", cross, *cls)
    bana("gen-labels", "--data", target, "--run", cross, "--workers", args.workers,
         "--set", "labels.class_agnostic=true", "-q")
    rows = {}
    for name, run in (("COCO-to-COCO", same), ("VOC-to-COCO", cross)):
        for labels in ("ycrf", "yret"):
            bana("eval", "--data", target, "--run", run, "--what", "instances", "--split", "train",
                 "--labels", labels, "-q")
            rows[f"{name} BAP: {labels.capitalize().replace('Y', 'Y')}"] = ap_row(run, f"labels-{labels}")
    bana("eval", "--data", target, "--run", same, "--what", "instances", "--split", "train",
         "--set", "eval.instances=box", "-q")
    rows["Box"] = ap_row(same, "box")
    seconds = time.perf_counter() - t0
    metrics = ("AP", "AP50", "AP75", "APS", "APM", "APL")
    print(f"\n| {args.images} images, {args.size} px, seed {args.seed} | " + " | ".join(metrics) + " |")
    print("| --- |" + " ---: |" * len(metrics))
    for name, r in rows.items():
        cells = ["—" if r[m] is None else f"{100 * r[m]:.1f}" for m in metrics]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{seconds:.0f} s in all")
    (w / "table2.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                               "seconds": round(seconds, 1),
                                               "rows": {k: {m: v[m] for m in (*metrics, "detections")}
                                                        for k, v in rows.items()}}, indent=1))


if __name__ == "__main__":
    main()

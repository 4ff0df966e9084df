"""Paper Table 6 on the synthetic set: Mask R-CNN trained on instance pseudo masks (mask loss on
S only, and on every pixel) next to one trained on the ground-truth instance masks, scored with
COCO mask AP (pycocotools COCOeval, iouType "segm") on the validation split.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/table6_synth.py OUT [--images 160 --val 40 --size 64 ...]

Steps (each a ``bana`` command, printed and written to OUT/table6.md): synth -> train-cls (tiny,
BAP) -> gen-labels (Ycrf, Yret) -> train-inst x 3 (tiny backbone, random init) -> score. A
finished step is not redone when the script is rerun (the training stages run with --resume).
The scorer builds the ground truth from the validation images' SegmentationObject PNGs (instance
k+1 = box k of the XML) and runs COCOeval on the model's instances (all scores, <= 100 per image).
It also scores the training targets themselves (the box instance masks of Ycrf and of Yret on the
train split, score 1), which tells how good the pseudo masks were.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

BANA = [sys.executable, "-m", "banacli"]
AP_NAMES = ("AP", "AP50", "AP75", "APS", "APM", "APL")


def sh(cmd: list, log: list[str]) -> float:
    """Run a bana command, record it; returns its seconds."""
    cmd = [str(c) for c in cmd]
    shown = "bana " + " ".join(cmd[len(BANA):])
    print(f"$ {shown}", flush=True)
    log.append(shown)
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_ground_truth(ds) -> dict:
    """COCO-format ground truth of a VOC-layout split from SegmentationObject + XML labels."""
    from banacli.data.palette import load_label_png

    images, anns = [], []
    for i in range(len(ds)):
        s = ds.load(i)
        obj = load_label_png(Path(ds.root) / "SegmentationObject" / f"{s.id}.png")
        images.append({"id": i + 1, "file_name": s.id, "height": s.height, "width": s.width})
        for k, lab in enumerate(s.labels):
            m = obj == k + 1
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab), "segmentation": _rle(m),
                         "area": float(m.sum()), "iscrowd": 0,
                         "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                  float(ys.max() - ys.min() + 1)]})
    cats = [{"id": c, "name": n} for c, n in enumerate(ds.class_names) if c > 0]
    return {"images": images, "annotations": anns, "categories": cats}


def mask_ap(gt: dict, dets: list[dict]) -> dict[str, float]:
    """COCOeval segm over ``dets`` (image_id, category_id, segmentation RLE, score); AP in %."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not dets:
        return {k: 0.0 for k in AP_NAMES}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: round(100 * float(v), 1) for k, v in zip(AP_NAMES, ev.stats[:6])}


def model_detections(run: Path, ds) -> list[dict]:
    import torch

    from banacli.instances.maskrcnn import load_instance_model, predict_instances

    torch.set_num_threads(1)
    model, _ = load_instance_model(run, "cpu")
    dets = []
    for i in range(len(ds)):
        s = ds.load(i)
        for d in predict_instances(model, s.image, score_threshold=0.0):
            if d["mask"].any():
                dets.append({"image_id": i + 1, "category_id": d["label"], "segmentation": _rle(d["mask"]),
                             "score": d["score"]})
    return dets


def pseudo_detections(label_dir: Path, ds) -> list[dict]:
    """The training targets as detections: each box's instance mask from one label set, score 1."""
    from banacli.data.palette import load_label_png
    from banacli.ops.instances import box_instance_masks

    dets = []
    for i in range(len(ds)):
        s = ds.load(i)
        masks = box_instance_masks(load_label_png(label_dir / f"{s.id}.png"), s.boxes, s.labels)
        for m, lab in zip(masks, s.labels):
            if m.any():
                dets.append({"image_id": i + 1, "category_id": int(lab), "segmentation": _rle(m), "score": 1.0})
    return dets


def _fmt(v: float) -> str:
    return "n/a" if v < 0 else f"{v:.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--val", type=int, default=40)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cls-iterations", type=int, default=300)
    p.add_argument("--inst-iterations", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.02)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from banacli.data.voc import VOCDataset

    out: Path = args.out
    data, runs = out / "data", out / "runs"
    log: list[str] = []
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    if not (data / "ImageSets" / "Segmentation" / "val.txt").is_file():
        times["synth"] = sh([*BANA, "synth", data, "--images", args.images, "--val", args.val, "--size", args.size,
                             "--seed", args.seed, "-q"], log)
    base = runs / "labels-run"
    times["train-cls"] = sh([*BANA, "train-cls", "--data", data, "--run", base, "--backbone", "tiny",
                             "--set", "cls.weights=null", "--set", f"cls.lr_step={int(args.cls_iterations * 0.75)}",
                             "--iterations", args.cls_iterations, "--batch-size", 8, "--crop-size", args.size,
                             "--lr", 0.01, "--seed", args.seed, "--resume", "-q"], log)
    times["gen-labels"] = sh([*BANA, "gen-labels", "--data", data, "--run", base, "-q"], log)
    variants = {
        "pseudo, loss on S (paper)": ["--targets", "pseudo", "--mask-region", "s"],
        "pseudo, loss on all pixels": ["--targets", "pseudo", "--mask-region", "all"],
        "ground-truth masks": ["--targets", "gt", "--mask-region", "all"],
    }
    inst_runs = {}
    for name, extra in variants.items():
        run = runs / ("inst-" + "-".join(extra[1::2]))
        if not (run / "labels").exists():
            run.mkdir(parents=True, exist_ok=True)
            shutil.copytree(base / "labels", run / "labels")
        inst_runs[name] = run
        times[f"train-inst ({name})"] = sh(
            [*BANA, "train-inst", "--data", data, "--run", run, "--backbone", "tiny", "--weights", "null",
             "--min-size", args.size, "--max-size", args.size, "--iterations", args.inst_iterations,
             "--batch-size", args.batch_size, "--lr", args.lr, "--warmup", min(100, args.inst_iterations // 10),
             "--set", f"inst.lr_steps=[{int(args.inst_iterations * 0.75)}]", "--checkpoint-every", 200,
             "--seed", args.seed, "--resume", "-q", *extra], log)

    t = time.perf_counter()
    val = VOCDataset(data, "val", with_gt=False)
    train = VOCDataset(data, "train", with_gt=False)
    gt_val, gt_train = coco_ground_truth(val), coco_ground_truth(train)
    rows = {name: mask_ap(gt_val, model_detections(run, val)) for name, run in inst_runs.items()}
    targets = {f"{n} masks (train split, score 1)": mask_ap(gt_train, pseudo_detections(base / "labels" / n, train))
               for n in ("Ycrf", "Yret")}
    times["score"] = time.perf_counter() - t
    total = time.perf_counter() - t0

    lines = ["# Table 6 on the synthetic set", "",
             f"{args.images} train / {args.val} val images of {args.size} px; Mask R-CNN `tiny` backbone from random "
             f"init, {args.inst_iterations} iterations of batch {args.batch_size}; mask AP (COCOeval segm, %) on val.",
             "", "| Mask R-CNN trained on | " + " | ".join(AP_NAMES) + " |", "| --- |" + " ---: |" * len(AP_NAMES)]
    lines += [f"| {n} | " + " | ".join(_fmt(r[k]) for k in AP_NAMES) + " |" for n, r in rows.items()]
    lines += ["", "The training targets themselves (box instance masks, train split):", "",
              "| targets | " + " | ".join(AP_NAMES) + " |", "| --- |" + " ---: |" * len(AP_NAMES)]
    lines += [f"| {n} | " + " | ".join(_fmt(r[k]) for k in AP_NAMES) + " |" for n, r in targets.items()]
    lines += ["", "n/a: no ground-truth object in that COCO size range (APS < 32^2 px, APM < 96^2, APL above)."]
    lines += ["", f"Total {total / 60:.1f} min on this machine (2 shared cores, loaded). Steps (s): "
              + ", ".join(f"{k} {v:.0f}" for k, v in times.items()), "", "Commands:", "", "```"] + log + ["```", ""]
    (out / "table6.md").write_text("\n".join(lines))
    (out / "table6.json").write_text(json.dumps({"models": rows, "targets": targets, "seconds": times,
                                                 "args": {k: str(v) for k, v in vars(args).items()}}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Where the demo's stage-1 classifiers go wrong: box errors by how much another box covers them.

    python benchmarks/covered_boxes.py OUT              # OUT: a finished ``bana demo OUT`` (synthetic data)
    python benchmarks/covered_boxes.py OUT --json F     # also the numbers as JSON

For every seed and pooling of the main table, the val boxes of the synthetic data are split by
``banacli.engine.evaluate.covered_share`` (another box overlaps < 30 % / >= 30 % of the box's
area). For the misclassified covered boxes it counts how often the predicted class is the class of
the box that covers it most, and, from SegmentationObject (instance i is box i), how many of them
have their own object as the minority of the object pixels inside their box. A pooled box feature
mixes every object inside the box, so such an error is one the box alone cannot tell.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from banacli.data.palette import load_label_png
from banacli.data.voc import VOCDataset
from banacli.engine.evaluate import COVERED, box_scores
from banacli.runs import RunDir, load_classifier

POOLINGS = ("bap", "gap", "gap-paper")


def _cover(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per box: the largest share of its area one other box overlaps, and that box's index (-1: alone)."""
    b = boxes.astype(np.float64)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    share = iw * ih / np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-12)[:, None]
    np.fill_diagonal(share, -1.0)
    k = share.argmax(axis=1)
    best = share[np.arange(len(b)), k]
    return np.where(best > 0, best, 0.0), np.where(best > 0, k, -1)


def one_run(data: Path, run: Path, pooling: str) -> dict:
    model, meta = load_classifier(RunDir(run).model("cls"))
    cfg = meta["config"]["cls"]
    ds = VOCDataset(data, "val", with_gt=False)
    n = {"clear": 0, "clear_right": 0, "covered": 0, "covered_right": 0, "wrong_is_cover_class": 0,
         "wrong_own_minority": 0, "right_own_minority": 0}
    with torch.no_grad():
        for s, scores in box_scores(model, ds, model.backbone.normalization, torch.device("cpu"),
                                    grid_size=cfg["grid_size"], roi_size=cfg["roi_size"], pooling=pooling,
                                    bg_fallback=cfg["bg_fallback"]):
            pred = scores[:, 1:].argmax(axis=1) + 1
            share, cover = _cover(np.asarray(s.boxes))
            inst = load_label_png(data / "SegmentationObject" / f"{s.id}.png")
            for j, (x0, y0, x1, y1) in enumerate(np.asarray(s.boxes).round().astype(int)):
                right = bool(pred[j] == s.labels[j])
                if share[j] < COVERED:
                    n["clear"] += 1
                    n["clear_right"] += right
                    continue
                window = inst[y0:y1, x0:x1]
                own = int((window == j + 1).sum())
                other = int(((window > 0) & (window != j + 1) & (window != 255)).sum())
                minority = own < other
                n["covered"] += 1
                n["covered_right"] += right
                if right:
                    n["right_own_minority"] += minority
                else:
                    n["wrong_is_cover_class"] += bool(pred[j] == s.labels[cover[j]])
                    n["wrong_own_minority"] += minority
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a finished `bana demo OUT` on synthetic data")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    a = ap.parse_args()
    torch.set_num_threads(1)
    report = json.loads((a.out / "report.json").read_text())
    main_key = next(iter(report["results"]))
    seeds = list(report["results"][main_key]["seeds"])
    rows = {}
    print(f"| pooling | seed | clear boxes: right / all | covered: right / all | covered wrong: "
          f"predicted the covering box's class | covered wrong: own object the minority in its box "
          f"| covered right: own object the minority |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for pooling in POOLINGS:
        for seed in seeds:
            base = a.out / main_key / f"seed{seed}"
            n = one_run(base / "data", base / "runs" / pooling, pooling)
            rows[f"{pooling}/{seed}"] = n
            wrong = n["covered"] - n["covered_right"]
            print(f"| {pooling} | {seed} | {n['clear_right']} / {n['clear']} | {n['covered_right']} / {n['covered']} "
                  f"| {n['wrong_is_cover_class']} / {wrong} | {n['wrong_own_minority']} / {wrong} "
                  f"| {n['right_own_minority']} / {n['covered_right']} |")
    tot = {k: sum(r[k] for r in rows.values()) for k in next(iter(rows.values()))}
    wrong = tot["covered"] - tot["covered_right"]
    print(f"\nall runs: clear {100 * tot['clear_right'] / tot['clear']:.1f} % right, covered "
          f"{100 * tot['covered_right'] / tot['covered']:.1f} % right; of the {wrong} covered errors "
          f"{100 * tot['wrong_is_cover_class'] / wrong:.0f} % predicted the covering box's class and "
          f"{100 * tot['wrong_own_minority'] / wrong:.0f} % had their own object as the minority of the object pixels "
          f"in their box (vs {100 * tot['right_own_minority'] / max(1, tot['covered_right']):.0f} % of the right ones)")
    if a.json:
        a.json.write_text(json.dumps({"runs": rows, "total": tot}, indent=1))


if __name__ == "__main__":
    main()

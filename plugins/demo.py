"""``bana demo DIR``: the paper's ablation end to end on a synthetic dataset, on the CPU.

synthetic data -> train-cls with BAP and with GAP -> gen-labels (both, plus the Box baseline)
-> train-seg with plain CE on Ycrf and with NAL -> eval on val, then a table in the form of the
paper's Tables 1 and 4 (printed, and written with pictures to DIR/report.md). Every step is an
ordinary stage run through the host, so each run directory can be inspected, resumed or rerun
with the same commands by hand (they are listed in the report).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from pydantic import Field

from banacli.config import Section
from banacli.stage import Stage, StageContext


class DemoConfig(Section):
    out: Path | None = Field(None, description="Folder for the dataset, the run directories and report.md.")
    images: int = Field(200, gt=0, description="Synthetic training images.")
    val: int = Field(60, ge=1, description="Synthetic validation images.")
    size: int = Field(96, ge=48, description="Image side in pixels.")
    seed: int = Field(0, description="Seed of the dataset and of every training run.")
    cls_iterations: int = Field(400, gt=0, description="train-cls iterations (BAP and GAP each).")
    seg_iterations: int = Field(6000, gt=0, description="train-seg iterations (each of the two losses); a tiny DeepLab from random init stays at the class prior for the first thousands.")
    batch_size: int = Field(8, gt=0, description="Batch size of both training stages.")
    workers: int = Field(2, ge=1, description="gen-labels / eval worker processes.")


def _run(ctx: StageContext, stages, model, name: str, values: dict, commands: list[str]) -> None:
    from banacli.cli import run_stage
    from banacli.errors import BanaError

    shown = [f"bana {name}"]
    for k, v in values.items():
        if k == "set_":
            shown += [f"--set {s}" for s in v]
        elif isinstance(v, bool):
            shown.append(f"--{k.replace('_', '-')}" if v else f"--no-{k.replace('_', '-')}")
        elif k == "out":
            shown.insert(1, str(v))
        elif v is not None:
            shown.append(f"--{k.replace('_', '-')} {v}")
    commands.append(" ".join(shown))
    ctx.logger.info("$ %s", " ".join(shown))
    if not ctx.quiet:
        ctx.console.print("$ " + " ".join(shown), style="bold", markup=False, highlight=False)
    values = {"quiet": ctx.quiet, "device": ctx.device, **values}
    code = run_stage(stages[name], model, values)
    if code:
        raise BanaError(f"demo: step 'bana {name}' failed (exit {code}); see the message above")


def _link_labels(src_run: Path, dst_run: Path) -> None:
    """A second run directory sharing the classifier and pseudo labels (hard links, else copies)."""
    for sub in ("cls", "labels"):
        if (dst_run / sub).exists():
            continue
        shutil.copytree(src_run / sub, dst_run / sub, copy_function=_link_or_copy)


def _link_or_copy(src, dst):
    import os

    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run(ctx: StageContext) -> None:
    from banacli.cli import build_stage_model
    from banacli.errors import ConfigError
    from banacli.stage import discover_stages

    cfg: DemoConfig = ctx.section
    if cfg.out is None:
        raise ConfigError("bana demo: OUT folder is required")
    out = Path(cfg.out)
    stages = discover_stages()
    model = build_stage_model(stages)
    data, runs = out / "data", out / "runs"
    commands: list[str] = []
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def step(label: str, name: str, values: dict) -> None:
        t = time.perf_counter()
        _run(ctx, stages, model, name, values, commands)
        timings[label] = timings.get(label, 0.0) + time.perf_counter() - t

    if not (data / "ImageSets" / "Segmentation" / "val.txt").is_file():
        step("synth", "synth", {"out": data, "images": cfg.images, "val": cfg.val, "size": cfg.size, "seed": cfg.seed})
    common = {"data": data, "set_": []}
    cls_args = {"backbone": "tiny", "iterations": cfg.cls_iterations, "batch_size": cfg.batch_size,
                "crop_size": cfg.size, "lr": 0.01, "seed": cfg.seed, "resume": True}
    for pooling in ("bap", "gap"):
        run_dir = runs / pooling
        step(f"train-cls ({pooling})", "train-cls", {**common, "run": run_dir, "pooling": pooling, **cls_args,
                                                     "set_": ["cls.weights=null", f"cls.lr_step={int(cfg.cls_iterations * 0.75)}"]})
        step(f"gen-labels ({pooling})", "gen-labels", {**common, "run": run_dir, "workers": cfg.workers,
                                                       "viz": 6 if pooling == "bap" else 0})
    seg_runs = {"ycrf": runs / "bap-seg-ycrf", "nal": runs / "bap-seg-nal"}
    for loss, run_dir in seg_runs.items():
        _link_labels(runs / "bap", run_dir)
        step(f"train-seg ({loss})", "train-seg", {**common, "run": run_dir, "model": "tiny", "loss": loss,
                                                  "iterations": cfg.seg_iterations, "batch_size": cfg.batch_size,
                                                  "crop_size": cfg.size, "lr": 0.01, "seed": cfg.seed, "resume": True,
                                                  "set_": ["seg.weights=null"]})
        step(f"eval ({loss})", "eval", {**common, "run": run_dir, "split": "val", "workers": cfg.workers})
    seconds = time.perf_counter() - t0

    table = collect_results(runs, seg_runs)
    write_report(out, ctx, table, commands, timings, seconds, cfg)
    print_table(ctx, table)
    ctx.info(f"demo: finished in {seconds / 60:.1f} min; report in {out / 'report.md'}")


def collect_results(runs: Path, seg_runs: dict[str, Path]) -> dict:
    def report(run: Path) -> dict:
        return json.loads((run / "labels" / "bana.report.json").read_text())

    bap, gap = report(runs / "bap"), report(runs / "gap")
    seg = {}
    for loss, run_dir in seg_runs.items():
        files = sorted((run_dir / "eval").glob("metrics-seg*-val.json"))
        seg[loss] = json.loads(files[-1].read_text())["miou"] if files else float("nan")
    return {
        "pseudo": {"Box": bap["miou"]["Box"], "GAP: Ycrf": gap["miou"]["Ycrf"], "BAP: Ycrf": bap["miou"]["Ycrf"],
                   "BAP: Yret": bap["miou"]["Yret"]},
        "seg": {"w/ Ycrf": seg["ycrf"], "w/ NAL": seg["nal"]},
        "fraction_Ycrf_ne_Yret": bap.get("fraction_Ycrf_ne_Yret"),
    }


PAPER = {"Box": 65.4, "GAP: Ycrf": 75.5, "BAP: Ycrf": 78.7, "BAP: Yret": 70.8, "w/ Ycrf": 67.8, "w/ NAL": 68.1}


def table_markdown(table: dict) -> str:
    lines = ["| | this run (synthetic, train) | paper (VOC 2012 train) |", "| --- | ---: | ---: |"]
    for k, v in table["pseudo"].items():
        lines.append(f"| pseudo labels, {k} | {100 * v:.1f} | {PAPER[k]} |")
    lines += ["", "| | this run (synthetic, val) | paper (VOC 2012 val, DeepLab-V1) |", "| --- | ---: | ---: |"]
    for k, v in table["seg"].items():
        lines.append(f"| segmentation {k} | {100 * v:.1f} | {PAPER[k]} |")
    return "\n".join(lines)


def print_table(ctx: StageContext, table: dict) -> None:
    from rich.table import Table

    if ctx.quiet:
        return
    t = Table(title="mIoU (%) — the paper's Tables 1 and 4 on synthetic data")
    t.add_column("")
    t.add_column("this run", justify="right")
    t.add_column("paper (VOC)", justify="right")
    for k, v in table["pseudo"].items():
        t.add_row(f"pseudo labels (train): {k}", f"{100 * v:.1f}", str(PAPER[k]))
    for k, v in table["seg"].items():
        t.add_row(f"DeepLab (val): {k}", f"{100 * v:.1f}", str(PAPER[k]))
    ctx.console.print(t)


def write_report(out: Path, ctx: StageContext, table: dict, commands: list[str], timings: dict, seconds: float, cfg) -> None:
    import platform

    import torch

    from banacli import __version__
    from banacli.artifacts import atomic_write_json, atomic_write_text

    pics = out / "pictures"
    pics.mkdir(parents=True, exist_ok=True)
    viz = sorted((out / "runs" / "bap" / "labels" / "viz").glob("*.png"))
    for p in viz:
        shutil.copy2(p, pics / f"bap-{p.name}")
    p = table["pseudo"]
    checks = [
        ("BAP Ycrf above GAP Ycrf", p["BAP: Ycrf"] > p["GAP: Ycrf"]),
        ("GAP Ycrf above Box", p["GAP: Ycrf"] > p["Box"]),
        ("NAL above plain CE on Ycrf", table["seg"]["w/ NAL"] > table["seg"]["w/ Ycrf"]),
    ]
    lines = [
        "# bana demo report", "",
        f"bana {__version__}, torch {torch.__version__}, {platform.machine()} with {torch.get_num_threads()} threads, "
        f"device {ctx.device}; {cfg.images} train + {cfg.val} val synthetic images of {cfg.size} px, seed {cfg.seed}; "
        f"{seconds / 60:.1f} min in all.", "",
        table_markdown(table), "",
        f"Pixels where Ycrf and Yret disagree (~S): {100 * (table['fraction_Ycrf_ne_Yret'] or 0):.1f}%.", "",
        "## What the paper claims, on this run", "",
        *[f"- {name}: **{'yes' if ok else 'no'}**" for name, ok in checks], "",
        *(["Where a claim does not hold, docs/results.md and docs/bap-vs-gap.md in the bana "
           "repository explain what was found (measured, not tuned).", ""] if not all(ok for _, ok in checks) else []),
        "## Pseudo labels (BAP): image + boxes, u0, CAMs, ~S, Ycrf, Yret", "",
        *[f"![{q.name}](pictures/bap-{q.name})" for q in viz], "",
        "## Time per step (s)", "",
        *[f"- {k}: {v:.0f}" for k, v in timings.items()], "",
        "## Commands", "", "```", *commands, "```", "",
    ]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_json(out / "report.json", {"table": table, "checks": dict(checks), "timings": timings,
                                            "seconds": seconds, "commands": commands})


stage = Stage(
    name="demo",
    help="Run the paper's ablation end to end on synthetic data (CPU-sized) and write OUT/report.md.",
    run=run,
    section="demo",
    config=DemoConfig,
    arguments=("out",),
    needs_data=False,
    needs_run=False,
)

"""``bana demo DIR``: the paper's ablation end to end on synthetic data, on the CPU, over seeds.

For the context data (``bana synth --context P``, docs/synthetic.md) and for P = 0, for each
seed (a dataset and its training runs): train-cls with BAP, bana's GAP and the paper's GAP ->
gen-labels for each (plus BAP without u0, and the Box baseline) -> on the first ``seg_seeds``
seeds of the context data, train-seg with plain CE on Ycrf and with NAL -> eval on val. Then
tables in the form of the paper's Tables 1 and 4 with mean ± std over seeds and per-seed
rows, each claim judged by a one-sided paired t-test over the seeds (banacli/stats.py) as holds /
does not hold / not separable, and each classifier's box accuracy on the val boxes (printed, and
written with pictures and the exact commands to DIR/report.md). BAP's labels use the background
attention u0 (Eq. 7); the GAP baselines' labels use CAMs and DenseCRF, as the paper's GAP row.
``--data ROOT`` runs the same comparison on a user's VOC-layout dataset with masks (every seed
trains on it with its own seed); ``--quick`` is a first look (2 seeds, context data only).
Every step is an ordinary stage run through the host, so each run directory can be
inspected, resumed or rerun by hand.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
import os
import platform
import statistics

from pydantic import Field
from rich.table import Table

from banacli import __version__
from banacli.config import Section
from banacli.stats import paired_comparison
from banacli.stage import Stage, StageContext, discover_stages
from banacli.artifacts import atomic_write_json, atomic_write_text, read_sidecar
from banacli.errors import BanaError, ConfigError
from banacli.threads import ENV, wanted_threads


class DemoConfig(Section):
    out: Path | None = Field(None, description="Folder for the datasets, the run directories and report.md.")
    images: int = Field(200, gt=0, description="Synthetic training images (per dataset).")
    val: int = Field(60, ge=1, description="Synthetic validation images (per dataset).")
    size: int = Field(96, ge=48, description="Image side in pixels.")
    context: float = Field(0.5, ge=0.0, le=1.0, description="P of `bana synth --context` for the main table (docs/synthetic.md).")
    p0: bool = Field(False, description="Also run the pseudo-label comparison on P = 0 data (backgrounds independent of "
                     "classes); doubles the classifier and pseudo-label runs.")
    seed: int = Field(0, description="First seed; the demo uses seeds seed, seed+1, ... (each seed is a dataset and its training runs).")
    seeds: int = Field(8, ge=1, description="Number of seeds of the pseudo-label comparison.")
    seg_seeds: int = Field(5, ge=1, description="DeepLab (CE on Ycrf vs NAL) runs on the first this-many seeds, on the context data.")
    cls_iterations: int = Field(800, gt=0, description=(
        "train-cls iterations (each pooling, each seed). 2400 brings every classifier to about 90 % "
        "val box accuracy or more (89.9-95.5 % over 8 seeds; 32 min measured with --seg-seeds 1, docs/results.md)."))
    seg_iterations: int = Field(2000, gt=0, description="train-seg iterations (each loss, each seed). The tiny DeepLab "
                                "is still learning at 1000 (val mIoU +11 to +12 points from 1000 to 2000 on seeds 0 and "
                                "1, docs/results.md).")
    batch_size: int = Field(8, gt=0, description="Batch size of both training stages.")
    workers: int = Field(2, ge=1, description="gen-labels / eval worker processes (divided by jobs when jobs > 1).")
    quick: bool = Field(False, description="A first look: 2 seeds, DeepLab on 1, no P = 0 data (overrides seeds, "
                        "seg_seeds and p0); too few seeds for the paired verdicts to separate much.")
    jobs: int = Field(0, ge=0, description="Independent training runs at once, each in its own process with an equal share "
                      "of the cores as torch threads; 0 = one per available core, 1 = one after another in this process.")


POOLINGS = ("bap", "gap", "gap-paper")
QUICK_SEEDS = 2  # --quick
PSEUDO_ROWS = ("Box", "GAP-paper: Ycrf", "GAP (bana): Ycrf", "BAP: Ycrf", "BAP: Ycrf w/o u0", "BAP: Yret")
SEG_ROWS = ("w/ Ycrf (CE)", "w/ NAL")
PAPER = {"Box": 65.4, "GAP-paper: Ycrf": 75.5, "GAP (bana): Ycrf": None, "BAP: Ycrf": 78.7, "BAP: Ycrf w/o u0": 77.0,
         "BAP: Yret": 70.8, "w/ Ycrf (CE)": 67.8, "w/ NAL": 68.1}
# (claim, higher row, lower row): the paper's orderings, tested per table
CLAIMS = (
    ("BAP Ycrf above GAP-paper Ycrf", "BAP: Ycrf", "GAP-paper: Ycrf"),
    ("BAP Ycrf above GAP (bana) Ycrf", "BAP: Ycrf", "GAP (bana): Ycrf"),
    ("GAP-paper Ycrf above Box", "GAP-paper: Ycrf", "Box"),
    ("BAP Ycrf above BAP Ycrf w/o u0", "BAP: Ycrf", "BAP: Ycrf w/o u0"),
    ("BAP Yret above Box", "BAP: Yret", "Box"),
)
SEG_CLAIMS = (("NAL above plain CE on Ycrf", "w/ NAL", "w/ Ycrf (CE)"),)
# stage-1 recipe of the demo, the same for every pooling (tiny-bn from random init; docs/results.md,
# "Classifiers that learn the classes"): a short warm-up, and a scale range that keeps the objects
# of 96-px images at least ~3/4 of their size; channels-last convolutions (about a quarter faster on
# a CPU, docs/performance.md)
CLS_SET = ("cls.warmup=50", "cls.scale=[0.75,1.25]", "cls.channels_last=true")
# Stage 2 of each pooling as the paper describes it: BAP's u0 is the background attention (Eq. 7),
# "a by-product of our BAP"; the GAP baseline makes "pseudo labels using CAMs and DenseCRF"
# (Sec. 4.2), so its background score is the background CAM (the labels.use_u0=false path).
STAGE2_SET = {"bap": (), "gap": ("labels.use_u0=false",), "gap-paper": ("labels.use_u0=false",)}
# DeepLab recipe of the demo (tiny model, random init, CPU-sized); see docs/results.md
SEG_SET = ["seg.weights=null", "seg.channels_last=true"]
SEG_RUNS = {"ycrf": "seg-ycrf", "nal": "seg-nal"}  # run folder of each DeepLab loss


def _command_line(name: str, values: dict) -> str:
    """``values`` of one stage run as the ``bana`` command a user would type."""
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
    return " ".join(shown)


def _cpu_seconds() -> float:
    import resource  # Unix only: the demo's CPU seconds

    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def _run_task(task: list[tuple], *, quiet: bool, device: str, threads: int | None,
              echo=None) -> list[tuple[str, str, float, float]]:
    """Run the steps of one task in order, in this process: ``("stage", label, name, values)``
    runs ``bana NAME`` through the host, ``("link", src, dst, subs)`` shares finished outputs.
    ``threads`` (set as BANA_NUM_THREADS for the stages) fixes the torch threads of a worker
    process. Returns ``[(label, command, wall s, CPU s)]`` of the stage steps."""

    import torch  # loads torch

    from banacli.api import run_stage  # loads numpy and pydensecrf

    stages = discover_stages()
    keep, keep_env = torch.get_num_threads(), os.environ.get(ENV)
    if threads is not None:
        os.environ[ENV] = str(threads)
    done = []
    try:
        for item in task:
            if item[0] == "link":
                _link(*item[1:])
                continue
            _, label, name, values = item
            command = _command_line(name, values)
            if echo is not None:
                echo(command)
            t, c = time.perf_counter(), _cpu_seconds()
            code = run_stage(name, {"quiet": quiet, "device": device, **values}, stages=stages)
            torch.set_num_threads(keep)  # a stage must not leave its thread count to the next
            if code:
                raise BanaError(f"demo: step '{command}' failed (exit {code}); see the message above")
            done.append((label, command, time.perf_counter() - t, _cpu_seconds() - c))
    finally:
        if threads is not None:
            if keep_env is None:
                os.environ.pop(ENV, None)
            else:
                os.environ[ENV] = keep_env
    return done


def _link(src_run: Path, dst_run: Path, subs: tuple[str, ...]) -> None:
    """Share finished outputs of one run directory with another (hard links, else copies)."""
    for sub in subs:
        if (dst_run / sub).exists():
            continue
        shutil.copytree(src_run / sub, dst_run / sub, copy_function=_link_or_copy)


def _link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _p_name(p: float | None) -> str:
    """Folder / key of one kind of data: p05 for context P = 0.5, data for the user's --data."""
    return "data" if p is None else f"p{p:g}".replace(".", "")


def run(ctx: StageContext) -> None:
    cfg: DemoConfig = ctx.section
    if cfg.quick:
        cfg = cfg.model_copy(update={"seeds": QUICK_SEEDS, "seg_seeds": 1, "p0": False})
    user_data = ctx.data_root  # --data ROOT: the comparison on the user's dataset instead of synthetic data
    contexts = _check_and_contexts(cfg, user_data)
    out = Path(cfg.out)
    jobs, threads = _jobs_and_threads(cfg.jobs)
    workers = cfg.workers if jobs == 1 else max(1, cfg.workers // jobs)
    t0 = time.perf_counter()
    phases, layout = plan_tasks(cfg, out, contexts, user_data, workers)
    if jobs > 1:
        ctx.info(f"demo: {len(phases[1][0]) + len(phases[2][0])} training runs, {jobs} at once "
                 f"({threads} torch thread{'s' if threads > 1 else ''} each)")
    done: list[list[tuple[str, str, float, float]]] = []
    for tasks, what in phases:
        done += _run_tasks(ctx, tasks, jobs, threads, what)
    commands = [command for task in done for _, command, _, _ in task]
    results = collect_results(contexts, layout)
    seconds = time.perf_counter() - t0
    write_report(out, ctx, results, commands, _timings(done), seconds, cfg, threads, jobs, user_data)
    print_table(ctx, results)
    ctx.info(f"demo: finished in {seconds / 60:.1f} min; report in {out / 'report.md'}")


def _check_and_contexts(cfg: DemoConfig, user_data: Path | None) -> list[float | None]:
    """Check the demo's options; the kinds of data it compares on (context P values, or None for --data)."""
    if cfg.out is None:
        raise ConfigError("bana demo: OUT folder is required")
    if cfg.seg_seeds > cfg.seeds:
        raise ConfigError(f"bana demo: seg_seeds ({cfg.seg_seeds}) is larger than seeds ({cfg.seeds})")
    if user_data is not None:
        if not (Path(user_data) / "ImageSets" / "Segmentation" / "val.txt").is_file():
            raise ConfigError(f"bana demo --data {user_data}: no ImageSets/Segmentation/val.txt (a VOC-layout dataset "
                              "with train and val splits and ground-truth masks is needed)")
        return [None]
    return [cfg.context] + ([0.0] if cfg.p0 and cfg.context != 0.0 else [])


Layout = dict[str, list[tuple[int, Path, bool]]]  # data kind -> [(seed, runs folder, with DeepLab)]


def plan_tasks(cfg: DemoConfig, out: Path, contexts: list[float | None], user_data: Path | None,
               workers: int) -> tuple[list[tuple[list[list[tuple]], str]], Layout]:
    """The demo's work as independent chains of steps in three phases (datasets; classifiers and
    their labels; DeepLab on BAP's labels), each phase ``(tasks, what)``, and where each seed's runs
    go. The report lists every task's commands in this order."""
    seed_list = [cfg.seed + k for k in range(cfg.seeds)]
    synth_tasks: list[list[tuple]] = []
    label_tasks: list[list[tuple]] = []
    seg_tasks: list[list[tuple]] = []
    layout: Layout = {}
    for p in contexts:
        pname = _p_name(p)
        layout[pname] = []
        for k, seed in enumerate(seed_list):
            base = out / pname / f"seed{seed}"
            data, runs = (base / "data" if p is not None else Path(user_data)), base / "runs"
            with_seg = p == contexts[0] and k < cfg.seg_seeds
            layout[pname].append((seed, runs, with_seg))
            if p is not None and not (data / "ImageSets" / "Segmentation" / "val.txt").is_file():
                synth_tasks.append([("stage", "synth", "synth", {"out": data, "images": cfg.images, "val": cfg.val,
                                                                 "size": cfg.size, "seed": seed, "context": p})])
            first = k == 0 and p == contexts[0]
            label_tasks += [_label_task(cfg, data, runs, pooling, seed, workers, viz=first and pooling != "gap")
                            for pooling in POOLINGS]
            if with_seg:
                seg_tasks += [_seg_task(cfg, data, runs, loss, seed, workers) for loss in ("ycrf", "nal")]
    phases = [(synth_tasks, "datasets"), (label_tasks, "classifiers and pseudo labels"), (seg_tasks, "DeepLab runs")]
    return phases, layout


def _label_task(cfg: DemoConfig, data: Path, runs: Path, pooling: str, seed: int, workers: int,
                viz: bool) -> list[tuple]:
    """train-cls with one pooling, then its gen-labels (and, for BAP, the labels without u0 from the same classifier)."""
    common = {"data": data, "set_": []}
    run_dir = runs / pooling
    cls_args = {"backbone": "tiny-bn", "iterations": cfg.cls_iterations, "batch_size": cfg.batch_size,
                "crop_size": cfg.size, "lr": 0.01, "seed": seed, "resume": True}
    task = [("stage", "train-cls", "train-cls", {**common, "run": run_dir, "pooling": pooling, **cls_args,
             "set_": ["cls.weights=null", f"cls.lr_step={int(cfg.cls_iterations * 0.75)}", *CLS_SET,
                      f"cls.val_every={cfg.cls_iterations}"]}),
            ("stage", "gen-labels", "gen-labels", {**common, "run": run_dir, "workers": workers,
                                                   "viz": 4 if viz else 0, "set_": list(STAGE2_SET[pooling])})]
    if pooling == "bap":
        task += [("link", runs / "bap", runs / "bap-wo-u0", ("cls",)),
                 ("stage", "gen-labels", "gen-labels", {**common, "run": runs / "bap-wo-u0", "workers": workers,
                                                        "set_": ["labels.use_u0=false"]})]
    return task


def _seg_task(cfg: DemoConfig, data: Path, runs: Path, loss: str, seed: int, workers: int) -> list[tuple]:
    """train-seg with one loss on BAP's labels (shared by hard links), then eval on val."""
    common = {"data": data, "set_": []}
    run_dir = runs / SEG_RUNS[loss]
    return [("link", runs / "bap", run_dir, ("cls", "labels")),
            ("stage", "train-seg", "train-seg", {**common, "run": run_dir, "model": "tiny", "loss": loss,
             "iterations": cfg.seg_iterations, "batch_size": cfg.batch_size, "crop_size": cfg.size,
             "lr": 0.01, "seed": seed, "resume": True, "set_": list(SEG_SET)}),
            ("stage", "eval", "eval", {**common, "run": run_dir, "split": "val", "workers": workers})]


def _timings(done: list[list[tuple[str, str, float, float]]]) -> dict[str, tuple[float, float]]:
    """(wall s, CPU s) per step label, summed over all finished tasks."""
    timings: dict[str, tuple[float, float]] = {}
    for label, _, wall, cpu in (step for task in done for step in task):
        w, c = timings.get(label, (0.0, 0.0))
        timings[label] = (w + wall, c + cpu)
    return timings


def collect_results(contexts: list[float | None], layout: Layout) -> dict[str, dict]:
    """Per kind of data: the per-seed rows (pseudo labels, DeepLab), the classifiers, and their summary."""
    results: dict[str, dict] = {}
    for p in contexts:
        pname = _p_name(p)
        results[pname] = {"context": p, "seeds": {}}
        for seed, runs, with_seg in layout[pname]:
            row = pseudo_row(runs)
            results[pname].setdefault("classifiers", {})[str(seed)] = classifier_row(runs)
            if with_seg:
                row.update(seg_row({"w/ Ycrf (CE)": runs / SEG_RUNS["ycrf"], "w/ NAL": runs / SEG_RUNS["nal"]}))
            results[pname]["seeds"][str(seed)] = row
        results[pname]["summary"] = summarise(results[pname]["seeds"])
    return results


def _jobs_and_threads(jobs: int) -> tuple[int, int]:
    """(runs at once, torch threads per run): ``jobs`` = 0 means one run per available core."""

    cores, _ = wanted_threads()
    if jobs == 1:
        return 1, cores
    jobs = jobs or cores
    return jobs, max(1, cores // jobs)


def _run_tasks(ctx: StageContext, tasks: list[list[tuple]], jobs: int, threads: int, what: str) -> list[list[tuple]]:
    """Run independent tasks, in this process (jobs = 1, stage output shown) or in ``jobs``
    worker processes (joblib/loky, stages quiet, one line per finished task); results in the
    order of ``tasks`` whatever the order of completion."""
    def echo(command: str) -> None:
        ctx.logger.info("$ %s", command)
        if not ctx.quiet:
            ctx.console.print("$ " + command, style="bold", markup=False, highlight=False)

    if jobs == 1 or len(tasks) <= 1:  # one task of a --jobs run keeps that run's thread count
        return [_run_task(t, quiet=ctx.quiet, device=ctx.device, threads=threads if jobs > 1 else None, echo=echo)
                for t in tasks]
    from joblib import delayed  # loads joblib, for the worker pool only

    from banacli.labeling.workers import lazy_unordered  # loads torch

    out: list = [None] * len(tasks)
    calls = (delayed(_indexed)(k, t, ctx.device, threads) for k, t in enumerate(tasks))
    with ctx.progress() as prog:
        bar = prog.add_task(f"demo: {what}, {jobs} at once", total=len(tasks), status="")
        for k, steps in lazy_unordered(calls, min(jobs, len(tasks)), backend="loky"):
            out[k] = steps
            for _, command, wall, _ in steps:
                ctx.logger.info("$ %s (%.0f s)", command, wall)
                if not ctx.quiet:
                    prog.console.print(f"$ {command}  [{wall:.0f} s]", markup=False, highlight=False)
            prog.advance(bar)
    return out


def _indexed(k: int, task: list[tuple], device: str, threads: int) -> tuple[int, list]:
    return k, _run_task(task, quiet=True, device=device, threads=threads)


def pseudo_row(runs: Path) -> dict[str, float]:
    from banacli.runs import RunDir  # loads torch

    def report(name: str) -> dict:
        return json.loads(RunDir(runs / name).label_report("bana").read_text())["miou"]

    bap, gap, paper, wo = report("bap"), report("gap"), report("gap-paper"), report("bap-wo-u0")
    return {"Box": bap["Box"], "GAP-paper: Ycrf": paper["Ycrf"], "GAP (bana): Ycrf": gap["Ycrf"],
            "BAP: Ycrf": bap["Ycrf"], "BAP: Ycrf w/o u0": wo["Ycrf"], "BAP: Yret": bap["Yret"]}


def classifier_row(runs: Path) -> dict[str, dict]:
    """Per pooling: the classifier's box accuracy and mAP on the val boxes (train-cls validation at
    its last iteration; None when it was not run) and the background-attention check of its labels."""
    from banacli.runs import RunDir  # loads torch

    out = {}
    for pooling in POOLINGS:
        val = read_sidecar(RunDir(runs / pooling).model("cls")).get("metrics", {}).get("val") or {}
        report = json.loads(RunDir(runs / pooling).label_report("bana").read_text())
        out[pooling] = {"accuracy": val.get("accuracy"), "map": val.get("map"), "boxes": val.get("boxes"),
                        **{k: val.get(k) for k in ("accuracy_clear", "boxes_clear", "accuracy_covered", "boxes_covered")},
                        "attention": report.get("attention")}
    return out


def seg_row(seg_runs: dict[str, Path]) -> dict[str, float]:
    row = {}
    for label, run_dir in seg_runs.items():
        files = sorted((run_dir / "eval").glob("metrics-seg*-val.json"))
        row[label] = json.loads(files[-1].read_text())["miou"] if files else float("nan")
    return row


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""

    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


ALPHA = 0.05  # level of the one-sided paired t-test of every claim


def summarise(seeds: dict[str, dict[str, float]]) -> dict:
    rows = [r for r in PSEUDO_ROWS + SEG_ROWS if any(r in v for v in seeds.values())]
    stats = {}
    for r in rows:
        vals = [v[r] for v in seeds.values() if r in v]
        m, sd = mean_std(vals)
        stats[r] = {"mean": m, "std": sd, "n": len(vals)}
    claims = {}
    for name, hi, lo in CLAIMS + SEG_CLAIMS:
        if hi in stats and lo in stats:
            keep = [v for v in seeds.values() if hi in v and lo in v]
            claims[name] = paired_comparison([x[hi] for x in keep], [x[lo] for x in keep], alpha=ALPHA).as_dict()
    return {"rows": stats, "claims": claims}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def table_markdown(result: dict, rows: tuple[str, ...], what: str) -> list[str]:
    seeds = result["seeds"]
    stats = result["summary"]["rows"]
    rows = tuple(r for r in rows if r in stats)
    if not rows:
        return []
    used = [s for s in seeds if any(r in seeds[s] for r in rows)]
    head = f"| {what} | mean ± std (n = {stats[rows[0]]['n']}) | " + " | ".join(f"seed {s}" for s in used) + " | paper |"
    lines = [head, "| --- | ---: | " + " | ".join("---:" for _ in used) + " | ---: |"]
    for r in rows:
        st = stats[r]
        per = " | ".join(_pct(seeds[s][r]) if r in seeds[s] else "" for s in used)
        paper = PAPER.get(r)
        lines.append(f"| {r} | {_pct(st['mean'])} ± {_pct(st['std'])} | {per} | {paper if paper is not None else '—'} |")
    return lines


def _num(x, fmt: str) -> str:
    return "—" if x is None or x != x else format(x, fmt)


def claims_markdown(result: dict) -> list[str]:
    """One row per claim "A > B": the paired statistics of d = A - B over the seeds."""
    claims = result["summary"]["claims"]
    if not claims:
        return []
    lines = ["| claim (A above B) | verdict | mean d ± se | d > 0 / d < 0 | p (one-sided) | detectable d "
             "| r(A, B) | n |", "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in claims.items():
        lines.append(f"| {name} | **{c['verdict']}** | {_num(100 * c['mean'], '+.1f')} ± {_num(100 * c['se'], '.1f')} "
                     f"| {c['positive']} / {c['negative']} | {_num(c['p_greater'], '.3f')} "
                     f"| {_num(100 * c['detectable'], '.1f')} | {_num(c['correlation'], '+.2f')} | {c['n']} |")
    return lines


def classifiers_markdown(result: dict) -> list[str]:
    """Box accuracy (%) of each classifier on the val boxes, per seed, and its labels' attention check."""
    table = result.get("classifiers") or {}
    if not table:
        return []
    used = list(table)
    lines = ["| classifier | " + " | ".join(f"seed {s}" for s in used) + " |",
             "| --- | " + " | ".join("---:" for _ in used) + " |"]
    for pooling in POOLINGS:
        cells = []
        for s in used:
            c = table[s].get(pooling, {})
            att = c.get("attention") or {}
            flag = " (degenerate attention)" if att.get("degenerate") else ""
            cells.append((_pct(c["accuracy"]) if c.get("accuracy") is not None else "—") + flag)
        lines.append(f"| {pooling} | " + " | ".join(cells) + " |")
    for part, what in (("clear", "clear boxes"), ("covered", "covered boxes")):
        for pooling in POOLINGS:
            cells = [_pct(table[s][pooling][f"accuracy_{part}"])
                     if table[s].get(pooling, {}).get(f"accuracy_{part}") is not None else "—" for s in used]
            if any(c != "—" for c in cells):
                lines.append(f"| {pooling}, {what} | " + " | ".join(cells) + " |")
    counts = [(table[s].get("bap", {}).get("boxes_clear"), table[s].get("bap", {}).get("boxes_covered")) for s in used]
    if all(c is not None for pair in counts for c in pair):
        lines += ["", "Clear boxes: no other box of the image overlaps 30 % or more of the box's area; covered: one does "
                  "(banacli.engine.evaluate.covered_share). Boxes clear / covered per seed: "
                  + ", ".join(f"{a} / {b}" for a, b in counts) + "."]
    return lines


def print_table(ctx: StageContext, results: dict) -> None:
    if ctx.quiet:
        return
    for pname, result in results.items():
        stats = result["summary"]["rows"]
        what = ("your data" if result["context"] is None else
                f"synthetic data with context P = {result['context']:g}")
        t = Table(title=f"mIoU (%), {what}: mean ± std over seeds")
        t.add_column("")
        t.add_column("mean ± std", justify="right")
        t.add_column("paper (VOC)", justify="right")
        for r, st in stats.items():
            paper = PAPER.get(r)
            t.add_row(r, f"{_pct(st['mean'])} ± {_pct(st['std'])} (n={st['n']})", "—" if paper is None else str(paper))
        ctx.console.print(t)
        for name, c in result["summary"]["claims"].items():
            ctx.console.print(f"  {name}: {c['verdict']}", markup=False, highlight=False)


def write_report(out: Path, ctx: StageContext, results: dict, commands: list[str], timings: dict, seconds: float,
                 cfg, threads: int, jobs: int = 1, user_data: Path | None = None) -> None:
    """OUT/report.md (how to read it, the tables and verdicts per kind of data, pictures, times,
    commands) and OUT/report.json (the same numbers)."""
    lines = [*_report_header(ctx, cfg, seconds, threads, jobs, user_data)]
    for result in results.values():
        lines += _report_section(result, user_data)
    lines += [*_REPORT_NOTES, "", "## Pseudo labels: image + boxes, u0, CAMs, ~S, Ycrf, Yret", "",
              *_report_pictures(out, cfg, user_data),
              "## Time per step, summed over seeds and datasets", "",
              "| step | wall s | CPU s (this process + finished workers) |", "| --- | ---: | ---: |",
              *[f"| {k} | {w:.0f} | {c:.0f} |" for k, (w, c) in timings.items()], "",
              "## Commands", "", "```", *commands, "```", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    atomic_write_json(out / "report.json", {"results": results, "timings": timings, "seconds": seconds,
                                            "threads": threads, "jobs": jobs, "commands": commands})


def _report_header(ctx: StageContext, cfg, seconds: float, threads: int, jobs: int, user_data: Path | None) -> list[str]:
    """The report's title, the machine and the run's size, and how to read the verdicts."""
    import torch  # loads torch, for its version only

    seed_list = [cfg.seed + k for k in range(cfg.seeds)]
    load = ""
    try:
        load = " (load average {:.2f} {:.2f} {:.2f} at the end)".format(*os.getloadavg())
    except OSError:
        pass
    return [
        "# bana demo report", "",
        f"bana {__version__}, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} CPUs{load}, "
        f"**{threads} torch thread{'s' if threads > 1 else ''} per run**"
        f"{f', {jobs} runs at once' if jobs > 1 else ''}, device {ctx.device}. Per seed: "
        + (f"the data set {user_data}, crops of {cfg.size} px" if user_data is not None else
           f"{cfg.images} train + {cfg.val} val synthetic images of {cfg.size} px")
        + f"; seeds {', '.join(map(str, seed_list))} (each seed has its own training runs and, with synthetic "
        f"data, its own dataset); {seconds / 60:.1f} min in all.", "",
        "How to read this: each number is an mIoU (%). Pseudo labels are scored on the train split against the "
        "synthetic ground truth, DeepLab on the val split. All methods of a seed share its data set, so each claim "
        "\"A above B\" is judged on the per-seed differences d = A - B (banacli/stats.py): mean(d) ± its standard "
        "error, how many seeds have d > 0 and d < 0, and a one-sided paired t-test at alpha = "
        f"{ALPHA:g}. The claim **holds** when the test rejects \"A <= B\", **does not hold** when it rejects "
        "\"A >= B\", and is **not separable** otherwise. \"detectable d\" is the smallest mean difference this "
        "run's spread of d would have called significant (at 50 % power); r(A, B) is the correlation of the two "
        "methods over the seeds (near 1: pairing removes the seed-to-seed spread; near 0: each run's own training "
        "noise dominates). Nothing was tuned to make a claim hold.", "",
        "Thread count: with the same seed and the same number of torch threads per run two runs print identical "
        "numbers, however many runs go at once (--jobs). "
        "With another thread count, floating-point sums are taken in another order, so the numbers can change "
        "(training amplifies the last bits); the spread over seeds above is the scale of such changes.", "",
    ]


def _report_section(result: dict, user_data: Path | None) -> list[str]:
    """One kind of data: pseudo-label and DeepLab tables, the claims' verdicts, the classifiers' box accuracy."""
    p = result["context"]
    if p is None:
        title = f"## Your data: {user_data}"
    else:
        title = (f"## Context P = {p:g} (a share P of the images draw their background from a habitat tied to the "
                 f"class of one of their objects; docs/synthetic.md)" if p > 0 else
                 "## P = 0 (backgrounds independent of the classes)")
    lines = [title, "", *table_markdown(result, PSEUDO_ROWS, "pseudo labels (train)"), ""]
    seg = table_markdown(result, SEG_ROWS, "DeepLab, tiny (val)")
    if seg:
        lines += [*seg, ""]
    lines += ["What the paper claims, on this data:", "", *claims_markdown(result), ""]
    cls = classifiers_markdown(result)
    if cls:
        lines += ["Box accuracy (%) of each stage-1 classifier on the val boxes (argmax over the object "
                  "classes; chance 20 % with five classes):", "", *cls, ""]
    return lines


_REPORT_NOTES = (
    "GAP-paper is the paper's GAP baseline (no background samples in training); GAP (bana) keeps the background "
    "grid cells as class-0 samples. Both make their Ycrf as the paper's GAP row does, from CAMs and DenseCRF: "
    "the background score is the background CAM (labels.use_u0=false), since the attention u0 of Eq. 7 is part "
    "of BAP (docs/bap-vs-gap.md). \"degenerate attention\": gen-labels found u0 near-constant on most checked "
    "images (RUN/labels/bana.report.json, 'attention').",
)


def _report_pictures(out: Path, cfg, user_data: Path | None) -> list[str]:
    """Copy the first seed's label pictures (BAP, GAP-paper) to OUT/pictures; their markdown lines."""
    from banacli.runs import RunDir  # loads torch

    seed = cfg.seed
    pics = out / "pictures"
    pics.mkdir(parents=True, exist_ok=True)
    main = _p_name(None if user_data is not None else cfg.context)
    main_what = f"data {user_data}" if user_data is not None else f"context P = {cfg.context:g}"
    lines = []
    for pooling in ("bap", "gap-paper"):
        viz = sorted(RunDir(out / main / f"seed{seed}" / "runs" / pooling).label_viz.glob("*.png"))
        for q in viz:
            shutil.copy2(q, pics / f"{pooling}-{q.name}")
        if viz:
            lines += [f"### {pooling} ({main_what}, seed {seed})", "",
                      *[f"![{pooling} {q.name}](pictures/{pooling}-{q.name})" for q in viz], ""]
    return lines


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

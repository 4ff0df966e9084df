"""The demo pipeline end to end on tiny synthetic data: tables, verdicts, reuse, determinism."""

import json

import pytest
from typer.testing import CliRunner

from banacli.cli import build_app

TINY = ["--images", "8", "--val", "4", "--size", "48", "--cls-iterations", "3", "--seg-iterations", "4",
        "--batch-size", "4", "--workers", "1"]


def _demo(out, *extra):
    res = CliRunner().invoke(build_app(), ["demo", str(out), *TINY, *extra])
    assert res.exit_code == 0, res.output
    return json.loads((out / "report.json").read_text())


def test_demo_runs_every_stage_and_writes_the_tables(tmp_path):
    out = tmp_path / "demo"
    data = _demo(out, "--seeds", "2", "--seg-seeds", "1", "--context", "0.5", "--p0")
    report = (out / "report.md").read_text()
    for row in ("| Box |", "| GAP-paper: Ycrf |", "| GAP (bana): Ycrf |", "| BAP: Ycrf |", "| BAP: Ycrf w/o u0 |",
                "| BAP: Yret |", "| w/ Ycrf (CE) |", "| w/ NAL |", "## Context P = 0.5", "## P = 0 ", "torch threads",
                "| BAP Ycrf above GAP-paper Ycrf | **", "| bap, covered boxes |"):
        assert row in report, row
    res = data["results"]
    assert set(res) == {"p05", "p0"}
    # the tables hold what the stages measured
    bap = json.loads((out / "p05" / "seed1" / "runs" / "bap" / "labels" / "bana.report.json").read_text())
    assert res["p05"]["seeds"]["1"]["BAP: Ycrf"] == bap["miou"]["Ycrf"]
    assert res["p05"]["seeds"]["1"]["Box"] == bap["miou"]["Box"]
    nal = json.loads(next((out / "p05" / "seed0" / "runs" / "seg-nal" / "eval").glob("metrics-seg*-val.json")).read_text())
    assert res["p05"]["seeds"]["0"]["w/ NAL"] == nal["miou"]
    assert "w/ NAL" not in res["p05"]["seeds"]["1"] and "w/ NAL" not in res["p0"]["seeds"]["0"]
    # the P = 0 data has no context images, the P = 0.5 data has some
    assert set((out / "p0" / "seed0" / "data" / "habitats.txt").read_text().split()[1::2]) == {"-"}
    assert set((out / "p05" / "seed0" / "data" / "habitats.txt").read_text().split()[1::2]) != {"-"}
    # mean and std are those of the per-seed numbers
    vals = [res["p0"]["seeds"][s]["BAP: Ycrf"] for s in ("0", "1")]
    st = res["p0"]["summary"]["rows"]["BAP: Ycrf"]
    assert st["mean"] == pytest.approx(sum(vals) / 2) and st["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    assert data["commands"][0].startswith("bana synth") and "--context 0.5" in data["commands"][0]
    assert any("labels.use_u0=false" in c for c in data["commands"])
    assert any("--pooling gap-paper" in c for c in data["commands"])
    # the GAP baselines' labels come from CAMs and DenseCRF (background CAM), BAP's from u0
    for pooling, wo_u0 in (("bap", False), ("gap", True), ("gap-paper", True)):
        manifest = json.loads((out / "p05" / "seed0" / "runs" / pooling / "labels" / "bana.manifest.json").read_text())
        assert manifest["params"]["use_u0"] is not wo_u0, pooling
    # each classifier's box accuracy on the val boxes is in the report, as train-cls measured it
    from banacli.artifacts import read_sidecar

    val = read_sidecar(out / "p05" / "seed1" / "runs" / "gap" / "cls" / "model.safetensors")["metrics"]["val"]
    assert res["p05"]["classifiers"]["1"]["gap"]["accuracy"] == val["accuracy"]
    assert "Box accuracy (%) of each stage-1 classifier" in report and "| gap-paper |" in report
    assert "| claim (A above B) | verdict |" in report
    assert list((out / "pictures").glob("bap-*.png")) and list((out / "pictures").glob("gap-paper-*.png"))
    # a second run reuses every finished step and gives the same tables
    again = _demo(out, "--seeds", "2", "--seg-seeds", "1", "--context", "0.5", "--p0")
    assert again["results"] == res


def test_two_runs_same_seed_same_threads_identical_numbers(tmp_path):
    args = ("--seed", "3", "--seeds", "1", "--seg-seeds", "1", "--context", "1.0", "--no-p0", "--seg-iterations", "6")
    a = _demo(tmp_path / "a", *args)["results"]
    b = _demo(tmp_path / "b", *args)["results"]
    assert a == b
    assert set(a["p1"]["seeds"]["3"]) >= {"BAP: Ycrf", "w/ NAL", "w/ Ycrf (CE)"}


def test_runs_at_once_give_the_numbers_of_runs_one_after_another(tmp_path):
    # one torch thread per run either way (the tests set OMP_NUM_THREADS=1): --jobs 2 runs the
    # training runs in two worker processes, in whatever order they finish
    args = ("--seed", "4", "--seeds", "1", "--seg-seeds", "1", "--context", "0.5", "--no-p0")
    one = _demo(tmp_path / "one", *args, "--jobs", "1")
    two = _demo(tmp_path / "two", *args, "--jobs", "2")
    assert one["jobs"] == 1 and two["jobs"] == 2 and one["threads"] == two["threads"] == 1
    assert two["results"] == one["results"]
    strip = [c.replace(str(tmp_path / "two"), str(tmp_path / "one")) for c in two["commands"]]
    assert strip == one["commands"]


def test_claims_are_paired_t_tests_over_the_seeds():
    from banacli.stats import paired_comparison
    from bana_plugins.demo import summarise

    # seeds move both methods by ~10 points, A stays ~1 point above B: separable only when paired
    seeds = {str(k): {"BAP: Ycrf": b + 0.01 + 0.001 * k, "GAP (bana): Ycrf": b}
             for k, b in enumerate([0.60, 0.72, 0.55, 0.75, 0.65])}
    c = summarise(seeds)["claims"]["BAP Ycrf above GAP (bana) Ycrf"]
    assert c["verdict"] == "holds" and c["positive"] == 5 and c["n"] == 5
    assert c == paired_comparison([v["BAP: Ycrf"] for v in seeds.values()],
                                  [v["GAP (bana): Ycrf"] for v in seeds.values()]).as_dict()
    flipped = {k: {"BAP: Ycrf": v["GAP (bana): Ycrf"], "GAP (bana): Ycrf": v["BAP: Ycrf"]} for k, v in seeds.items()}
    assert summarise(flipped)["claims"]["BAP Ycrf above GAP (bana) Ycrf"]["verdict"] == "does not hold"
    one = summarise({"0": {"BAP: Ycrf": 0.9, "GAP (bana): Ycrf": 0.1}})["claims"]["BAP Ycrf above GAP (bana) Ycrf"]
    assert one["verdict"] == "not separable"  # one seed: no spread to judge by


def test_quick_profile_runs_two_seeds_of_the_context_data_only(tmp_path):
    data = _demo(tmp_path / "q", "--quick", "--seeds", "5", "--context", "0.5")
    assert set(data["results"]) == {"p05"}
    assert sorted(data["results"]["p05"]["seeds"]) == ["0", "1"]
    assert sum("w/ NAL" in row for row in data["results"]["p05"]["seeds"].values()) == 1


def test_data_option_runs_the_comparison_on_a_given_dataset(tmp_path):
    from banacli.data.synthetic import generate

    root = tmp_path / "mydata"
    generate(root, images=8, size=48, seed=7, val=4)
    data = _demo(tmp_path / "d", "--data", str(root), "--seeds", "2", "--seg-seeds", "1")
    assert set(data["results"]) == {"data"} and sorted(data["results"]["data"]["seeds"]) == ["0", "1"]
    assert not any(c.startswith("bana synth") for c in data["commands"])
    assert all(f"--data {root}" in c for c in data["commands"] if c.split()[1] in ("train-cls", "gen-labels"))
    assert f"## Your data: {root}" in (tmp_path / "d" / "report.md").read_text()

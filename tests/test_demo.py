"""One test over every stage: the demo pipeline end to end on a tiny synthetic dataset."""

import json

from typer.testing import CliRunner

from banacli.cli import build_app


def test_demo_runs_every_stage_and_writes_the_table(tmp_path):
    out = tmp_path / "demo"
    args = ["demo", str(out), "--images", "8", "--val", "4", "--size", "48", "--cls-iterations", "3",
            "--seg-iterations", "2", "--batch-size", "4", "--workers", "1"]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    report = (out / "report.md").read_text()
    for row in ("pseudo labels, Box", "pseudo labels, GAP: Ycrf", "pseudo labels, BAP: Ycrf",
                "pseudo labels, BAP: Yret", "segmentation w/ Ycrf", "segmentation w/ NAL"):
        assert row in report
    data = json.loads((out / "report.json").read_text())
    # the table holds what the stages measured
    bap = json.loads((out / "runs" / "bap" / "labels" / "bana.report.json").read_text())
    assert data["table"]["pseudo"]["BAP: Ycrf"] == bap["miou"]["Ycrf"]
    assert data["table"]["pseudo"]["Box"] == bap["miou"]["Box"]
    nal = json.loads(next((out / "runs" / "bap-seg-nal" / "eval").glob("metrics-seg*-val.json")).read_text())
    assert data["table"]["seg"]["w/ NAL"] == nal["miou"]
    assert len(data["commands"]) == 9 and data["commands"][0].startswith("bana synth")
    assert list((out / "pictures").glob("bap-*.png"))
    # a second run reuses every finished step and gives the same table
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    again = json.loads((out / "report.json").read_text())
    assert again["table"] == data["table"]

import textwrap
from importlib.metadata import EntryPoint, entry_points

import pytest
from typer.testing import CliRunner

import banacli.stage as stage_mod
from banacli.cli import build_app
from banacli.stage import Stage, discover_stages

FAKE = textwrap.dedent(
    '''
    from pydantic import Field
    from banacli.config import Section
    from banacli.stage import Stage

    class HelloConfig(Section):
        name: str = Field("world", description="Whom to greet.")
        times: int = Field(1, gt=0, description="How many greetings.")

    def run(ctx):
        out = ctx.stage_dir / "hello.txt"
        out.write_text(("hello " + ctx.section.name + "\\n") * ctx.section.times)
        ctx.info("greeted")

    stage = Stage(name="hello", help="Say hello (a third-party stage).", run=run,
                  section="hello", config=HelloConfig, needs_data=False)
    not_a_stage = 42
    '''
)


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    (tmp_path / "fake_bana_plugin.py").write_text(FAKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    real = list(entry_points(group="bana.stages"))
    fakes = [
        EntryPoint("hello", "fake_bana_plugin:stage", "bana.stages"),
        EntryPoint("broken", "no_such_module_xyz:stage", "bana.stages"),
        EntryPoint("wrongtype", "fake_bana_plugin:not_a_stage", "bana.stages"),
    ]
    monkeypatch.setattr(stage_mod, "entry_points", lambda group: real + fakes)
    return tmp_path


def test_fake_entry_point_becomes_a_subcommand(fake_plugins, tmp_path):
    with pytest.warns(UserWarning) as rec:
        stages = discover_stages()
    assert "hello" in stages and "synth" in stages
    msgs = [str(w.message) for w in rec]
    assert any("'broken'" in m and "failed to load" in m for m in msgs)
    assert any("'wrongtype'" in m and "not a banacli.stage.Stage" in m for m in msgs)

    runner = CliRunner()
    app = build_app()
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0 and "hello" in res.output and "synth" in res.output
    res = runner.invoke(app, ["hello", "--help"])
    assert "Whom to greet." in res.output and "--times" in res.output
    run = tmp_path / "run"
    res = runner.invoke(app, ["hello", "--run", str(run), "--name", "bana", "--set", "hello.times=2", "-q"])
    assert res.exit_code == 0, res.output
    assert (run / "hello" / "hello.txt").read_text() == "hello bana\nhello bana\n"
    saved = (run / "hello" / "config.yaml").read_text()
    assert "hello:" in saved and "times: 2" in saved and "cls:" in saved
    assert (run / "hello" / "hello.log").read_text().count("bana") >= 1
    # the broken plugins did not take the other commands down
    res = runner.invoke(app, ["synth", "--help"])
    assert res.exit_code == 0


def test_config_error_exit_2_before_work(fake_plugins, tmp_path):
    runner = CliRunner()
    app = build_app()
    run = tmp_path / "run"
    res = runner.invoke(app, ["hello", "--run", str(run), "--set", "hello.tims=2"])
    assert res.exit_code == 2
    assert "config: unknown key hello.tims" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert not (run / "hello" / "hello.txt").exists()
    res = runner.invoke(app, ["hello", "--run", str(run), "--times", "0"])
    assert res.exit_code == 2 and "hello.times: Input should be greater than 0" in res.output


def test_stage_spec_is_validated():
    from banacli.config import Section

    with pytest.raises(ValueError):
        Stage(name="bad name", help="", run=print, section="x", config=Section)
    with pytest.raises(TypeError):
        Stage(name="x", help="", run=print, section="x", config=dict)
    with pytest.raises(ValueError):
        Stage(name="x", help="", run=print, section="x", config=Section, arguments=("nope",))

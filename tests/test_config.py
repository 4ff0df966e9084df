import pytest

from banacli.config import ClsConfig, SECTIONS, parse_set, resolve_config, root_model
from banacli.errors import ConfigError


def test_defaults_match_spec():
    cfg = root_model()()
    assert cfg.cls.grid_size == 4 and cfg.cls.roi_size == 2 and cfg.cls.bg_fallback == 0.125
    assert cfg.labels.grid_size == 1 and cfg.labels.bg_threshold == 0.99
    assert (cfg.labels.crf_bi_w, cfg.labels.crf_bi_xy, cfg.labels.crf_bi_rgb, cfg.labels.crf_pos_w,
            cfg.labels.crf_pos_xy, cfg.labels.crf_iterations) == (4, 55, 3, 3, 3, 10)
    assert (cfg.seg.gamma, cfg.seg.lam, cfg.seg.tau, cfg.seg.detach_sigma) == (7.0, 0.1, 20.0, False)
    assert cfg.eval.scales == [1.0, 0.5, 0.75, 1.5] and cfg.eval.crf_params == [4, 121, 5, 3, 3]


def test_every_field_has_a_description():
    for name, section in SECTIONS.items():
        for key, field in section.model_fields.items():
            assert field.description, f"{name}.{key} has no description"


def test_priority_file_then_options_then_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("cls:\n  grid_size: 3\n  roi_size: 3\nlabels:\n  workers: 2\n")
    cfg = resolve_config(root_model(), config_file=f, overrides={"cls": {"roi_size": 5}},
                         sets=["cls.grid_size=6", "labels.use_u0=false", "data.classes=[a, b]"])
    assert cfg.cls.grid_size == 6 and cfg.cls.roi_size == 5 and cfg.labels.workers == 2
    assert cfg.labels.use_u0 is False and cfg.data.classes == ["a", "b"]


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["cls.grid_sise=4"], "config: unknown key cls.grid_sise"),
        (["clss.grid_size=4"], "config: unknown key clss"),
        (["cls.grid_size=-1"], "config: cls.grid_size: Input should be greater than 0 (got -1)"),
        (["cls.pooling=max"], "config: cls.pooling: Input should be 'bap', 'gap' or 'gap-paper' (got 'max')"),
        (["labels.bg_threshold=abc"], "config: labels.bg_threshold: Input should be a valid number"),
    ],
)
def test_bad_key_or_value_is_one_line(sets, expected):
    with pytest.raises(ConfigError) as err:
        resolve_config(root_model(), sets=sets)
    msg = str(err.value)
    assert msg.startswith(expected)
    assert "\n" not in msg and err.value.exit_code == 2


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cls: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        resolve_config(root_model(), config_file=bad)
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(root_model(), config_file=tmp_path / "nope.yaml")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        resolve_config(root_model(), config_file=lst)


def test_parse_set_types():
    assert parse_set("cls.lr=0.01") == (["cls", "lr"], 0.01)
    assert parse_set("seg.weights=null") == (["seg", "weights"], None)
    assert parse_set("seg.weights=/tmp/x.pth") == (["seg", "weights"], "/tmp/x.pth")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set("cls.lr")
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set("lr=3")


def test_assignment_is_validated():
    cfg = ClsConfig()
    with pytest.raises(Exception):
        cfg.grid_size = 0


def test_docs_config_reference_is_current():
    """docs/config.md is generated from the models; regenerate with python -m banacli.config."""
    from pathlib import Path

    from banacli.stage import config_reference

    expected = config_reference()
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == expected, "docs/config.md is stale: run `python -m banacli.config > docs/config.md`"


def test_seg_grad_clip_spellings_and_auto():
    from banacli.config import SegConfig

    assert SegConfig(model="tiny").clip_norm() == 1.0
    assert SegConfig(model="largefov").clip_norm() is None and SegConfig(model="aspp").clip_norm() is None
    assert SegConfig(model="largefov", grad_clip="2.5").clip_norm() == 2.5
    assert SegConfig(model="tiny", grad_clip=0.5).clip_norm() == 0.5
    for off in (None, "none", "null", "off", "None"):
        assert SegConfig(model="tiny", grad_clip=off).clip_norm() is None
    for bad in ("0", "-1", "inf", "often", "nan"):
        with pytest.raises(Exception):
            SegConfig(grad_clip=bad)

"""The layout rules of CONTRIBUTING.md hold on the tree, and the checker (benchmarks/layout.py) finds each break."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _layout():
    spec = importlib.util.spec_from_file_location("bana_layout", ROOT / "benchmarks" / "layout.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_tree_keeps_the_layout_rules():
    layout = _layout()
    mods = layout.scan()
    assert "banacli.runs" in mods and "bana_plugins.demo" in mods  # it read the real tree
    assert layout.rule_breaks(mods) == {}


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_each_kind_of_break_is_found(tmp_path):
    layout = _layout()
    _write(tmp_path, "banacli/__init__.py", "")
    _write(tmp_path, "banacli/a.py", "from banacli.b import g\n\ndef f():\n    import json\n    return json\n")
    _write(tmp_path, "banacli/b.py", "from banacli import a\n\ndef g():\n    import torch\n    import json  # light\n")
    _write(tmp_path, "banacli/sub/__init__.py", "")
    _write(tmp_path, "banacli/sub/a.py", "# see SPEC.md\n")
    _write(tmp_path, "banacli/cli.py", "def run_stage():\n    pass\n")
    _write(tmp_path, "plugins/__init__.py", "")
    _write(tmp_path, "plugins/one.py", "from banacli.b import _hidden\nfrom banacli.cli import run_stage\n"
                                       "from bana_plugins.two import x\n\ndef long():\n" + "    y = 1\n" * 81)
    _write(tmp_path, "plugins/two.py", "x = 1\n")
    breaks = layout.rule_breaks(layout.scan(tmp_path), tmp_path)
    (circle,) = breaks["import circle"]  # found once, from whichever module the search reached first
    assert circle in ("banacli.a -> banacli.b -> banacli.a", "banacli.b -> banacli.a -> banacli.b")
    assert breaks["module name used twice"] == ["a.py"]
    assert breaks["local import without a reason"] == ["banacli/a.py:4: json"]  # torch is heavy; the other has a reason
    assert breaks["plugin imports a private name"] == ["plugins/one.py: banacli.b._hidden"]
    assert breaks["plugin imports the host's internals"] == ["plugins/one.py: banacli.cli.run_stage"]
    assert breaks["plugin imports a plugin"] == ["plugins/one.py: bana_plugins.two.x"]
    assert breaks["function over 80 lines"] == ["plugins/one.py: long (82)"]
    assert breaks["cites SPEC.md"] == ["banacli/sub/a.py"]

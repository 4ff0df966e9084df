"""The library's layout in numbers, and the rules of CONTRIBUTING.md checked from the source.

    python benchmarks/layout.py            # modules per folder, longest functions, local imports, rule breaks

Reads the files with ``ast`` only (imports nothing of bana). ``tests/test_layout.py`` asserts the
rules; this script prints the numbers a closing note gives (issue 20).
"""

from __future__ import annotations

import ast
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"banacli": "banacli", "bana_plugins": "plugins"}  # import name -> folder
# packages a function may import locally without a reason: optional, heavy or platform-bound
OPTIONAL = {"onnx", "onnxruntime", "onnxscript", "dask", "distributed", "pycocotools", "matplotlib", "uvicorn",
            "cv2", "tensorboard", "torch", "torchvision", "resource", "fcntl", "msvcrt", "datumaro"}
LONG = 80  # lines: the longest a function in the pipeline should be


@dataclass
class Module:
    name: str
    path: Path  # relative to the repository root
    top_imports: set[str] = field(default_factory=set)          # bana modules imported at module level
    local_imports: list[tuple[int, str, bool]] = field(default_factory=list)  # (line, imported, has a reason)
    functions: list[tuple[str, int]] = field(default_factory=list)  # (qualified name, lines)
    imported_names: list[tuple[str, str]] = field(default_factory=list)  # (module, name) of from-imports


def _module_name(pkg: str, base: Path, path: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([pkg, *parts])


def _resolve(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if mod.path.name != "__init__.py":
        base = base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _in_type_checking(node: ast.AST, parents: dict) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def scan(root: Path = ROOT) -> dict[str, Module]:
    """Every module of banacli/ and plugins/ under ``root``: its imports and functions."""
    mods: dict[str, Module] = {}
    for pkg, folder in PACKAGES.items():
        base = root / folder
        for path in sorted(base.rglob("*.py")):
            mod = Module(_module_name(pkg, base, path), path.relative_to(root))
            text = path.read_text()
            lines = text.splitlines()
            tree = ast.parse(text)
            parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    owner = parents.get(node)
                    qual = f"{owner.name}.{node.name}" if isinstance(owner, ast.ClassDef) else node.name
                    mod.functions.append((qual, node.end_lineno - node.lineno + 1))
                if not isinstance(node, (ast.Import, ast.ImportFrom)) or _in_type_checking(node, parents):
                    continue
                targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else [_resolve(mod, node)])
                if isinstance(node, ast.ImportFrom):
                    mod.imported_names += [(targets[0], a.name) for a in node.names]
                local = any(isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) for p in _ancestors(node, parents))
                if local:
                    reason = "#" in lines[node.lineno - 1] or "#" in lines[node.end_lineno - 1]
                    mod.local_imports += [(node.lineno, t, reason) for t in targets]
                else:  # ``from a import b``: b may be a module of a (a.b), else a name in a
                    named = (targets if isinstance(node, ast.Import) else
                             [f"{targets[0]}.{a.name}" for a in node.names])
                    mod.top_imports |= {t for t in named if t.split(".")[0] in PACKAGES}
            mods[mod.name] = mod
    return mods


def _ancestors(node, parents):
    while node in parents:
        node = parents[node]
        yield node


def _owner(target: str, mods: dict[str, Module]) -> str | None:
    """The bana module an import target names (``banacli.runs.RunDir`` -> ``banacli.runs``)."""
    while target and target not in mods:
        target = target.rpartition(".")[0]
    return target or None


def import_cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Cycles among module-level imports of bana modules (each found once, as a list of names)."""
    graph = {m: {o for t in mod.top_imports if (o := _owner(t, mods)) and o != m} for m, mod in mods.items()}
    # a package's __init__ is loaded before its submodules: importing a.b imports a
    for m in list(graph):
        graph[m] |= {p for t in graph[m] for p in _parents(t) if p in mods and p != m and not m.startswith(p + ".")}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def _parents(name: str):
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


def rule_breaks(mods: dict[str, Module], root: Path = ROOT) -> dict[str, list[str]]:
    """Every break of CONTRIBUTING.md's layout rules, by rule."""
    out: dict[str, list[str]] = defaultdict(list)
    for cycle in import_cycles(mods):
        out["import circle"].append(" -> ".join(cycle))
    names = Counter(m.path.name for m in mods.values() if m.path.name != "__init__.py")
    out["module name used twice"] += sorted(n for n, c in names.items() if c > 1)
    for m, mod in mods.items():
        rel = mod.path
        if m.startswith("bana_plugins"):
            for target, name in mod.imported_names:
                if target.startswith("bana_plugins") or target.startswith("plugins"):
                    out["plugin imports a plugin"].append(f"{rel}: {target}.{name}")
                elif target == "banacli.cli" or target.startswith("banacli.cli."):
                    out["plugin imports the host's internals"].append(f"{rel}: {target}.{name}")
                elif target.startswith("banacli") and name.startswith("_") and not name.startswith("__"):
                    out["plugin imports a private name"].append(f"{rel}: {target}.{name}")
            for line, target, _ in mod.local_imports:
                if target.startswith("bana_plugins") or target.startswith("plugins"):
                    out["plugin imports a plugin"].append(f"{rel}:{line}: {target}")
        for line, target, reason in mod.local_imports:
            if not reason and target.split(".")[0] not in OPTIONAL:
                out["local import without a reason"].append(f"{rel}:{line}: {target}")
        if m.startswith(("banacli.labeling", "banacli.engine", "bana_plugins")):
            out["function over 80 lines"] += [f"{rel}: {f} ({n})" for f, n in mod.functions if n > LONG]
    for mod in mods.values():
        if "SPEC.md" in (root / mod.path).read_text():
            out["cites SPEC.md"].append(str(mod.path))
    return {k: v for k, v in out.items() if v}


def report(mods: dict[str, Module], root: Path = ROOT) -> str:
    per = Counter()
    for mod in mods.values():
        if mod.path.name != "__init__.py":
            per[str(mod.path.parent)] += 1
    funcs = sorted(((n, f"{mod.path}: {f}") for mod in mods.values() for f, n in mod.functions),
                   reverse=True)
    local = sum(len(mod.local_imports) for mod in mods.values())
    reasons = Counter()
    for mod in mods.values():
        for line, target, reason in mod.local_imports:
            kind = "optional/heavy package" if target.split(".")[0] in OPTIONAL else ("with a reason" if reason else "NO REASON")
            reasons[kind] += 1
    lines = ["modules per folder:", *[f"  {d}: {n}" for d, n in sorted(per.items())],
             "longest functions:", *[f"  {n:4d}  {where}" for n, where in funcs[:10]],
             f"function-local imports: {local} ({', '.join(f'{k} {v}' for k, v in reasons.items())})"]
    breaks = rule_breaks(mods, root)
    lines.append("rule breaks: " + ("none" if not breaks else ""))
    for rule, items in breaks.items():
        lines += [f"  {rule}: {len(items)}", *[f"    {i}" for i in items]]
    return "\n".join(lines)


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT  # another checkout, e.g. for a before / after
    print(report(scan(root), root))

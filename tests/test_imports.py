"""The package's modules import one way: no module reaches, even from inside a function, a
module that imports it back (docs/design.md, "imports pointing down only")."""

from __future__ import annotations

import ast
from pathlib import Path

import paretopipe

ROOT = Path(paretopipe.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module's imports of other package modules (a package's own parents left out: importing
    a submodule runs them, but they do not import it back by that)."""

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            else:
                continue
            for name in names:
                target = owner(name)
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (a path that ends where it starts), or None."""
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> list[str] | None:
        if mod in path:
            return path[path.index(mod):] + [mod]
        if mod in done:
            return None
        for nxt in sorted(graph[mod]):
            found = visit(nxt, [*path, mod])
            if found:
                return found
        done.add(mod)
        return None

    for mod in sorted(graph):
        found = visit(mod, [])
        if found:
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_of_paretopipe_imports_one_that_imports_it_back():
    graph = _imports(_modules())
    assert "paretopipe.testbed._shaping" in graph["paretopipe.testbed._lifecycle"]  # it reads imports
    assert _cycle(graph) is None


def test_the_layers_point_down():
    """analysis never imports paretopipe; paretopipe never imports analysis (not even lazily:
    a source device has no pandas); paretoio imports neither (docs/design.md)."""

    def imported(package: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for f in (ROOT.parent / package).rglob("*.py"):
            tops: set[str] = set()
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Import):
                    tops.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    tops.add(node.module.split(".")[0])
            out[str(f.relative_to(ROOT.parent))] = tops
        return out

    rules = {"paretopipe": {"analysis"}, "analysis": {"paretopipe", "torch"}, "paretoio": {"paretopipe", "analysis"}}
    bad = {f: sorted(tops & banned) for package, banned in rules.items()
           for f, tops in imported(package).items() if tops & banned}
    assert bad == {}
    assert "paretoio" in imported("paretopipe")["paretopipe/predict.py"]  # it does read imports

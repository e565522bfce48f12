"""The house: the package's layout as the design states it (README "Layout", docs/design-notes.md).

Imports are read from the source (imports inside functions count, and importing ``a.b.c`` imports the
packages ``a.b`` on the way unless the importer is inside them); a circle is a strongly connected
component of that graph.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (anywhere in its body)."""
    files = {_module(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {}
    for name, path in files.items():
        own = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = own.split(".")
                    base = ".".join(up[:len(up) - node.level + 1] + ([node.module] if node.module else []))
                targets |= {f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names}
            elif isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
        deps = set()
        for t in targets:
            while t and t not in files:
                t = t.rpartition(".")[0]
            parts = t.split(".") if t else []
            for k in range(1, len(parts) + 1):  # the target and the packages it is imported through
                step = ".".join(parts[:k])
                if step in files and step != name and not (name + ".").startswith(step + "."):
                    deps.add(step)
        graph[name] = deps
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("package", ["onnxrep", "models"])
def test_no_import_circle(package):
    assert circles(import_graph(package)) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_at_most_ten_top_level_modules_and_none_over_350_lines():
    top = sorted(p.stem for p in (ROOT / "onnxrep").glob("*.py") if p.name != "__init__.py")
    assert len(top) <= 10, top
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "onnxrep").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 350}
    assert long == {}


def test_low_modules_import_nothing_above_them():
    """The cost model and the text tables import no onnxrep module; the report's records only the tables'
    neighbours (nothing); the algebra neither the graph layer nor the rules."""
    g = import_graph("onnxrep")
    assert g["onnxrep.cost"] == set() and g["onnxrep.tables"] == set() and g["onnxrep.report"] == set()
    algebra = {d for m, deps in g.items() if m.startswith("onnxrep.algebra") for d in deps}
    assert all(d.startswith("onnxrep.algebra") for d in algebra), algebra
    verification_users = {m for m, deps in g.items() if any(d.startswith("onnxrep.verification") for d in deps)
                          and not m.startswith("onnxrep.verification")}
    assert verification_users <= {"onnxrep", "onnxrep.cli", "onnxrep.pipeline", "onnxrep.summary",
                                  "onnxrep.int8.measure", "onnxrep.rules.border_fill"}, verification_users


def test_rules_folder_holds_rules_and_their_helpers_in_subpackages():
    """Every module at the top of ``rules/`` defines exactly one rule; helpers live in subpackages."""
    from onnxrep.rule import Rule
    import importlib
    import inspect

    for path in sorted((ROOT / "onnxrep" / "rules").glob("*.py")):
        if path.name == "__init__.py":
            continue
        module = importlib.import_module(f"onnxrep.rules.{path.stem}")
        rules = [c for _, c in inspect.getmembers(module, inspect.isclass)
                 if issubclass(c, Rule) and c.__module__ == module.__name__]
        assert len(rules) == 1, (path.name, rules)

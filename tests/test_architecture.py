"""The package's shape: imports go one way (no module imports another that imports it back, even inside a
function), and importing vaefail changes nothing global."""

from __future__ import annotations

import ast
from pathlib import Path

import vaefail

SRC = Path(vaefail.__file__).parent


def _module_graph() -> dict[str, set[str]]:
    """Every ``import``/``from ... import`` of every module (top level and inside functions alike)."""
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    graph = _module_graph()
    assert len(graph) > 30  # the walk found the package
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_data_flows_one_way():
    """Benchmarks know nothing of models, objectives nothing of training, training nothing of metrics."""
    graph = _module_graph()

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for w in graph[todo.pop()]:
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    def reaches(start: str, *prefixes: str) -> set[str]:
        return {m for m in reach(start) if m.startswith(prefixes)}

    assert not reaches("vaefail.benchmarks", "vaefail.models", "vaefail.training")
    assert not reaches("vaefail.objectives", "vaefail.training", "vaefail.protocol")
    assert not reaches("vaefail.protocol", "vaefail.metrics", "vaefail.experiments")


def test_benchmark_scripts_import_no_cycle():
    scripts = Path(__file__).resolve().parents[1] / "benchmarks"
    names = {p.stem for p in scripts.glob("*.py")}
    graph = {}
    for path in scripts.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                deps.add(node.module)
        graph[path.stem] = deps & names - {path.stem}
    assert "timing" in graph["run"]
    assert _cycles(graph) == []

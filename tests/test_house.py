"""The package's shape: no import circles (between modules or between subpackages), no module over
500 lines, a root of faces only.

Imports are read with ast (every `import` and `from … import`, at any depth: a lazy import
inside a function still ties two modules), so a circle cannot come back unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "regablate"
MAX_LINES = 500


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that `path` imports (a name imported from a package counts as
    its submodule when there is one, else as the package)."""
    here = _module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _package_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Imports between modules, without a package's own `__init__` re-exporting its children
    (regablate.cli re-exports main) and without a child importing its parent package."""
    return {v: {w for w in ws if not v.startswith(w + ".") and not w.startswith(v + ".")}
            for v, ws in graph.items()}


def test_the_package_has_no_import_circles():
    modules = _modules()
    graph = _package_edges({name: _imports(path, modules) for name, path in modules.items()})
    assert _cycles(graph) == []


def _subpackage(module: str) -> str:
    """`regablate.report.collect` -> `report`; a module at the root (`regablate.nn`) is its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def test_the_subpackages_import_one_way():
    """No two subpackages import each other, directly or round a longer circle: each arrow is one
    call and nothing goes back upstream."""
    modules = _modules()
    graph: dict[str, set[str]] = {_subpackage(name): set() for name in modules}
    for name, path in modules.items():
        graph[_subpackage(name)] |= {_subpackage(m) for m in _imports(path, modules)} - {_subpackage(name)}
    assert _cycles(graph) == []


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("folder", ["regablate", "hydra_plugins", "experiments", "benchmarks"])
def test_no_module_is_over_500_lines(folder):
    long = {str(p.relative_to(REPO)): n for p in (REPO / folder).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_the_root_holds_only_faces():
    assert sorted(p.name for p in PACKAGE.glob("*.py")) == [
        "__init__.py", "__main__.py", "errors.py", "nn.py"]

"""The project's modules import each other without a cycle.

The graph is built from the source (ast), not by importing: an edge A -> B for every `import B` / `from B import x`
anywhere in A (module level or inside a function: an import moved into a function to dodge a cycle still counts),
restricted to the project's packages. `from pkg import name` counts as an edge to pkg.name when that is a module,
else to pkg (the package's __init__).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("diffusion", "ui", "train", "bench")


def module_name(path: Path, root: Path = ROOT) -> str:
    """a/b/c.py -> "a.b.c"; a/b/__init__.py -> "a.b"."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT, packages=PACKAGES) -> dict[str, Path]:
    """{dotted module name: file} for every .py file under the packages."""
    return {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))
            if not any(part.startswith(".") or part == "build" for part in p.relative_to(root).parts)}


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module an ImportFrom names (relative imports resolved against `module`, a file's dotted name;
    a package's __init__ passes "pkg.__init__")."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[: -node.level]       # level 1: the package holding `module`
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the project modules it imports}."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        name_for_relative = name + ".__init__" if path.name == "__init__.py" else name
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name_for_relative, node)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:      # `import a.b.c` of a non-module: its nearest module
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(cycles)


def test_find_cycles_reports_each_cycle_once():
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": set(), "d": {"e"}, "e": {"f"}, "f": {"d"}, "g": {"g"}}
    assert find_cycles(graph) == [["a", "b"], ["d", "e", "f"]]


def test_import_graph_sees_function_local_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .a import x\n")
    (pkg / "a.py").write_text("def f():\n    from pkg import b\n    return b\n")
    (pkg / "b.py").write_text("from . import a\nimport pkg.a\n")
    modules = {module_name(p, tmp_path): p for p in sorted(pkg.rglob("*.py"))}
    graph = import_graph(modules)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"]]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_has_modules_in_the_graph(package):
    graph = import_graph(project_modules())
    assert sum(name.startswith(package + ".") for name in graph) >= 3


def test_no_import_cycles():
    cycles = find_cycles(import_graph(project_modules()))
    assert not cycles, "import cycles (each a set of modules that import each other): " + "; ".join(
        " <-> ".join(c) for c in cycles)

"""The import graph of the project's packages, read from the source (no module is imported).

Data flows one way (docs/architecture.md, STYLE.md): ``plugin`` calls ``rewriters`` and
``indexers``; those two never import ``plugin`` nor each other, and no module imports itself
back through others. Every ``import`` / ``from … import`` counts, at the top of a module or
inside a function: a function-level import that closes a cycle only moves the failure from
import time to the first call. Modules stay small enough to read in one sitting.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plugin", "rewriters", "indexers")
SIZED = (*PACKAGES, "bench")  # folders whose modules are held to MAX_LINES
MAX_LINES = 450


@dataclass(frozen=True)
class Edge:
    src: str  # importing module, dotted
    dst: str  # imported project module, dotted
    where: str  # path:line of the import statement

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst} ({self.where})"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> source file, for every module under ``packages``."""
    out = {}
    for pkg in packages:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            out[_module_name(path)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST):
    """Every Import/ImportFrom under ``node`` (any depth), except the body of an
    ``if TYPE_CHECKING:`` block: those imports never run, so they create no runtime edge and
    cannot close an import cycle (their ``else:`` branch does run and is kept)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    yield sub
                yield from _import_nodes(sub)
        else:
            yield from _import_nodes(child)


def _longest_known(name: str, modules: dict[str, Path]) -> str | None:
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
             modules: dict[str, Path]) -> list[str]:
    """The project modules one import statement loads (``from pkg import sub`` names the
    submodule when ``sub`` is one, else the package itself)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - (node.level - 1)]
            prefix = ".".join([*base, node.module] if node.module else base)
        else:
            prefix = node.module or ""
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix
                 for a in node.names]
    found = (_longest_known(n, modules) for n in names)
    return sorted({t for t in found if t is not None})


def import_graph(modules: dict[str, Path] | None = None) -> list[Edge]:
    """Every edge between project modules (self-imports of a package's own name dropped)."""
    modules = project_modules() if modules is None else modules
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node in _import_nodes(tree):
            for dst in _targets(node, name, is_package, modules):
                if dst != name:
                    edges.append(Edge(name, dst, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return edges


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (the graph can be deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    out.append(sorted(comp))
    return out


def _shortest_cycle(start: str, graph: dict[str, set[str]], within: set[str]) -> list[str]:
    """The shortest path start -> … -> start inside one component (breadth first)."""
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & within):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a component but on no cycle")


def import_cycles(edges: list[Edge]) -> list[list[str]]:
    """One cycle (as a module path, first module repeated at the end) per strongly connected
    component of more than one module."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.src, set()).add(e.dst)
        graph.setdefault(e.dst, set())
    return [_shortest_cycle(comp[0], graph, set(comp))
            for comp in _strongly_connected(graph) if len(comp) > 1]


def _package(module: str) -> str:
    return module.split(".")[0]


# --- the graph reader itself, on a constructed tree -------------------------------------------

def test_graph_reader_on_a_small_tree(tmp_path, monkeypatch):
    files = {
        "a/__init__.py": "",
        "a/x.py": "from . import y\nfrom .y import thing\n",
        # a function-level import is an edge; a TYPE_CHECKING one is not
        "a/y.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .z import Z\n"
                   "def f():\n    import a.x\n"),
        "a/z.py": "from .sub import w\nimport os\n",
        "a/sub/__init__.py": "",
        "a/sub/w.py": "from ..z import q\nfrom .. import x\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    edges = import_graph(project_modules(("a",)))
    assert {(e.src, e.dst) for e in edges} == {
        ("a.x", "a.y"), ("a.y", "a.x"), ("a.z", "a.sub.w"), ("a.sub.w", "a.z"),
        ("a.sub.w", "a.x")}
    assert sorted(import_cycles(edges)) == [["a.sub.w", "a.z", "a.sub.w"], ["a.x", "a.y", "a.x"]]


# --- the project -------------------------------------------------------------------------------

def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, "import cycles (module path, first module repeated):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_rewriters_and_indexers_do_not_import_each_other():
    bad = [e for e in import_graph()
           if {_package(e.src), _package(e.dst)} == {"rewriters", "indexers"}]
    assert not bad, "imports between rewriters and indexers:\n" + "\n".join(map(str, bad))


def test_libraries_do_not_import_plugin():
    bad = [e for e in import_graph()
           if _package(e.src) in ("rewriters", "indexers") and _package(e.dst) == "plugin"]
    assert not bad, "rewriters/indexers import plugin:\n" + "\n".join(map(str, bad))


def test_modules_are_short():
    long = sorted((n, str(p.relative_to(ROOT))) for p in
                  (q for pkg in SIZED for q in (ROOT / pkg).rglob("*.py"))
                  if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES)
    assert not long, f"modules over {MAX_LINES} lines:\n" + "\n".join(
        f"{path}: {n}" for n, path in reversed(long))

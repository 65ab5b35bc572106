"""The package layout keeps its promises: networks import no I/O, functions stay readable."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETS = sorted(p for p in (ROOT / "model" / "nets").glob("*.py") if p.name != "__init__.py")


def test_nets_import_no_io_or_pipeline():
    # A fresh interpreter: modules imported by other tests must not hide an import.
    mods = [f"model.nets.{p.stem}" for p in NETS]
    code = ("import importlib, json, sys\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "print(json.dumps(sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('h5py', 'cv2', 'pipeline'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert len(mods) >= 5


def test_nets_facts_match_the_pipeline():
    from model.nets.regions import ALL_AUS, DEFAULT_FACE_CENTER, EVAL_AUS
    from pipeline.datasets.disfa import facts as disfa
    from pipeline.alignment import DEFAULT_NOSE_FRACTION

    assert ALL_AUS == disfa.ALL_AUS and EVAL_AUS == disfa.EVAL_AUS
    assert tuple(DEFAULT_FACE_CENTER) == tuple(DEFAULT_NOSE_FRACTION)


def long_functions(folder: Path, limit: int) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    return found


@pytest.mark.parametrize("folder", ["model", "pipeline"])
def test_no_function_over_80_lines(folder):
    assert long_functions(ROOT / folder, 80) == []



def test_no_function_in_model_over_60_lines():
    # #24: a function reads in one screen. pipeline/ keeps the 80-line rule above until its
    # reshape (tests of its own) tightens it.
    assert long_functions(ROOT / "model", 60) == []


def long_files(folder: Path, limit: int) -> dict[str, int]:
    """Files of ``folder`` over ``limit`` lines, with their lengths."""
    return {str(p.relative_to(ROOT)): n for p in sorted(folder.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > limit}


def test_no_file_in_model_over_500_lines():
    # #24: one idea a file. pipeline/'s own layout test holds the same rule for pipeline/.
    assert long_files(ROOT / "model", 500) == {}


# -- no import circle ------------------------------------------------------------------------

def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Nodes under ``if TYPE_CHECKING:``: never imported at run time, so never a circle."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def imported_names(module: str, path: Path, type_checking: bool = False) -> set[str]:
    """Every name ``module`` (at ``path``) imports, absolute, at module level or inside
    functions (a lazy import only hides a circle until the function runs); ``from pkg import x``
    gives ``pkg`` and ``pkg.x``. ``type_checking``: also those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    skipped, found = set() if type_checking else _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)  # ``from pkg import mod`` imports pkg.mod too:
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules (``known``) that ``module`` imports."""
    return {m for m in imported_names(module, path) if m in known and m != module}


def import_graph(folders: tuple[str, ...] = ("model", "pipeline")) -> dict[str, set[str]]:
    files = {module_name(p): p for f in folders for p in sorted((ROOT / f).rglob("*.py"))}
    return {m: _imported(m, p, set(files)) for m, p in files.items()}


def import_groups(graph: dict[str, set[str]]) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or round a circle
    (Tarjan's strongly connected components, iteratively), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


def _cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A path start -> ... -> start inside one strongly connected group (breadth first)."""
    start, members = group[0], set(group)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if child not in came_from:
                    came_from[child] = node
                    nxt.append(child)
        frontier = nxt
    return group


def test_no_import_circle_among_model_and_pipeline_modules():
    graph = import_graph()
    assert len(graph) > 100 and graph["model.engine.trainer"]  # the walk found the modules
    groups = import_groups(graph)
    circles = [" -> ".join(_cycle_in(g, graph)) for g in groups]
    assert circles == [], "import circles: " + "; ".join(circles)


def test_the_import_walk_reports_a_circle_and_sees_lazy_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "e"}, "d": {"a"}, "e": set()}
    assert import_groups(graph) == [["a", "b", "c"]]
    assert _cycle_in(["a", "b", "c"], graph) == ["a", "b", "c", "a"]
    assert import_groups({"a": {"b"}, "b": set()}) == []
    # a lazy import inside a function counts; one under TYPE_CHECKING does not
    lazy = ast.parse("def f():\n    from .ranking import x\n")
    assert not _type_checking_only(lazy)
    typed = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .card import C\n")
    assert len(_type_checking_only(typed)) >= 2
    metrics = ROOT / "model" / "evaluation" / "metrics.py"
    assert "model.evaluation.ranking" in _imported("model.evaluation.metrics", metrics,
                                                   {"model.evaluation.ranking"})

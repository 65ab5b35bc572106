"""``pipeline/`` shows its parts: the dataset adapters, alignment and shards apart from the
synthetic twin, files and functions short enough to read, and the commands still run."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipeline"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
COMMANDS = ["pipeline.align", "pipeline.synth", "pipeline.build_folds", "pipeline.bench"]
# The real pipeline: reading a release, aligning it, writing and reading shards, folds.
REAL = ["pipeline/datasets", "pipeline/aligner", "pipeline/align.py", "pipeline/alignment.py",
        "pipeline/origin.py", "pipeline/shards.py", "pipeline/shard_checks.py",
        "pipeline/build_folds.py"]


def _sources() -> list[Path]:
    return sorted(PIPELINE.rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at the top or inside a function."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """pipeline module -> the pipeline modules it imports (``from pkg import mod`` as ``pkg.mod``)."""
    modules = {_module_name(p): p for p in _sources()}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for imported in _imported_modules(path):
            if imported in modules:
                deps.add(imported)
            elif imported.rpartition(".")[0] in modules:  # ``from pkg import name``
                deps.add(imported.rpartition(".")[0])
        graph[name] = deps - {name}
    return graph


def test_no_import_circle_in_pipeline():
    graph, circles, state = _import_graph(), [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module], stack = "open", stack + [module]
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":  # on the stack: a way back to itself
                circles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert circles == []
    assert len(graph) > 30  # the walk saw the package


def test_no_pipeline_file_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p in _sources()
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}


def test_no_pipeline_function_over_60_lines():
    long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length})")
    assert long == []


def test_the_parts_are_packages():
    for part in ("datasets", "datasets/disfa", "twin", "aligner"):
        assert (PIPELINE / part / "__init__.py").is_file(), part
    # The flat modules the parts replaced are gone (no second copy to drift).
    for old in ("release.py", "disfa.py", "synth_face.py"):
        assert not (PIPELINE / old).exists(), old


def test_real_pipeline_never_imports_the_twin_in_source():
    files = [p for entry in REAL for p in ([ROOT / entry] if entry.endswith(".py")
                                           else sorted((ROOT / entry).rglob("*.py")))]
    assert len(files) >= 15
    offending = {str(p.relative_to(ROOT)): sorted(m for m in _imported_modules(p)
                                                  if m.startswith(("pipeline.twin",
                                                                   "pipeline.synth")))
                 for p in files}
    assert {k: v for k, v in offending.items() if v} == {}


def test_real_pipeline_never_imports_the_twin_when_run():
    # A fresh interpreter, so that modules other tests imported cannot hide an import; the
    # shard stamp (data_origin) is called too, since it is where the twin's marker is read.
    code = ("import importlib, json, sys, tempfile\n"
            "for m in ['pipeline.datasets.disfa', 'pipeline.aligner.job', 'pipeline.aligner.plan',"
            " 'pipeline.aligner.summary', 'pipeline.align', 'pipeline.build_folds']:\n"
            "    importlib.import_module(m)\n"
            "from pipeline.origin import data_origin\n"
            "data_origin(tempfile.gettempdir())\n"
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('pipeline.'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert "pipeline.aligner.job" in loaded
    assert [m for m in loaded if m.startswith(("pipeline.twin", "pipeline.synth"))] == []


def test_disfa_adapter_provides_subjects_frames_labels_landmarks():
    from pipeline.datasets import disfa

    for name in ("discover", "read_labels", "read_landmarks", "read_error_log", "ReleaseError",
                 "SubjectFiles"):
        assert callable(getattr(disfa, name)), name
    assert len(disfa.facts.SUBJECTS) == 27 and disfa.facts.FRAMES_PER_SUBJECT == 4845
    assert disfa.facts.BAD_FRAMES_CSV.is_file()  # the manifests are still found from the package


@pytest.mark.parametrize("name", COMMANDS)
def test_python_m_names_still_run(name):
    done = subprocess.run([sys.executable, "-m", name, "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"python -m {name}" in done.stdout

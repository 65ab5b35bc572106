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


def _long_functions(folder: Path, limit: int) -> list[str]:
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
    assert _long_functions(ROOT / folder, 80) == []


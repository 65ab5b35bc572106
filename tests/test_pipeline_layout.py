"""``pipeline/`` shows its parts: the dataset adapters, alignment and shards apart from the
synthetic twin, files and functions short enough to read, and the commands still run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_layout import (import_graph, import_groups, imported_names, long_files,
                         long_functions, module_name)

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "pipeline"
MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 60
COMMANDS = ["pipeline.align", "pipeline.synth", "pipeline.build_folds", "pipeline.bench"]
# The real pipeline: reading a release, aligning it, writing and reading shards, folds.
REAL = ["pipeline/datasets", "pipeline/aligner", "pipeline/align.py", "pipeline/alignment.py",
        "pipeline/origin.py", "pipeline/shards.py", "pipeline/shard_checks.py",
        "pipeline/build_folds.py"]


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, at the top, inside a function or for
    type checking only."""
    return imported_names(module_name(path), path, type_checking=True)


def test_no_import_circle_in_pipeline():
    graph = import_graph(("pipeline",))
    assert import_groups(graph) == []
    assert len(graph) > 30  # the walk saw the package


def test_no_pipeline_file_over_500_lines():
    assert long_files(PIPELINE, MAX_FILE_LINES) == {}


def test_no_pipeline_function_over_60_lines():
    assert long_functions(PIPELINE, MAX_FUNCTION_LINES) == []


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

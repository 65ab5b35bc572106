"""The measuring tools live apart from the commands (model/benchmarks/), reached through thin
``python -m`` entry points; the removed re-export shims stay removed, their names at home."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "model" / "benchmarks"
#: python -m name -> the module in model/benchmarks/ whose main it runs
ENTRY_POINTS = {"model.bench": "model.benchmarks.train_bench",
                "model.predict_bench": "model.benchmarks.predict_bench",
                "model.gpu_report": "model.benchmarks.gpu_report.command"}


def _code_lines(path: Path) -> int:
    """Statements outside the docstring, counted by line."""
    tree = ast.parse(path.read_text())
    body = tree.body[1:] if ast.get_docstring(tree) else tree.body
    return sum(node.end_lineno - node.lineno + 1 for node in body)


@pytest.mark.parametrize("name,home", ENTRY_POINTS.items())
def test_entry_points_are_thin_and_run_the_package_main(name, home):
    entry = importlib.import_module(name)
    assert entry.main is importlib.import_module(home).main
    assert _code_lines(Path(entry.__file__)) <= 4, f"{name} holds more than its entry point"


def test_benchmarks_package_stays_readable():
    # a function or file limit for the split GPU report, tighter than test_layout's (80 lines)
    files = sorted(BENCHMARKS.rglob("*.py"))
    assert len(files) >= 10  # train/predict benches, synthetic inputs, the GPU report's parts
    for path in files:
        text = path.read_text()
        assert len(text.splitlines()) <= 500, path
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno + 1 <= 60, f"{path}:{node.name}"


def test_python_m_names_still_run():
    # one interpreter per name: ``python -m`` must find the entry point, and --help exits 0
    for name in ENTRY_POINTS:
        out = subprocess.run([sys.executable, "-m", name, "--help"], cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, f"{name}: {out.stderr[-500:]}"
        assert f"python -m {name}" in out.stdout


def test_removed_shims_are_gone_and_their_names_import_from_home():
    import model

    # the package's own folder, not find_spec: an editable install elsewhere may answer that
    present = {m.name for m in pkgutil.iter_modules(model.__path__)}
    assert {"senet", "tranet"}.isdisjoint(present), "a shim is back; CHANGELOG says removed"
    assert {"bench", "predict_bench", "gpu_report", "benchmarks", "nets"} <= present
    from model.nets.senet import SENet, senet50
    from model.nets.tranet import (PRESETS, REGION_OF_AU, REGIONS, VARIANTS, TRANet,
                                   TRANetConfig, build_model, hard_masks)
    from model.weights.vggface2 import (NumpyOnlyUnpickler, UnsafePickleError, WeightsError,
                                        load_backbone_weights, load_vggface2_weights,
                                        read_weight_file, remap_timm_legacy_names)

    assert all(callable(f) for f in (SENet, senet50, TRANet, TRANetConfig, build_model,
                                     hard_masks, NumpyOnlyUnpickler, load_backbone_weights,
                                     load_vggface2_weights, read_weight_file,
                                     remap_timm_legacy_names))
    assert issubclass(UnsafePickleError, Exception) and issubclass(WeightsError, Exception)
    assert PRESETS and REGION_OF_AU and REGIONS and VARIANTS
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert "`model.senet`" in changelog and "`model.tranet`" in changelog

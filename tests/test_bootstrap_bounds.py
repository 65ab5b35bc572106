"""Bootstrap counts are bounded before any work (issue #22, item 5): on the command line while
parsing, and in the bootstrap functions before their replicate arrays are allocated."""
import tracemalloc

import numpy as np
import pytest

from model.evaluation.intensity import bootstrap_intensity
from model.evaluation.paired import paired_runs
from model.evaluation.statistics import (MAX_BOOTSTRAP_BYTES, MAX_RESAMPLES, bootstrap_folds,
                                         confidence_intervals)

pytestmark = pytest.mark.reliability  # docs/reliability.md names every test here


def counts(subjects: int = 3, aus: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 50, size=(subjects, aus, 4)).astype(np.float64)


@pytest.mark.parametrize("command", ["model.evaluate", "model.crossval"])
@pytest.mark.parametrize("option, value", [("--bootstrap", "100000000"), ("--bootstrap", "-1"),
                                           ("--bootstrap-seed", "-3"), ("--folds", "0")])
def test_bootstrap_options_refused_while_parsing(tmp_path, capsys, command, option, value):
    """Refused by argparse (exit 2, naming the option and its range) before any checkpoint,
    manifest or shard is opened: none of the paths given exist."""
    import importlib

    if option == "--folds" and command == "model.evaluate":
        option = "--fold"
    main = importlib.import_module(command).main
    missing = str(tmp_path / "missing")
    argv = (["--checkpoint", missing, "--shards", missing, "--manifest", missing]
            if command == "model.evaluate"
            else ["--shards", missing, "--manifest", missing, "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as info:
        main([*argv, option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and "must be " in err
    assert not (tmp_path / "out").exists()


def test_evaluate_workers_bounded(tmp_path, capsys):
    from model.engine.data import MAX_WORKERS
    from model.evaluate import main

    missing = str(tmp_path / "missing")
    with pytest.raises(SystemExit) as info:
        main(["--checkpoint", missing, "--shards", missing, "--manifest", missing,
              "--workers", str(MAX_WORKERS + 1)])
    assert info.value.code == 2 and f"argument --workers: must be 0..{MAX_WORKERS}" in \
        capsys.readouterr().err


def test_max_resamples_still_parses_and_runs():
    """The documented maximum is accepted and works on a fold of DISFA's size."""
    ci = confidence_intervals([counts(9, 8)], resamples=MAX_RESAMPLES, seed=1)
    assert ci["resamples"] == MAX_RESAMPLES and len(ci["f1"]) == 8


@pytest.mark.parametrize("resamples", [0, -1, MAX_RESAMPLES + 1, 2.5, True])
def test_bootstrap_functions_refuse_bad_resamples(resamples):
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_folds([counts()], resamples)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_intensity([np.ones((3, 12, 7))], resamples)
    with pytest.raises(ValueError, match="resamples"):
        paired_runs([[counts()]], [[counts(seed=1)]], resamples)


def test_memory_is_checked_before_allocating():
    """Many subjects x AUs at the maximum resamples would take gigabytes: a ValueError that
    says how many resamples fit, raised with almost nothing allocated."""
    big = counts(subjects=2000, aus=12)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"MiB.*use at most \d+ resamples"):
            bootstrap_folds([big], MAX_RESAMPLES)
        with pytest.raises(ValueError, match="MiB"):
            bootstrap_intensity([np.ones((2000, 12, 7))], MAX_RESAMPLES)
        with pytest.raises(ValueError, match="MiB"):
            paired_runs([[big]] * 3, [[big]] * 3, MAX_RESAMPLES)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MAX_BOOTSTRAP_BYTES / 4

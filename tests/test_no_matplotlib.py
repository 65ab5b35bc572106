"""#25 item 8: a missing plotting library never stops a command: model.train (its plot step),
model.evaluate and model.crossval's heat maps say so once and carry on."""
from __future__ import annotations

import importlib
import logging
import sys

import pytest

from model.evaluation import optional_plots

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """``import matplotlib`` fails (sys.modules entry None), as where it is not installed."""
    for name in list(sys.modules):
        if name.split(".")[0] == "matplotlib" or name == "model.evaluation.plots":
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setattr(optional_plots, "_WARNED", set())
    with pytest.raises(ImportError):
        import matplotlib  # noqa: F401
    yield


def test_training_goes_on_without_matplotlib_with_one_warning(tmp_path, no_matplotlib, caplog):
    from model.train import TrainConfig, train
    from trainer_fixtures import make_dataset

    shards, manifest = make_dataset(tmp_path / "tiny", frames=16, size=32)
    cfg = TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(tmp_path / "r"),
                      preset="small", epochs=2, batches_per_epoch=1, batch_size=4, workers=0,
                      quiet=True, eval_batch_size=16, plot_every=1)
    with caplog.at_level(logging.WARNING, logger="model.train"):
        summary = train(cfg)
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    assert (tmp_path / "r" / "results.json").is_file()
    assert not list((tmp_path / "r").glob("*.png"))
    said = [r.getMessage() for r in caplog.records if "no plots" in r.getMessage()]
    assert len(said) == 1, said  # once a run, not once an epoch


def test_evaluate_and_crossval_import_and_skip_the_heat_map_without_matplotlib(
        tmp_path, no_matplotlib, monkeypatch, caplog):
    for name in ("model.evaluate", "model.engine.crossval_reports"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, undone after
    evaluate = importlib.import_module("model.evaluate")
    reports = importlib.import_module("model.engine.crossval_reports")
    results = [{"fold": 1, "metrics": {"au_ids": [1, 2], "per_subject": {
        "subjects": ["SN001"], "f1": [[0.5, 0.4]], "positives": [[3, 4]]}}}]
    with caplog.at_level(logging.WARNING):
        assert evaluate.write_subject_heatmap(results, tmp_path / "h.png", "t", []) is None
        entries = [{"subject": "SN001", "fold": 1, "n_frames": 5, "f1": [0.5, 0.4],
                    "positives": [3, 4]}]
        assert reports.write_heatmap(entries, [1, 2], tmp_path / "c.png", "t", []) is None
    assert not list(tmp_path.glob("*.png"))
    assert sum("no plots" in r.getMessage() for r in caplog.records) == 2  # one a command


def test_predict_writes_its_csv_and_skips_the_plot_without_matplotlib(tmp_path, no_matplotlib,
                                                                      caplog):
    import cv2
    import numpy as np

    from model.benchmarks.synthetic import astronaut_head, make_untrained_checkpoint
    from model.predict import main

    checkpoint = make_untrained_checkpoint(tmp_path / "m.pt", "small", 64,
                                           au_ids=[1, 2, 4, 6, 9, 12, 25, 26])
    canvas = np.full((320, 400, 3), 120, np.uint8)
    canvas[20:300, 40:320] = astronaut_head()
    cv2.imwrite(str(tmp_path / "one.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    with caplog.at_level(logging.WARNING):
        code = main(["--checkpoint", str(checkpoint), "--images", str(tmp_path / "one.png"),
                     "--out", str(tmp_path / "out"), "--plot", "--no-progress"])
    assert code == 0
    assert list((tmp_path / "out").glob("*.csv")) and not list((tmp_path / "out").glob("*.png"))
    assert sum("no plots" in r.getMessage() for r in caplog.records) == 1

"""Training progress a person can follow: the bar moves every batch without a host sync, a
run-level ETA, one log line an epoch, and the resume/cosine decision."""
from __future__ import annotations

import re

import pytest
import torch

from model.engine import loop as trainer, progress
from model.engine.sync_count import count_host_syncs
from model.benchmarks.gpu_report.config import ReportConfig
from model.benchmarks.gpu_report.trainer_stages import trainer_fixture
from model.train import TrainConfig, train
from trainer_fixtures import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class RecordingBar:
    """Stands in for tqdm: records every update and postfix."""

    made: list["RecordingBar"] = []

    def __init__(self, total, initial=0, **kwargs):
        self.total, self.n, self.updates, self.postfixes = total, initial, [], []
        self.desc = kwargs.get("desc")
        RecordingBar.made.append(self)

    def update(self, n=1):
        self.updates.append(n)
        self.n += n

    def set_postfix(self, values, refresh=True):
        self.postfixes.append(dict(values))

    def close(self):
        pass


def test_the_bar_moves_every_batch_with_no_added_host_sync(monkeypatch):
    monkeypatch.setattr(trainer, "SYNC_EVERY", 3)
    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    RecordingBar.made = []
    run = trainer_fixture(ReportConfig(out="", small=True), torch.device("cpu"), amp=False,
                          batches=6)
    clock = progress.RunClock(epochs=4, batches_per_epoch=6)
    with count_host_syncs(torch.device("cpu")) as syncs:
        assert trainer.train_one_epoch(**run, clock=clock)
    bar, = RecordingBar.made
    # one update a batch (the old loop: one per sync point, 2 here), and still the two sync
    # points' copies only (test_gpu_path's count)
    assert bar.updates == [1] * 6 and bar.n == 6 and bar.desc == "epoch 1/4"
    assert syncs.total == 4, syncs.by_kind
    # the loss appears only once a sync point has copied it; the run-level ETA every batch
    assert "loss" not in bar.postfixes[0] and "loss" in bar.postfixes[-1]
    assert all("run ETA" in p for p in bar.postfixes) and bar.postfixes[-1]["run ETA"] != "?"
    assert clock.position == 6


@pytest.mark.parametrize("device", [
    "cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs CUDA"))])
def test_moving_the_bar_adds_no_host_sync_on_the_device(monkeypatch, device):
    # the same epoch with the per-batch bar move switched off: the sync counts must be equal
    monkeypatch.setattr(trainer, "SYNC_EVERY", 4)
    counts = []
    for moving in (True, False):
        if not moving:
            monkeypatch.setattr(progress.EpochBar, "step", lambda self, batch: None)
        run = trainer_fixture(ReportConfig(out="", small=True), torch.device(device),
                              amp=device == "cuda", batches=8)
        trainer.train_one_epoch(**run)  # warm-up (cuDNN, allocator)
        run["acc"] = trainer.EpochAccumulator()
        with count_host_syncs(torch.device(device)) as syncs:
            trainer.train_one_epoch(**run, clock=progress.RunClock(2, 8))
        counts.append(syncs.total)
    assert counts[0] == counts[1], counts


def test_run_clock_eta_is_measured_time_per_batch_times_the_batches_left():
    now = [100.0]
    clock = progress.RunClock(epochs=5, batches_per_epoch=10, done_epochs=1, done_batches=5,
                              clock=lambda: now[0])
    assert clock.eta() is None  # nothing measured yet in this process
    now[0] += 30.0
    clock.at(epoch=3, batch=5)  # batches 16-25 in 30 s; 25 left of 50
    assert clock.eta() == pytest.approx(30.0 / 10 * 25)
    assert progress.fmt_duration(45) == "45s" and progress.fmt_duration(725) == "12m 05s"
    assert progress.fmt_duration(3 * 3600 + 125) == "3h 02m" and progress.fmt_duration(None) == "?"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), frames=24, size=32)


def _config(data, out, **kw):
    shards, manifest = data
    return TrainConfig(**{**dict(shards=str(shards), manifest=str(manifest), fold=1, out=str(out),
                                 preset="small", epochs=3, batches_per_epoch=2, batch_size=8,
                                 workers=0, quiet=True, lr=0.05, eval_batch_size=32), **kw})


def test_a_log_gets_one_line_an_epoch_with_percent_f1_and_eta(data, tmp_path, caplog, capsys):
    with caplog.at_level("INFO", logger="model.train"):
        train(_config(data, tmp_path / "run", quiet=False))  # pytest's stderr is not a tty
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    pattern = (r"epoch (\d)/3: loss [\d.]+ \| val F1 \d+\.\d\d% \| best F1 \d+\.\d\d% \(epoch \d\)"
               r"( \*)? \| \d+s, elapsed \d+s, ETA (\d+s|\d+m \d\ds)$")
    assert [re.match(pattern, line).group(1) for line in lines] == ["1", "2", "3"], lines
    assert lines[-1].endswith("ETA 0s")
    assert "\r" not in capsys.readouterr().err  # no bar redraws in a log
    assert not [r for r in caplog.records if "could not draw" in r.getMessage()]
    assert (tmp_path / "run" / "per_au_f1.png").is_file()


def test_resume_with_another_epoch_count_is_refused_under_cosine_only(data, tmp_path):
    train(_config(data, tmp_path / "cos", epochs=1, batches_per_epoch=1, lr_schedule="cosine"))
    with pytest.raises(ValueError, match=r"--epochs 2 \(the cosine schedule decays over the "
                                         r"run's 1 epochs.*start a new run"):
        train(_config(data, tmp_path / "x", resume=str(tmp_path / "cos"), epochs=2),
              explicit={"resume", "epochs"})
    train(_config(data, tmp_path / "const", epochs=1, batches_per_epoch=1))
    summary = train(_config(data, tmp_path / "x", resume=str(tmp_path / "const"), epochs=2),
                    explicit={"resume", "epochs"})
    assert summary["epochs_run"] == 2


def test_crossval_says_run_k_of_n(tmp_path, monkeypatch, caplog):
    from model.engine import cross_validation as cv

    trained = []
    monkeypatch.setattr(cv, "run_fold", lambda cfg, fresh=False: trained.append(cfg.out) or
                        {"status": "finished", "fold": cfg.fold})
    base = TrainConfig(shards="s", manifest="m", fold=1, out=str(tmp_path))
    with caplog.at_level("INFO", logger="model.crossval"):
        cv.train_all(base, tmp_path, ["tranet", "senet50"], [1, 2, 3])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("run ")]
    assert [s.split(":")[0] for s in said] == [f"run {k} of 6" for k in range(1, 7)]
    assert said[4].startswith("run 5 of 6: senet50 fold 2") and len(trained) == 6


def test_demo_stages_say_stage_k_of_n(caplog):
    from model.demo import Stopwatch, build_parser, planned_stages
    from model.demo_datasets import resolve_dataset_options

    args = build_parser().parse_args(["--out", "x", "--k", "3", "--folds", "1", "2"])
    resolve_dataset_options(args)  # as run_demo does: the DISFA demo predicts (3 subjects)
    assert planned_stages(args) == 4 + 2 * 2
    args = build_parser().parse_args(["--out", "x", "--k", "3", "--predict-subjects", "0"])
    resolve_dataset_options(args)
    assert planned_stages(args) == 4 + 3
    watch = Stopwatch(planned=3)
    with caplog.at_level("INFO", logger="model.demo"):
        for name in ("synthesize", "align", "folds"):
            with watch.stage(name):
                pass
    said = [r.getMessage() for r in caplog.records]
    assert [s.split(" (")[0] for s in said] == ["== stage 1 of 3: synthesize",
                                                "== stage 2 of 3: align",
                                                "== stage 3 of 3: folds"]
    assert list(watch.stages) == ["synthesize", "align", "folds"]  # the report's keys unchanged


def test_training_plots_have_whole_epoch_ticks_one_panel_an_au_and_the_recipe(tmp_path,
                                                                              monkeypatch):
    import numpy as np

    from model.evaluation import plots

    au_ids = [1, 2, 4, 6, 9, 12, 25, 26]
    rng = np.random.default_rng(0)
    history = [{"epoch": e, "train_loss": 1.0 / e, "best_epoch": 2,
                "eval": {"loss": 0.9 / e, "mean_f1": 0.3, "mean_accuracy": 0.8,
                         "f1": rng.random(8).tolist()}} for e in (1, 2, 3)]
    figures = {}
    real_save = plots._save

    def keep(fig, path):
        fig.canvas.draw()  # tick positions are settled at draw time
        figures[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(plots, "_save", keep)
    plots.plot_history(history, au_ids, tmp_path, notes=["variant tranet; preset small; RECIPE"])
    assert sorted(figures) == ["loss.png", "mean_f1.png", "per_au_f1.png"]
    for name, fig in figures.items():
        shown = [ax for ax in fig.axes if ax.get_visible()]
        for ax in shown:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (name, ticks)
        assert any("RECIPE" in t.get_text() for t in fig.texts), name
        assert (tmp_path / name).is_file()
    panels = [ax for ax in figures["per_au_f1.png"].axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == [f"AU{a}" for a in au_ids]
    assert all(len(ax.get_lines()) <= 2 for ax in panels)  # its F1 curve and the best-epoch line

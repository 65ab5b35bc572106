"""#25 item 5: --eval-every N (evaluations skipped, the last epoch always evaluated, early
stopping counting evaluated epochs) and checkpoints written in the background (the step never
waits for the disk; the write atomic and joined before the run ends or stops)."""
from __future__ import annotations

import errno
import threading

import numpy as np
import pytest
import torch

import model.engine.checkpoint_writer as cw
import model.engine.epochs as epochs_mod
from model.engine.checkpoint import load_checkpoint, save_checkpoint
from model.evaluation.metrics import metrics_from_counts
from model.train import StopRequest, TrainConfig, train
from trainer_fixtures import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), frames=16, size=32)


def config(data, out, **kw) -> TrainConfig:
    shards, manifest = data
    base = dict(shards=str(shards), manifest=str(manifest), fold=1, out=str(out), preset="small",
                epochs=5, batches_per_epoch=1, batch_size=4, workers=0, quiet=True,
                eval_batch_size=16, eval_batches=1, plot_every=1_000_000)
    return TrainConfig(**{**base, **kw})


def _scored(monkeypatch, scores):
    """evaluate_tasks replaced: the epochs it is called at, scores from ``scores`` in turn."""
    called, scores = [], iter(scores)

    def fake(model, loader, device, au_ids, criterion=None, **kw):
        m = metrics_from_counts(np.zeros((len(au_ids), 4), dtype=np.int64), au_ids)
        m.mean_f1 = next(scores)
        called.append(m)
        return m, None
    monkeypatch.setattr(epochs_mod, "evaluate_tasks", fake)
    return called


def test_eval_every_skips_evaluations_and_always_evaluates_the_last_epoch(data, tmp_path,
                                                                          monkeypatch):
    called = _scored(monkeypatch, [0.2, 0.3, 0.4])
    summary = train(config(data, tmp_path / "run", eval_every=2))
    assert len(called) == 3  # epochs 2, 4 and 5 (the last), not 1 and 3
    assert [row["epoch"] for row in summary_history(tmp_path / "run")] == [2, 4, 5]
    assert summary["epochs_run"] == 5 and summary["best_epoch"] == 5
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 5
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 5


def test_early_stopping_counts_evaluated_epochs_only(data, tmp_path, monkeypatch):
    # patience 2 evaluations, one every 2 epochs: best at epoch 2, no better at 4 and 6 -> stop
    _scored(monkeypatch, [0.5, 0.4, 0.3, 0.9])
    summary = train(config(data, tmp_path / "run", epochs=20, eval_every=2, patience=2))
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 6
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2


def summary_history(run_dir):
    return load_checkpoint(run_dir / "last.pt")["history"]


def test_a_background_write_returns_at_once_and_writes_the_state_of_its_call(tmp_path,
                                                                             monkeypatch):
    release, real = threading.Event(), cw.save_checkpoint

    def slow(path, payload):
        assert release.wait(30)
        return real(path, payload)
    monkeypatch.setattr(cw, "save_checkpoint", slow)
    weights = torch.ones(4)
    history = [{"epoch": 1}]
    writer = cw.CheckpointWriter()
    writer.submit([(tmp_path / "last.pt", {"model": {"w": weights}, "history": history})])
    assert writer.busy  # the caller goes on while the file is written
    weights.add_(1)  # training changes the weights and the history meanwhile
    history.append({"epoch": 2})
    second = threading.Thread(target=writer.submit, args=([(tmp_path / "next.pt", {})],))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # one write in flight: the next waits for it
    release.set()
    second.join(30)
    writer.close()
    assert not writer.busy
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["model"]["w"].tolist() == [1.0] * 4 and saved["history"] == [{"epoch": 1}]


def test_a_failed_background_write_leaves_the_old_file_and_is_raised(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 1})

    def crash(obj, f, *args, **kwargs):  # half a file, then the disk is full
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", crash)
    writer = cw.CheckpointWriter()
    writer.submit([(path, {"epoch": 2})])
    with pytest.raises(OSError) as info:
        writer.wait()
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left
    writer.close()  # the error was raised once


def test_training_goes_on_while_last_pt_is_written_and_a_stop_joins_the_write(data, tmp_path,
                                                                              monkeypatch):
    """The epoch-1 write waits until epoch 2 has trained a batch: a synchronous write would
    never see that batch. A stop in epoch 3 leaves a whole last.pt when train() returns."""
    epoch2, real, stop = threading.Event(), cw.save_checkpoint, StopRequest()
    waited = []

    def slow(path, payload):
        if payload["epoch"] == 1 and path.name == "last.pt":
            waited.append(epoch2.wait(20))
        return real(path, payload)

    def on_batch(epoch, batch, loss):
        if epoch == 2:
            epoch2.set()
        if epoch == 3:
            stop.request("test")
    monkeypatch.setattr(cw, "save_checkpoint", slow)
    summary = train(config(data, tmp_path / "run", epochs=4, batches_per_epoch=2),
                    on_batch_end=on_batch, stop=stop)
    assert waited == [True]
    assert summary["status"] == "interrupted"
    assert not [t for t in threading.enumerate() if t.name == cw.THREAD_NAME]  # joined
    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["progress"]["epoch"] == 2 and saved["progress"]["accumulator"]["batches"] == 1

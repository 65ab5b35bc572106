"""model.train: a short run learns, resumes exactly, stops early, and refuses bad input."""
import json
import logging
import os
import signal

import numpy as np
import pytest
import torch

from model.engine.checkpoint import CheckpointError, load_checkpoint
from model.engine.data import DataError
from model.engine.early_stopping import EarlyStopping
from model.train import NonFiniteLossError, StopRequest, TrainConfig, main, train
from trainer_fixtures import make_dataset, write_manifest, write_subject


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tiny"), frames=48, size=32)


def config(data, out, **kw):
    shards, manifest = data
    base = dict(shards=str(shards), manifest=str(manifest), fold=1, out=str(out), preset="small",
                epochs=2, batches_per_epoch=3, batch_size=8, workers=0, quiet=True, lr=0.05,
                eval_batch_size=32)
    base.update(kw)
    return TrainConfig(**base)


# -- early stopping ----------------------------------------------------------------------------

def test_early_stopping_stops_patience_epochs_after_the_best():
    stopper = EarlyStopping(patience=3)
    scores = [0.1, 0.3, 0.2, 0.3, 0.25, 0.29, 0.5]
    stopped_at = None
    for epoch, score in enumerate(scores, start=1):
        stopper.step(score, epoch)
        if stopper.should_stop:
            stopped_at = epoch
            break
    assert stopped_at == 5 and stopper.best_epoch == 2 and stopper.best_score == 0.3
    restored = EarlyStopping(patience=3)
    restored.load_state_dict(stopper.state_dict())
    assert restored.should_stop and restored.best_epoch == 2
    with pytest.raises(ValueError):
        EarlyStopping(patience=0)


def test_training_stops_early_at_the_right_epoch(data, tmp_path, monkeypatch):
    # Scores rise for two epochs then fall: with patience 2 the run ends after epoch 4, best 2.
    import model.engine.epochs as mt
    from model.evaluation.metrics import metrics_from_counts

    scores = iter([0.2, 0.6, 0.5, 0.4, 0.9, 0.9])

    def fake_evaluate(model, loader, device, au_ids, criterion=None, **kw):
        m = metrics_from_counts(np.zeros((len(au_ids), 4), dtype=np.int64), au_ids)
        m.mean_f1 = next(scores) if kw.get("desc", "").startswith("eval") else 0.0
        return m, None  # (occurrence, intensity): an occurrence-only run has no intensity

    monkeypatch.setattr(mt, "evaluate_tasks", fake_evaluate)
    summary = train(config(data, tmp_path / "run", epochs=10, batches_per_epoch=1, patience=2))
    assert summary["epochs_run"] == 4 and summary["best_epoch"] == 2
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2


# -- a short run learns ------------------------------------------------------------------------

def test_short_run_loss_falls_and_f1_beats_chance(data, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="model.train"):
        summary = train(config(data, out, epochs=6, batches_per_epoch=8, batch_size=16,
                               workers=2, select_on="test"))
    # readable logs: one recipe block at the start, epoch lines under 120 characters
    epochs = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(epochs) == 6 and all(len(line) < 120 for line in epochs), epochs
    block = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("run "))
    assert "augmentation: flip" in block and "lr 0.05" in block and "from scratch" in block
    history = json.loads((out / "metrics.json").read_text())
    losses = [e["train_loss"] for e in history["epochs"]]
    # seeds 0-2 (2-core EPYC, torch 2.13): loss ratio 0.34-0.43, F1 over chance +0.31-0.37;
    # lr 1e-9: ratio 1.01, F1 0.13 below chance
    assert losses[-1] < 0.7 * losses[0]
    test = summary["test"]
    rates = np.array(test["positive_rate"])
    chance = np.mean(2 * rates / (1 + rates))  # F1 of always answering "present"
    assert test["mean_f1"] > chance + 0.15, (test["mean_f1"], chance)
    for name in ("config.json", "metrics.csv", "loss.png", "mean_f1.png", "per_au_f1.png",
                 "last.pt", "best.pt", "results.json", "results.md"):
        assert (out / name).is_file(), name
    # the paper's protocol is named in every report
    assert "TEST subjects" in summary["protocol"]
    assert "TEST subjects" in json.loads((out / "results.json").read_text())["protocol"]
    assert "TEST subjects" in (out / "results.md").read_text()
    assert history["select_on"] == "test"
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["train_config"]["momentum"] == 0.9
    assert config_json["train_config"]["weight_decay"] == 0.001
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "drawn_rate_AU9" in header and "natural_rate_AU9" in header and "f1_AU26" in header
    ckpt = load_checkpoint(out / "best.pt")
    assert ckpt["train_config"]["select_on"] == "test" and ckpt["data"]["threshold"] == 3
    # the paper's protocol trains on every non-test subject: the validation subject SN003 too
    assert ckpt["data"]["subjects"] == {"train": ["SN001", "SN002", "SN003"], "val": [],
                                        "test": ["SN004"]}
    assert config_json["frames"]["train"] == 3 * 48
    assert "trained on every other subject" in summary["protocol"]


# -- exact resume ------------------------------------------------------------------------------

@pytest.mark.parametrize("jitter", [{}, dict(jitter_scale=0.05, jitter_degrees=5.0, jitter_shift=0.04)],
                         ids=["paper", "alignment-jitter"])
def test_interrupted_run_resumes_with_the_same_batches_and_weights(data, tmp_path, jitter):
    full_losses, cut_losses = [], []
    # cosine: the LR schedule's position must be restored too
    train(config(data, tmp_path / "full", epochs=2, batches_per_epoch=4, seed=5, lr_schedule="cosine",
                 **jitter),
          on_batch_end=lambda e, b, loss: full_losses.append((e, b, loss)))

    stop = StopRequest()

    def interrupt(epoch, batch, loss):
        cut_losses.append((epoch, batch, loss))
        if (epoch, batch) == (2, 2):
            stop.request("test")

    first = train(config(data, tmp_path / "cut", epochs=2, batches_per_epoch=4, seed=5,
                         lr_schedule="cosine", **jitter),
                  on_batch_end=interrupt, stop=stop)
    assert first["status"] == "interrupted" and "test" not in first
    saved = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert saved["progress"]["epoch"] == 1 and saved["progress"]["accumulator"]["batches"] == 2

    resumed = train(config(data, tmp_path / "ignored", resume=str(tmp_path / "cut")),
                    explicit={"resume"},
                    on_batch_end=lambda e, b, loss: cut_losses.append((e, b, loss)))
    assert resumed["status"] == "finished"
    assert [x[:2] for x in cut_losses] == [x[:2] for x in full_losses]
    np.testing.assert_allclose([x[2] for x in cut_losses], [x[2] for x in full_losses],
                               rtol=1e-6, atol=1e-7)
    a = load_checkpoint(tmp_path / "full" / "last.pt")
    b = load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 8
    ha = json.loads((tmp_path / "full" / "metrics.json").read_text())["epochs"]
    hb = json.loads((tmp_path / "cut" / "metrics.json").read_text())["epochs"]
    assert [r["train_loss"] for r in ha] == pytest.approx([r["train_loss"] for r in hb], rel=1e-6)
    assert [r["eval"]["mean_f1"] for r in ha] == [r["eval"]["mean_f1"] for r in hb]


def test_sigterm_saves_last_and_exits_cleanly(data, tmp_path):
    def send_sigterm(epoch, batch, loss):
        if batch == 1:
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.getsignal(signal.SIGTERM)
    summary = train(config(data, tmp_path / "run"), on_batch_end=send_sigterm)
    assert summary["status"] == "interrupted"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["progress"]["accumulator"]["batches"] == 1
    assert signal.getsignal(signal.SIGTERM) is previous  # handler restored


def test_nan_loss_stops_with_epoch_and_batch(data, tmp_path):
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, batch \d+"):
        train(config(data, tmp_path / "run", lr=1e12, epochs=3, batches_per_epoch=5))


# -- bad input ---------------------------------------------------------------------------------

def test_resume_refuses_another_variant_and_corrupt_checkpoints(data, tmp_path, capsys):
    train(config(data, tmp_path / "run", epochs=1, batches_per_epoch=1))
    with pytest.raises(CheckpointError, match="variant 'tranet', not 'senet50'"):
        train(config(data, tmp_path / "x", resume=str(tmp_path / "run"), variant="senet50"),
              explicit={"resume", "variant"})
    with pytest.raises(ValueError, match="different settings.*--lr"):
        train(config(data, tmp_path / "x", resume=str(tmp_path / "run"), lr=0.5),
              explicit={"resume", "lr"})
    (tmp_path / "run" / "last.pt").write_bytes(b"not a checkpoint")
    assert main(["--resume", str(tmp_path / "run"), "--quiet", "--workers", "0"]) == 2  # bad input
    assert "last.pt: not a readable checkpoint" in capsys.readouterr().err


def test_bad_shards_and_manifests_fail_before_training(data, tmp_path, capsys):
    shards, manifest = data
    spec = json.loads(manifest.read_text())

    def run(m, **kw):
        return train(config((shards, m), tmp_path / "run", **kw))

    missing = write_manifest(tmp_path / "missing.json", shards,
                             [(["SN001", "SN009"], ["SN003"], ["SN004"])], 32)
    with pytest.raises(DataError, match="SN009.*SN009_left.h5 does not exist"):
        run(missing)
    other_aus = write_manifest(tmp_path / "aus.json", shards, [(["SN001"], ["SN003"], ["SN004"])],
                               32, au_ids=[1, 2, 4])
    with pytest.raises(DataError, match=r"SN001_left.h5: AUs .* differ from the manifest"):
        run(other_aus)
    other_size = write_manifest(tmp_path / "size.json", shards, [(["SN001"], ["SN003"], ["SN004"])], 64)
    with pytest.raises(DataError, match="image size 32 differs from the manifest"):
        run(other_size)
    no_val = write_manifest(tmp_path / "noval.json", shards, [(["SN001"], [], ["SN004"])], 32)
    with pytest.raises(DataError, match="no validation subjects"):
        run(no_val)
    with pytest.raises(DataError, match="no training subjects"):
        run(write_manifest(tmp_path / "notrain.json", shards, [([], ["SN003"], ["SN004"])], 32))
    with pytest.raises(DataError, match="no fold 2"):
        train(config((shards, manifest), tmp_path / "run", fold=2))
    # an empty shard makes an empty split
    write_subject(tmp_path / "s2" / "SN005_left.h5", "SN005", 0, 32, 0)
    write_subject(tmp_path / "s2" / "SN001_left.h5", "SN001", 8, 32, 0)
    empty = write_manifest(tmp_path / "empty.json", tmp_path / "s2", [(["SN001"], ["SN005"], ["SN001"])], 32)
    with pytest.raises(DataError, match=r"val subjects \['SN005'\] have no frames"):
        train(config((tmp_path / "s2", empty), tmp_path / "run"))
    # a corrupt shard is named
    corrupt = tmp_path / "s3"
    corrupt.mkdir()
    (corrupt / "SN001_left.h5").write_bytes(b"\x89HDF garbage")
    bad = write_manifest(tmp_path / "bad.json", corrupt, [(["SN001"], ["SN001"], ["SN001"])], 32)
    assert main(["--shards", str(corrupt), "--manifest", str(bad), "--fold", "1", "--out",
                 str(tmp_path / "run"), "--workers", "0", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "SN001_left.h5" in err and "corrupt shard" in err
    assert not (tmp_path / "run" / "last.pt").exists()
    assert spec["image_size"] == 32


def test_evaluation_subset_is_spread_over_every_subject():
    from model.engine.data import evaluation_indices

    idx = evaluation_indices(1000, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 999
    assert np.all(np.diff(idx) >= 110)
    assert len(evaluation_indices(5, 10)) == 5


def test_au_weighted_loss_records_the_training_weights(data, tmp_path):
    out = tmp_path / "run"
    train(config(data, out, epochs=1, batches_per_epoch=1, au_weights=True, eval_batches=1,
                 eval_batch_size=8))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["train_config"]["au_weights"] is True
    weights = np.array(cfg["sampler"]["au_weights"])
    assert weights.sum() == pytest.approx(8.0)
    rates = np.array(cfg["sampler"]["natural_positive_rate"])
    assert np.argmax(weights) == np.argmin(rates)          # the rarest AU weighs most
    assert cfg["frames"]["select"] == 8                     # --eval-batches 1 x 8 frames


# -- one loss for every Table 2 variant -------------------------------------------------------

def test_single_and_three_branch_variants_get_the_same_loss(data, tmp_path):
    # The loss sums the mean BCE of the paper's three AU groups whichever head made the logits;
    # a single-branch variant used to take one mean over 8 AUs (~1/3 of TRA-Net's gradient).
    from model.engine.distributed import DistInfo
    from model.engine.trainer import build_run, load_data

    torch.manual_seed(0)
    logits = torch.randn(16, 8) * 2
    targets = (torch.rand(16, 8) < 0.3).float()
    per_entry = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets,
                                                                     reduction="none")
    expected = sum(per_entry[:, g].mean() for g in ([0, 1, 2], [3, 4], [5, 6, 7]))
    grads = {}
    for variant in ("senet50", "senet50_cbam", "senet50_hm", "tranet"):
        cfg = config(data, tmp_path / variant, variant=variant)
        fold = load_data(cfg, DistInfo(), torch.device("cpu"))
        run = build_run(cfg, DistInfo(), torch.device("cpu"), fold, None)
        x = logits.clone().requires_grad_(True)
        loss = run.criterion(x, targets)
        loss.backward()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6), variant
        grads[variant] = x.grad.norm().item()
    for variant in ("senet50", "senet50_cbam", "senet50_hm"):
        assert grads[variant] == pytest.approx(grads["tranet"], rel=1e-6), grads


# -- what is frozen, and why --------------------------------------------------------------------

def _built(data, tmp_path, **kw):
    from model.engine.distributed import DistInfo
    from model.engine.trainer import build_run, load_data

    cfg = config(data, tmp_path / "run", **kw)
    return build_run(cfg, DistInfo(), torch.device("cpu"), load_data(cfg, DistInfo(),
                                                                      torch.device("cpu")), None)


def test_full_preset_freezes_only_what_pretrained_weights_filled(data, tmp_path, caplog):
    from model.nets.tranet import TRANetConfig, build_model

    caplog.set_level("INFO")
    scratch = _built(data, tmp_path, preset="full")
    assert all(p.requires_grad for p in scratch.model.parameters())    # stem + layer1 train
    assert scratch.freezing["frozen_blocks"] == 0 and scratch.freezing["frozen_parameters"] == 0
    assert scratch.model_config.frozen_blocks == 0
    assert "from scratch" in caplog.text and "images/s" in caplog.text   # the CPU warning
    assert "no pretrained weights" in caplog.text

    weights = tmp_path / "senet50.pt"
    torch.manual_seed(1)
    torch.save(build_model(TRANetConfig(preset="full")).backbone.state_dict(), weights)
    loaded = _built(data, tmp_path, preset="full", pretrained=str(weights))
    frozen = {n for n, p in loaded.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("backbone.conv1.", "backbone.bn1.", "backbone.layer1."))
                          for n in frozen)
    assert loaded.freezing["frozen_blocks"] == 2 and str(weights) in loaded.freezing["reason"]
    assert loaded.freezing["frozen_parameters"] == sum(
        p.numel() for p in loaded.model.parameters() if not p.requires_grad)
    assert loaded.model_config.frozen_blocks == 2


def test_channels_last_option_sets_the_memory_format(data, tmp_path):
    formats = {}
    for flag in (False, True):
        run = _built(data, tmp_path, channels_last=flag)
        seen = []
        conv = run.model.backbone.layer1[0].conv2  # 3x3: its formats differ
        conv.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
        run.model(torch.randn(2, 3, 32, 32))
        cl = torch.channels_last
        formats[flag] = (conv.weight.is_contiguous(memory_format=cl),
                         seen[0].is_contiguous(memory_format=cl) and not seen[0].is_contiguous())
        assert run.model_config.channels_last is flag
    assert formats == {False: (False, False), True: (True, True)}


def test_sync_batchnorm_replaces_every_batchnorm_and_keeps_frozen_blocks(data, tmp_path):
    from model.engine.trainer import with_sync_batchnorm
    from model.nets.tranet import TRANetConfig, build_model

    model = build_model(TRANetConfig(preset="small", image_size=32, frozen_blocks=2)).train()
    names = set(model.state_dict())
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    synced = with_sync_batchnorm(model)
    kinds = {type(m) for m in synced.modules()}
    assert torch.nn.SyncBatchNorm in kinds and torch.nn.BatchNorm2d not in kinds
    assert set(synced.state_dict()) == names          # best.pt still loads into a plain model
    assert {n for n, p in synced.named_parameters() if not p.requires_grad} == frozen
    synced.train()
    assert not synced.backbone.bn1.training and synced.decoder.up1.bn.training


def test_tuning_on_validation_subjects_is_refused_when_they_train():
    # --select-on test trains the validation subjects (paper protocol): none are left to tune on
    with pytest.raises(ValueError, match="validation subjects train too"):
        TrainConfig(shards="", manifest="", fold=1, out="", select_on="test", tune_threshold="val")
    TrainConfig(shards="", manifest="", fold=1, out="", select_on="test", tune_threshold="test")


def test_frames_cached_in_memory_train_exactly_as_frames_read_from_disk(data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="model.train"):
        train(config(data, tmp_path / "cached", epochs=1, batches_per_epoch=3, flip=True,
                     jitter_shift=0.05))
    assert "into memory" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="model.train"):
        train(config(data, tmp_path / "disk", epochs=1, batches_per_epoch=3, flip=True,
                     jitter_shift=0.05, cache_frames_mb=0))
    assert "into memory" not in caplog.text
    a = load_checkpoint(tmp_path / "cached" / "last.pt")
    b = load_checkpoint(tmp_path / "disk" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0)


def test_resume_may_change_the_frame_cache(data, tmp_path):
    """Out of memory on resume: --cache-frames-mb 0 must be accepted, not refused as a recipe
    change."""
    train(config(data, tmp_path / "run", epochs=1, batches_per_epoch=1))
    summary = train(config(data, tmp_path / "x", resume=str(tmp_path / "run"), epochs=2,
                           batches_per_epoch=1, cache_frames_mb=0),
                    explicit={"resume", "epochs", "cache_frames_mb"})
    assert summary["status"] == "finished" and summary["epochs_run"] == 2
    assert load_checkpoint(tmp_path / "run" / "last.pt")["train_config"]["cache_frames_mb"] == 0


def test_selection_warns_of_an_au_without_positive_validation_frames(tmp_path, caplog):
    """Issue 21 item 8: an AU the validation subjects never show has F1 0 for every model, so
    selection is blind to it: the run warns naming the AU and the fold, and config.json lists
    the validation positives per AU (counted here from the shard's own labels)."""
    from pipeline.shards import ShardReader, shard_name
    from trainer_fixtures import FIXTURE_RATES

    no_au9 = list(FIXTURE_RATES)
    no_au9[4] = 0.0                                       # EVAL_AUS[4] is AU9
    shards = tmp_path / "shards"
    for j, subject in enumerate(("SN001", "SN002", "SN003", "SN004")):
        write_subject(shards / shard_name(subject, "left"), subject, 24, 32, j,
                      rates=no_au9 if subject == "SN003" else FIXTURE_RATES)
    manifest = write_manifest(tmp_path / "folds.json", shards,
                              [(["SN001", "SN002"], ["SN003"], ["SN004"])], 32)
    with caplog.at_level(logging.WARNING, logger="model.train"):
        train(config((shards, manifest), tmp_path / "run", epochs=1, batches_per_epoch=1))
    warned = [r.getMessage() for r in caplog.records if "no positive frame" in r.getMessage()]
    assert len(warned) == 1 and "fold 1" in warned[0] and "AU9" in warned[0]
    assert "SN003" in warned[0] and "AU12" not in warned[0]
    selection = json.loads((tmp_path / "run" / "config.json").read_text())["selection"]
    expected = ShardReader(shards / shard_name("SN003", "left")).labels.sum(axis=0)
    assert selection["positives"] == expected.tolist() and selection["no_positive"] == [9]
    assert selection["split"] == "val" and selection["positives_per_subject"] == {
        "SN003": expected.tolist()}

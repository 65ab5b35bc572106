"""--task intensity/both: the intensity head learns, resumes exactly, and old checkpoints still work."""
import json

import numpy as np
import pytest
import torch

from model.engine.checkpoint import load_checkpoint, load_for_inference
from model.engine.evaluator import evaluate_checkpoint
from model.engine.losses import TaskLoss, branch_intensity_loss
from model.engine.sampler import task_frame_weights
from model.train import StopRequest, TrainConfig, train
from trainer_fixtures import (INTENSITY_LEARNING_RUN, intensity_config, make_dataset,
                              make_intensity_dataset)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def visible(tmp_path_factory):
    return make_intensity_dataset(tmp_path_factory.mktemp("visible"), frames=64, size=32)


def config(data, out, **kw):
    return intensity_config(data, out, **{"task": "occurrence", **kw})


def test_both_task_learns_pixel_visible_intensities(visible, tmp_path):
    out = tmp_path / "both"
    summary = train(config(visible, out, task="both", **INTENSITY_LEARNING_RUN))
    icc = summary["test_intensity"]
    assert icc["mean_over"] == [1, 2, 4, 6, 9, 12, 25, 26]
    # Seeds 0-4 on a 2-core EPYC (torch 2.13, numpy 2.4): mean ICC 0.73-0.89, mean 0.81 (a seed
    # may leave one AU unlearned, ~0.12 of the mean); lr 1e-9 (no learning) gives 0.00.
    assert icc["mean_icc"] > 0.5, icc
    assert len(icc["icc"]) == 12 and not any(np.isnan(icc["icc"]))
    assert sorted(icc["undefined"]) == [5, 15, 17, 20]  # never coded in the fixture: reported 0
    assert summary["task"] == "both"
    assert "ICC(3,1)" in (out / "results.md").read_text()
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert "mean_icc" in header and "icc_AU20" in header
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    best = max(history, key=lambda r: r["score"])
    assert best["epoch"] == summary["best_epoch"]
    assert best["score"] == pytest.approx(0.5 * (best["eval"]["mean_f1"]
                                                 + best["eval_intensity"]["mean_icc"]))
    # evaluate reads the head back and reports the same figures on the same frames
    result = evaluate_checkpoint(out / "best.pt", *visible, 1, split="test")
    assert result["intensity"]["icc"] == pytest.approx(icc["icc"], abs=1e-5)
    model, meta = load_for_inference(out / "best.pt")
    assert model.has_intensity and meta["model_config"]["intensity_aus"][0] == 1
    # model.evaluate: the intensity table beside the occurrence table with its intervals
    from model.evaluate import main as evaluate_main
    reports = tmp_path / "evaluated"
    assert evaluate_main(["--checkpoint", str(out / "best.pt"), "--shards", str(visible[0]),
                          "--manifest", str(visible[1]), "--out", str(reports),
                          "--bootstrap", "50", "--allow-seen"]) == 0  # selected on test
    assert "F1 [95% CI]" in (reports / "evaluation_test.md").read_text()
    assert "ICC(3,1)" in (reports / "evaluation_test_intensity.md").read_text()
    assert (reports / "evaluation_test_intensity.csv").read_text().count("\n") > 1


@pytest.mark.parametrize("task", ["occurrence", "intensity", "both"])
def test_every_task_resumes_with_the_same_batches(visible, tmp_path, task):
    full, cut = [], []
    train(config(visible, tmp_path / "full", task=task, seed=3, batches_per_epoch=4),
          on_batch_end=lambda e, b, loss: full.append(loss))
    stop = StopRequest()

    def interrupt(epoch, batch, loss):
        cut.append(loss)
        if (epoch, batch) == (2, 1):
            stop.request("test")

    first = train(config(visible, tmp_path / "cut", task=task, seed=3, batches_per_epoch=4),
                  on_batch_end=interrupt, stop=stop)
    assert first["status"] == "interrupted"
    resumed = train(config(visible, tmp_path / "x", resume=str(tmp_path / "cut")),
                    explicit={"resume"}, on_batch_end=lambda e, b, loss: cut.append(loss))
    assert resumed["status"] == "finished" and resumed["task"] == task
    np.testing.assert_allclose(cut, full, rtol=1e-6, atol=1e-7)
    a, b = (load_checkpoint(tmp_path / d / "last.pt") for d in ("full", "cut"))
    assert set(a["model"]) == set(b["model"])
    assert any("intensity" in k for k in a["model"]) == (task != "occurrence")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)


def test_resume_refuses_another_task(visible, tmp_path):
    stop = StopRequest()
    stop.request("test")
    train(config(visible, tmp_path / "run", task="both"), stop=stop)
    with pytest.raises(ValueError, match="task"):
        train(config(visible, tmp_path / "x", task="occurrence", resume=str(tmp_path / "run")),
              explicit={"resume", "task"})


def test_occurrence_checkpoint_has_no_intensity_and_predicts_as_before(tmp_path):
    data = make_dataset(tmp_path / "d", frames=24, size=32)
    out = tmp_path / "occ"
    train(config(data, out, epochs=1, batches_per_epoch=2))
    state = load_checkpoint(out / "best.pt")
    assert not any("intensity" in k for k in state["model"])
    # a checkpoint written before the field existed (no intensity_aus key) loads strictly
    state["model_config"].pop("intensity_aus")
    model, _ = load_for_inference(out / "best.pt", state=state)
    assert not model.has_intensity
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (2, 8)
    with pytest.raises(ValueError, match="no intensity head"):
        model(x, with_intensity=True)
    result = evaluate_checkpoint(out / "best.pt", *data, 1)
    assert "intensity" not in result


def test_intensity_loss_is_the_sum_of_branch_means_on_the_0_1_scale():
    pred = torch.tensor([[5.0, 0.0, 2.5], [0.0, 5.0, 2.5]])
    target = torch.tensor([[0.0, 0.0, 0.0], [0.0, 5.0, 5.0]])
    groups = [[0, 1], [2]]
    expected = (1.0 + 0 + 0 + 0) / 4 + (0.25 + 0.25) / 2
    assert float(branch_intensity_loss(pred, target, groups)) == pytest.approx(expected)
    loss = TaskLoss("intensity", [[0]], groups)
    logits = torch.zeros(2, 1, requires_grad=True)
    value = loss(logits, torch.zeros(2, 1), pred, target)
    value.backward()
    assert float(value.detach()) == pytest.approx(expected)
    assert logits.grad is not None and float(logits.grad.abs().sum()) == 0.0
    with pytest.raises(ValueError, match="intensity"):
        TaskLoss("both", [[0]], groups)(logits, torch.zeros(2, 1))


def test_sampler_follows_the_task():
    labels = np.array([[1, 0], [0, 0], [0, 0], [0, 1]], dtype=np.uint8)
    intensity = np.zeros((4, 12), dtype=np.uint8)
    intensity[:3, 0] = 4  # AU1 coded in three frames: common
    intensity[1, 3] = 1  # AU5 coded at A in one frame: below the occurrence threshold, still rare
    occ = task_frame_weights("occurrence", labels, intensity)
    reg = task_frame_weights("intensity", labels, intensity)
    both = task_frame_weights("both", labels, intensity)
    assert occ[1] == 1.0 and reg[1] > 1.0 == reg[3]
    np.testing.assert_allclose(both, 0.5 * (occ / occ.mean() + reg / reg.mean()))


class _Intensities:
    """A ShardFrames reduced to its raw intensities (uint8 [frames, 12]), with its lookup."""

    def __init__(self, frames: int) -> None:
        self.intensity = np.random.default_rng(1).integers(0, 6, (frames, 12), dtype=np.uint8)

    def intensities(self, index, au_ids):
        from model.engine.data import ShardFrames
        return ShardFrames.intensities(self, index, au_ids)


@pytest.mark.parametrize("intensity_loss", ["mse", "ordinal"])
def test_intensity_training_steps_make_no_host_syncs(intensity_loss):
    """Issue 16's no-sync training step holds with the intensity loss: the targets are looked up
    on the host and the MSE (or the ordinal loss, whose cutpoints are made on the device) sums
    branch slices, so 'both' makes no more syncs than occurrence."""
    from model.engine import trainer
    from model.engine.precision import choose_precision
    from model.engine.sync_count import count_host_syncs
    from model.nets.regions import ALL_AUS
    from model.nets.tranet import TRANetConfig, build_model

    torch.manual_seed(0)
    model = build_model(TRANetConfig(preset="small", image_size=32, intensity_aus=tuple(ALL_AUS)))
    cfg = TrainConfig(shards="", manifest="", fold=1, out="", preset="small", batch_size=4,
                      batches_per_epoch=3, task="both", quiet=True, intensity_loss=intensity_loss)
    criterion = TaskLoss("both", model.branch_groups, model.intensity_groups,
                         intensity_weight=cfg.intensity_weight, intensity_loss=cfg.intensity_loss)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    precision = choose_precision(torch.device("cpu"), False)
    frames = _Intensities(16)
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    targets = (torch.rand(4, len(model.config.au_ids)) > 0.5).float()
    losses = []
    with count_host_syncs(torch.device("cpu")) as syncs:
        for step in range(3):
            losses.append(trainer.train_step(
                model, criterion, optimizer, precision.grad_scaler(), scheduler, images, targets,
                torch.device("cpu"), cfg, precision, index=torch.arange(4) + 4 * step,
                frames=frames))
    assert syncs.total == 0, syncs.by_kind
    assert all(torch.isfinite(loss) for loss in losses)
    picked = frames.intensities(torch.tensor([3, 0]), [2, 1])
    assert picked.tolist() == frames.intensity[[3, 0]][:, [1, 0]].astype(float).tolist()
    with pytest.raises(ValueError, match="frame index"):
        trainer.train_step(model, criterion, optimizer, precision.grad_scaler(), scheduler,
                           images, targets, torch.device("cpu"), cfg, precision)


@pytest.mark.parametrize("intensity_loss", ["mse", "ordinal"])
def test_single_and_three_branch_variants_train_one_intensity_loss(intensity_loss, tmp_path):
    """Issue 21 item 2: the criterion the trainer builds sums the intensity loss over the AUs'
    region groups for every variant, so a single-branch variant (one head for 12 AUs) gets the
    same loss and gradient as TRA-Net on the same predictions, not one mean a third the size."""
    from types import SimpleNamespace

    from model.engine.losses import region_loss_groups
    from model.engine.trainer import DistInfo, build_run
    from model.nets.regions import ALL_AUS, EVAL_AUS

    data = SimpleNamespace(spec=SimpleNamespace(au_ids=list(EVAL_AUS)), threshold=3,
                           geometry={"image_size": 32, "nose_target": (16.0, 16.0)},
                           au_weights=np.ones(len(EVAL_AUS)))
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, len(EVAL_AUS), generator=gen)
    labels = (torch.rand(6, len(EVAL_AUS), generator=gen) > 0.5).float()
    pred = torch.rand(6, len(ALL_AUS), generator=gen) * 5
    codes = torch.randint(0, 6, (6, len(ALL_AUS)), generator=gen).float()
    seen = {}
    for variant in ("senet50", "senet50_cbam", "tranet"):
        cfg = TrainConfig(shards="", manifest="", fold=1, out=str(tmp_path / variant),
                          variant=variant, preset="small", task="intensity", quiet=True,
                          intensity_loss=intensity_loss, device="cpu")
        run = build_run(cfg, DistInfo(), torch.device("cpu"), data, None)
        assert run.criterion.intensity_groups == region_loss_groups(ALL_AUS)
        p = pred.clone().requires_grad_(True)
        loss = run.criterion(logits, labels, p, codes)
        loss.backward()
        seen[variant] = (float(loss.detach()), float(p.grad.norm()))
    assert seen["senet50"] == pytest.approx(seen["tranet"], rel=1e-6)
    assert seen["senet50_cbam"] == pytest.approx(seen["tranet"], rel=1e-6)


def test_intensity_fixture_tells_a_band_s_aus_apart_by_colour_and_level_by_brightness():
    """At 32 px the small preset's map is 4 x 4, so one band's three marks share a cell: each AU
    of a band lights its own channel, and a higher intensity a brighter mark."""
    from trainer_fixtures import render_intensity

    def lit(k: int, level: int) -> np.ndarray:
        levels = np.zeros(8, dtype=int)
        levels[k] = level
        img = render_intensity(levels, 32, np.random.default_rng(0)).astype(float)
        return img.reshape(-1, 3).max(axis=0) - 80  # brightest pixel per channel over the noise

    for band in ([0, 1, 2], [3, 4], [5, 6, 7]):
        channels = [int(np.argmax(lit(k, 5))) for k in band]
        assert len(set(channels)) == len(band), (band, channels)
        for k in band:
            assert (lit(k, 5) > 0).sum() == 1  # one channel only
            assert lit(k, 5).max() > lit(k, 2).max() > lit(k, 1).max() > 0

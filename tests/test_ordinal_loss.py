"""--intensity-loss ordinal: the all-threshold logistic loss on the scalar intensity head."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from scipy.special import log_expit

from model.engine.config import TrainConfig, recipe_differences
from model.engine.losses import (ORDINAL_TEMPERATURE, TaskLoss, branch_bce_loss,
                                 branch_ordinal_loss)
from model.train import StopRequest, build_parser, config_from_args, train
from trainer_fixtures import INTENSITY_LEARNING_RUN, intensity_config, make_intensity_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread

CUTPOINTS = [0.5, 1.5, 2.5, 3.5, 4.5]


def reference_ordinal_loss(predictions, targets, groups, temperature):
    """Written out with scipy, entry by entry: sum over groups of the group's mean over
    (frame, column) of the mean over cutpoints of the logistic loss."""
    total = 0.0
    for group in groups:
        entries = []
        for b in range(predictions.shape[0]):
            for r in group:
                s, y = float(predictions[b, r]), float(targets[b, r])
                terms = []
                for c in CUTPOINTS:
                    z = (s - c) / temperature
                    terms.append(-log_expit(z) if y > c else -log_expit(-z))
                entries.append(np.mean(terms))
        total += np.mean(entries)
    return total


@pytest.mark.parametrize("temperature", [ORDINAL_TEMPERATURE, 1.0])
def test_ordinal_loss_matches_a_scipy_reference(temperature):
    gen = torch.Generator().manual_seed(5)
    predictions = torch.rand(7, 12, generator=gen, dtype=torch.float64) * 8 - 1.5
    targets = torch.randint(0, 6, (7, 12), generator=gen).to(torch.uint8)
    groups = [[0, 2, 5], [1, 3, 4], [6, 7, 8, 9, 10, 11]]  # non-consecutive columns included
    value = branch_ordinal_loss(predictions, targets, groups, temperature)
    expected = reference_ordinal_loss(predictions.numpy(), targets.numpy(), groups, temperature)
    assert float(value) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    with pytest.raises(ValueError, match="cover"):
        branch_ordinal_loss(predictions, targets, [[0, 1]], temperature)


def entry_gradients(s_values, y, temperature=ORDINAL_TEMPERATURE):
    """d loss / d s of each entry (one frame per prediction; the frame mean only rescales)."""
    s = torch.tensor(s_values, dtype=torch.float64).reshape(-1, 1).requires_grad_(True)
    y = torch.full_like(s, float(y))
    branch_ordinal_loss(s, y.detach(), [[0]], temperature).backward()
    return (s.grad * len(s_values)).flatten()


def test_the_minimum_lies_at_the_coded_intensity():
    # The loss is convex in s: a minimum lies where the gradient changes sign.
    for y in (1, 2, 3, 4):
        below, above = entry_gradients([y - 0.07, y + 0.07], y)
        assert below < 0 < above, (y, below, above)
        # a wider logistic pulls the minimum towards the side with more thresholds
        wide_below, wide_above = entry_gradients([y - 0.5, y + 0.5], y, temperature=1.0)
        assert wide_below < 0 < wide_above
    assert entry_gradients([0.8], 1, temperature=1.0)[0] > 0  # minimum of y=1 below 0.8
    assert entry_gradients([0.4], 1, temperature=2.0)[0] > 0  # ... below 0.4: outside the band
    # 0 and 5 have no threshold on one side: the loss falls all the way to the clip (and beyond)
    grid = np.linspace(-1.0, 6.0, 71)
    assert (entry_gradients(grid, 0) > 0).all()
    assert (entry_gradients(grid, 5) < 0).all()


def test_the_gradient_pushes_the_prediction_towards_the_code():
    rng = np.random.default_rng(3)
    s = rng.uniform(0.0, 5.0, 400)  # the range the prediction is clipped to
    y = rng.integers(0, 6, 400)
    keep = np.abs(s - y) >= 0.1
    grads = torch.stack([entry_gradients([a], b)[0] for a, b in zip(s[keep], y[keep])]).numpy()
    np.testing.assert_array_equal(np.sign(grads), np.sign(s[keep] - y[keep]))
    # descent from an untrained head's 0 ends at the code (clipped, as model.predict writes it)
    for code in range(6):
        pred = torch.zeros(1, 1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.SGD([pred], lr=0.5)
        for _ in range(400):
            optimizer.zero_grad()
            branch_ordinal_loss(pred, torch.full((1, 1), float(code)), [[0]]).backward()
            optimizer.step()
        assert float(pred.detach().clamp(0, 5)) == pytest.approx(code, abs=0.1)


def test_task_loss_adds_the_weighted_ordinal_loss():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=gen)
    labels = (torch.rand(6, 3, generator=gen) > 0.5).float()
    pred, codes = torch.rand(6, 4, generator=gen) * 5, torch.randint(0, 6, (6, 4), generator=gen)
    groups, intensity_groups = [[0, 1], [2]], [[0, 1], [2, 3]]
    loss = TaskLoss("both", groups, intensity_groups, intensity_weight=1.5,
                    intensity_loss="ordinal")
    expected = (branch_bce_loss(logits, labels, groups)
                + 1.5 * branch_ordinal_loss(pred, codes, intensity_groups))
    assert float(loss(logits, labels, pred, codes)) == pytest.approx(float(expected))
    mse = TaskLoss("both", groups, intensity_groups, intensity_weight=1.5)
    assert float(mse(logits, labels, pred, codes)) != pytest.approx(float(expected))
    with pytest.raises(ValueError, match="intensity_loss"):
        TaskLoss("both", groups, intensity_groups, intensity_loss="hinge")


def test_intensity_loss_is_a_recipe_option():
    for command in ("model.train", "model.crossval"):
        parser = build_parser() if command == "model.train" else _crossval_parser()
        args = parser.parse_args(["--shards", "s", "--manifest", "m", "--out", "o",
                                  "--intensity-loss", "ordinal", "--task", "both"]
                                 + (["--fold", "1"] if command == "model.train" else []))
        assert config_from_args(args, fold=1).intensity_loss == "ordinal"
        with pytest.raises(SystemExit):
            parser.parse_args(["--intensity-loss", "l1"])
    with pytest.raises(ValueError, match="intensity_loss"):
        TrainConfig(shards="", manifest="", fold=1, out="", intensity_loss="l1")
    ordinal = TrainConfig(shards="", manifest="", fold=1, out="", task="both",
                          intensity_loss="ordinal")
    mse = dataclasses.replace(ordinal, intensity_loss="mse")
    # a crossval/demo run folder made with the other loss is refused, naming the option
    assert recipe_differences(mse, dataclasses.asdict(ordinal)) == [
        "--intensity-loss 'mse' (run has 'ordinal')"]
    # runs recorded before the option existed were trained with the MSE
    legacy = {k: v for k, v in dataclasses.asdict(mse).items() if k != "intensity_loss"}
    assert recipe_differences(mse, legacy) == []
    assert recipe_differences(ordinal, legacy) == ["--intensity-loss 'ordinal' (run has 'mse')"]


def _crossval_parser():
    from model.crossval import build_parser as crossval_parser
    return crossval_parser()


@pytest.fixture(scope="module")
def visible(tmp_path_factory):
    return make_intensity_dataset(tmp_path_factory.mktemp("visible"), frames=64, size=32)


def config(data, out, **kw):
    return intensity_config(data, out, **{"intensity_loss": "ordinal", **kw})


def test_resume_refuses_another_intensity_loss(visible, tmp_path):
    stop = StopRequest()
    stop.request("test")
    train(config(visible, tmp_path / "run"), stop=stop)
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]
    assert recorded["intensity_loss"] == "ordinal"
    with pytest.raises(ValueError, match="--intensity-loss 'mse' \\(run has 'ordinal'\\)"):
        train(config(visible, tmp_path / "x", intensity_loss="mse", resume=str(tmp_path / "run")),
              explicit={"resume", "intensity_loss"})


def test_both_task_with_the_ordinal_loss_learns(visible, tmp_path):
    """The fixture and schedule of test_intensity_train's MSE run, with the ordinal loss at
    weight 1 (its scale; docs/disfa.md)."""
    summary = train(config(visible, tmp_path / "ord", intensity_weight=1.0,
                           **INTENSITY_LEARNING_RUN))
    icc = summary["test_intensity"]
    # Seeds 0-2 (2-core EPYC, torch 2.13): mean ICC 0.76-0.94, mean F1 0.82-0.96.
    assert icc["mean_icc"] > 0.5, icc
    assert summary["test"]["mean_f1"] > 0.5

"""The weighted random sampler: weights, drawn rates, and exact resumption."""
import itertools

import numpy as np
import pytest

from model.engine import sampler as sampler_module
from model.engine.sampler import (WeightedFrameSampler, au_weights_from_labels, expected_positive_rate,
                           frame_weights)


def exclusive_labels():
    """1000 frames: AU0 positive on 20 (rare), AU1 on 300 (common), AU2 on 100; never together."""
    labels = np.zeros((1000, 3), dtype=np.uint8)
    labels[:20, 0] = 1
    labels[20:320, 1] = 1
    labels[320:420, 2] = 1
    return labels


def test_au_weights_follow_the_peers_formula():
    labels = exclusive_labels()
    w = au_weights_from_labels(labels)
    inv = 1 / np.array([0.02, 0.3, 0.1])
    np.testing.assert_allclose(w, inv / inv.sum() * 3)
    assert w.sum() == pytest.approx(3.0)
    # an AU with no positive training frame does not divide by zero
    labels[:, 2] = 0
    assert np.all(np.isfinite(au_weights_from_labels(labels)))


def test_frame_weight_is_floored_sum_of_positive_au_weights():
    labels = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 1]])
    w = np.array([2.5, 0.3, 0.2])
    np.testing.assert_allclose(frame_weights(labels, w), [1.0, 2.5, 1.0, 3.0])


def test_rare_au_is_drawn_more_often_as_its_weight_says():
    labels = exclusive_labels()
    w = au_weights_from_labels(labels)  # ~[2.31, 0.154, 0.462]: only AU0 beats the floor of 1
    g = frame_weights(labels, w)
    natural = labels.mean(0)
    expected = expected_positive_rate(labels, g)
    # With exclusive AUs the analytic rate is max(1, w_i) * n_i / sum(g): the rare AU's rate is
    # multiplied by its weight over the mean frame weight.
    np.testing.assert_allclose(expected, np.maximum(1, w) * labels.sum(0) / g.sum())
    assert expected[0] / natural[0] == pytest.approx(w[0] / g.mean())
    # A common AU (w_i < 1) is not scaled by w_i: its frames keep the floor weight 1.
    assert w[1] < 1 and expected[1] / natural[1] == pytest.approx(1 / g.mean())
    boost = "max(1, w_i) / mean(g)"  # the module's text says what the code does
    assert boost in " ".join(sampler_module.__doc__.replace("``", "").split())
    sampler = WeightedFrameSampler(g, num_samples=100_000, seed=7)
    index = np.array([i for i, _ in sampler])
    drawn = labels[index].mean(0)
    sigma = np.sqrt(expected * (1 - expected) / len(index))
    assert np.all(np.abs(drawn - expected) < 4 * sigma), (drawn, expected)
    assert drawn[0] > 2 * natural[0]                       # rare AU: 2% -> ~4.4%
    assert drawn[0] / natural[0] > drawn[1] / natural[1]   # common AU gains less (it loses here)


def test_uniform_weights_draw_the_natural_rate():
    labels = exclusive_labels()
    sampler = WeightedFrameSampler(np.ones(len(labels)), num_samples=50_000, seed=1)
    drawn = labels[[i for i, _ in sampler]].mean(0)
    np.testing.assert_allclose(drawn, labels.mean(0), atol=0.01)


def test_flips_are_drawn_with_the_frames():
    flips = [f for _, f in WeightedFrameSampler(np.ones(10), 4000, seed=0)]
    assert 0.45 < np.mean(flips) < 0.55
    assert not any(f for _, f in WeightedFrameSampler(np.ones(10), 100, seed=0, flip=False))


def test_state_resumes_mid_epoch_and_between_epochs():
    weights = np.linspace(0.5, 3, 50)
    ref = WeightedFrameSampler(weights, 40, seed=3)
    epochs = [list(ref) for _ in range(3)]

    run = WeightedFrameSampler(weights, 40, seed=3)
    first = list(run)
    assert first == epochs[0]
    it = iter(run)
    consumed = list(itertools.islice(it, 13))  # a DataLoader would have prefetched more
    state = run.state_dict(consumed=13)

    resumed = WeightedFrameSampler(weights, 40, seed=999)  # seed is overridden by the state
    resumed.load_state_dict(state)
    assert len(resumed) == 27
    assert consumed + list(resumed) == epochs[1]
    assert list(resumed) == epochs[2]

    end_state = WeightedFrameSampler(weights, 40, seed=3)
    list(end_state)
    again = WeightedFrameSampler(weights, 40, seed=0)
    again.load_state_dict(end_state.state_dict())
    assert list(again) == epochs[1]


def test_ranks_draw_different_streams_and_bad_weights_are_refused():
    a = list(WeightedFrameSampler(np.ones(100), 50, seed=1))
    b = list(WeightedFrameSampler(np.ones(100), 50, seed=2))
    assert a != b
    for bad in (np.array([]), np.array([1.0, -1.0]), np.array([0.0, 0.0]), np.array([np.nan])):
        with pytest.raises(ValueError):
            WeightedFrameSampler(bad, 10)
    with pytest.raises(ValueError, match="samples an epoch"):
        WeightedFrameSampler(np.ones(3), 10).load_state_dict(
            WeightedFrameSampler(np.ones(3), 20).state_dict())

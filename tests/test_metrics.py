"""Pooled per-AU F1/accuracy at 0.5 against scikit-learn on random data."""
import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from model.evaluation.metrics import MetricAccumulator, confusion_counts, metrics_from_counts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batches_pooled_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n, k = 517, 8
    rates = rng.uniform(0.02, 0.6, k)
    targets = (rng.random((n, k)) < rates).astype(np.float32)
    logits = rng.normal(0, 2, (n, k)).astype(np.float32) + 1.5 * (targets - 0.5)
    acc = MetricAccumulator(list(range(k)))
    for start in range(0, n, 64):  # pooling over uneven batches must equal one big pool
        acc.update(torch.from_numpy(logits[start:start + 64]), torch.from_numpy(targets[start:start + 64]))
    m = acc.compute()
    pred = (1 / (1 + np.exp(-logits)) >= 0.5).astype(int)
    f1 = [f1_score(targets[:, j], pred[:, j], zero_division=0) for j in range(k)]
    ac = [accuracy_score(targets[:, j], pred[:, j]) for j in range(k)]
    np.testing.assert_allclose(m.f1, f1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m.accuracy, ac, rtol=0, atol=1e-12)
    assert m.mean_f1 == pytest.approx(np.mean(f1), abs=1e-12)
    assert m.mean_accuracy == pytest.approx(np.mean(ac), abs=1e-12)
    assert m.n_frames == n
    np.testing.assert_allclose(m.positive_rate, targets.mean(0), atol=1e-12)


def test_threshold_is_half_inclusive_and_empty_au_scores_zero():
    # logit 0 <-> probability 0.5 counts as positive; an AU never positive nor predicted gets F1 0
    logits = torch.tensor([[0.0, -5.0], [-0.01, -5.0], [3.0, -5.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    counts = confusion_counts(logits, targets)
    assert counts.tolist() == [[1, 1, 0, 1], [0, 0, 3, 0]]  # TP FP TN FN
    m = metrics_from_counts(counts, [1, 2])
    assert m.f1 == [pytest.approx(0.5), 0.0]
    assert m.accuracy == [pytest.approx(1 / 3), 1.0]
    sk = f1_score([1, 1, 0], [1, 0, 1], zero_division=0)
    assert m.f1[0] == pytest.approx(sk)


def test_counts_round_trip_for_distributed_sum():
    a, b = MetricAccumulator([1, 2, 4]), MetricAccumulator([1, 2, 4])
    rng = np.random.default_rng(3)
    for acc in (a, b):
        acc.update(torch.randn(20, 3), torch.from_numpy((rng.random((20, 3)) < 0.3).astype(np.float32)),
                   loss=0.5)
    total = MetricAccumulator([1, 2, 4])
    total.load_counts_tensor(a.counts_tensor() + b.counts_tensor())
    np.testing.assert_array_equal(total.counts, a.counts + b.counts)
    assert total.compute().loss == pytest.approx(0.5) and total.compute().n_frames == 40

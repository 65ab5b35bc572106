"""ICC(3,1), Pearson r and MAE against pingouin / scipy, on random and degenerate inputs."""
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from model.evaluation.intensity import (IntensityAccumulator, intensity_metrics,
                                        mean_intensity_over_folds)

pingouin = pytest.importorskip("pingouin")
from scipy.stats import pearsonr  # noqa: E402


def reference_icc3(x: np.ndarray, y: np.ndarray) -> float:
    n = len(x)
    long = pd.DataFrame({"target": np.tile(np.arange(n), 2), "rater": ["model"] * n + ["coder"] * n,
                         "score": np.concatenate([x, y])})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandas deprecation notes inside pingouin
        table = pingouin.intraclass_corr(long, targets="target", raters="rater", ratings="score")
    table = table.set_index("Type")
    # ICC(3,1): "ICC3" up to pingouin 0.5, "ICC(C,1)" (consistency, single rater) from 0.7.
    return float(table.loc["ICC(C,1)" if "ICC(C,1)" in table.index else "ICC3", "ICC"])


def _random_case(rng, n, k):
    truth = rng.integers(0, 6, size=(n, k)).astype(np.float64)
    pred = np.clip(truth + rng.normal(0, 1.2, size=(n, k)), 0, 5)
    return pred, truth


@pytest.mark.parametrize("seed,n", [(0, 50), (1, 333), (2, 2000)])
def test_matches_pingouin_and_scipy_on_random_data(seed, n):
    rng = np.random.default_rng(seed)
    pred, truth = _random_case(rng, n, 4)
    m = intensity_metrics(pred, truth, [1, 2, 4, 6])
    for j in range(4):
        assert m.icc[j] == pytest.approx(reference_icc3(pred[:, j], truth[:, j]), abs=1e-9)
        assert m.pearson[j] == pytest.approx(pearsonr(pred[:, j], truth[:, j])[0], abs=1e-9)
        assert m.mae[j] == pytest.approx(np.abs(pred[:, j] - truth[:, j]).mean(), abs=1e-12)
    assert m.undefined == []
    assert m.mean_icc == pytest.approx(np.mean(m.icc))


def test_batches_and_ranks_add_up_to_the_whole():
    rng = np.random.default_rng(3)
    pred, truth = _random_case(rng, 500, 3)
    whole = intensity_metrics(pred, truth, [1, 2, 4])
    parts = [IntensityAccumulator([1, 2, 4]) for _ in range(2)]
    for i, chunk in enumerate(np.array_split(np.arange(500), 7)):
        parts[i % 2].update(torch.tensor(pred[chunk]), torch.tensor(truth[chunk]))
    total = parts[0].sums_tensor() + parts[1].sums_tensor()  # what all_reduce_sum does
    parts[0].load_sums_tensor(total)
    merged = parts[0].compute()
    np.testing.assert_allclose(merged.icc, whole.icc, atol=1e-12)
    np.testing.assert_allclose(merged.pearson, whole.pearson, atol=1e-12)
    np.testing.assert_allclose(merged.mae, whole.mae, atol=1e-12)


def test_constant_prediction_gives_zero_like_pingouin_and_no_nan():
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 6, size=(200, 1)).astype(np.float64)
    pred = np.full_like(truth, 1.5)
    m = intensity_metrics(pred, truth, [12])
    assert m.icc[0] == pytest.approx(reference_icc3(pred[:, 0], truth[:, 0]), abs=1e-9)
    assert m.icc[0] == 0.0 and m.pearson[0] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.isnan(pearsonr(pred[:, 0], truth[:, 0])[0])  # why we report 0, not scipy's NaN
    assert m.mae[0] == pytest.approx(np.abs(pred - truth).mean())
    assert m.undefined == [12]


def test_constant_truth_and_both_constant_are_reported_as_zero():
    rng = np.random.default_rng(5)
    truth = np.zeros((100, 2))
    pred = np.stack([rng.uniform(0, 5, 100), np.zeros(100)], axis=1)
    m = intensity_metrics(pred, truth, [9, 26])
    assert m.icc == [0.0, 0.0] and m.pearson == [0.0, 0.0]
    assert m.undefined == [9, 26]
    assert m.icc[0] == pytest.approx(reference_icc3(pred[:, 0], truth[:, 0]), abs=1e-9)
    assert m.mae == pytest.approx([pred[:, 0].mean(), 0.0])
    assert not np.isnan(m.as_dict()["mean_icc"])


def test_predictions_are_clipped_to_the_facs_range_and_perfect_agreement_is_one():
    truth = np.array([[0.0], [1], [3], [5], [2]])
    m = intensity_metrics(truth + np.array([[-3.0], [0], [0], [4], [0]]), truth, [1])
    assert m.icc[0] == pytest.approx(1.0) and m.mae[0] == pytest.approx(0.0)
    assert intensity_metrics(truth, truth, [1], clip=False).pearson[0] == pytest.approx(1.0)


def test_means_over_the_eight_and_over_folds():
    rng = np.random.default_rng(6)
    pred, truth = _random_case(rng, 300, 3)
    m = intensity_metrics(pred, truth, [1, 5, 2], mean_over=[1, 2])
    assert m.mean_icc == pytest.approx((m.icc[0] + m.icc[2]) / 2)
    sub = m.subset([1, 2])
    assert sub.au_ids == [1, 2] and sub.mean_icc == pytest.approx(m.mean_icc)
    other = intensity_metrics(truth, truth, [1, 5, 2], mean_over=[1, 2])
    mean = mean_intensity_over_folds([m.as_dict(), other.as_dict()])
    assert mean["icc"] == pytest.approx([(a + 1) / 2 for a in m.icc])
    assert mean["mean_icc"] == pytest.approx((m.mean_icc + 1) / 2)


# --------------------------------------------------------------------------------------------------
# Per-subject sums and the subject bootstrap of ICC / r / MAE

from model.evaluation.intensity import (bootstrap_intensity, intensity_intervals,  # noqa: E402
                                        intensity_report)
from model.evaluation.statistics import fold_rngs, subject_weights  # noqa: E402


def _subjects(rng, n_subjects, frames, k, noise):
    """Frames of each subject, each with its own bias (what makes subjects differ)."""
    preds, truths = [], []
    for s in range(n_subjects):
        truth = rng.integers(0, 6, size=(frames, k)).astype(np.float64)
        preds.append(np.clip(truth + rng.normal(noise * s / n_subjects, 1.0, (frames, k)), 0, 5))
        truths.append(truth)
    return preds, truths


def _accumulate(preds, truths, aus):
    acc = IntensityAccumulator(aus, subjects=[f"S{i}" for i in range(len(preds))])
    pred, truth = np.concatenate(preds), np.concatenate(truths)
    groups = np.repeat(np.arange(len(preds)), [len(p) for p in preds])
    order = np.random.default_rng(0).permutation(len(pred))  # subjects interleaved in batches
    for chunk in np.array_split(order, 5):
        acc.update(torch.tensor(pred[chunk]), torch.tensor(truth[chunk]), groups=groups[chunk])
    return acc.compute(), intensity_metrics(pred, truth, aus)


def test_per_subject_sums_add_up_to_the_pooled_metrics_and_round_trip():
    rng = np.random.default_rng(7)
    preds, truths = _subjects(rng, 4, 60, 3, noise=1.0)
    per_subject, pooled = _accumulate(preds, truths, [1, 2, 4])
    np.testing.assert_allclose(per_subject.icc, pooled.icc, atol=1e-12)
    np.testing.assert_allclose(per_subject.mae, pooled.mae, atol=1e-12)
    again = type(per_subject).from_dict(per_subject.as_dict())
    assert again.subjects == ["S0", "S1", "S2", "S3"]
    one = intensity_metrics(preds[2], truths[2], [1, 2, 4])
    from model.evaluation.intensity import metrics_from_sums
    np.testing.assert_allclose(metrics_from_sums(np.asarray(again.subject_sums)[2], [1, 2, 4]).icc,
                               one.icc, atol=1e-12)


def test_bootstrap_replicates_equal_recomputing_on_the_drawn_subjects_frames():
    rng = np.random.default_rng(8)
    folds = [_subjects(rng, 5, 40, 2, noise=2.0), _subjects(rng, 3, 50, 2, noise=2.0)]
    sums = [np.asarray(_accumulate(p, t, [1, 2])[0].subject_sums) for p, t in folds]
    icc, r, mae = bootstrap_intensity(sums, resamples=20, seed=3)
    # The naive way: draw the same subjects, stack their frames (twice if drawn twice), recompute.
    naive = np.zeros((3, 20, 2))
    for (preds, truths), stream in zip(folds, fold_rngs(3, len(folds))):
        weights = subject_weights(len(preds), 20, stream)
        for b, w in enumerate(weights):
            pick = np.repeat(np.arange(len(preds)), w)
            m = intensity_metrics(np.concatenate([preds[i] for i in pick]),
                                  np.concatenate([truths[i] for i in pick]), [1, 2])
            naive[:, b] += np.array([m.icc, m.pearson, m.mae]) / len(folds)
    np.testing.assert_allclose(icc, naive[0], atol=1e-9)
    np.testing.assert_allclose(r, naive[1], atol=1e-9)
    np.testing.assert_allclose(mae, naive[2], atol=1e-9)


def test_intervals_hold_the_estimate_and_widen_with_differences_between_subjects():
    rng = np.random.default_rng(9)
    alike = _accumulate(*_subjects(rng, 6, 80, 2, noise=0.0), [1, 2])[0]
    apart = _accumulate(*_subjects(rng, 6, 80, 2, noise=4.0), [1, 2])[0]
    widths = []
    for m in (alike, apart):
        ci = intensity_intervals([m.as_dict()], [1, 2], resamples=500, seed=0)
        for j in range(2):
            assert ci["icc"][j][0] <= m.icc[j] <= ci["icc"][j][1]
            assert ci["mae"][j][0] <= m.mae[j] <= ci["mae"][j][1]
        assert ci["mean_icc"][0] <= m.mean_icc <= ci["mean_icc"][1]
        widths.append(ci["mae"][0][1] - ci["mae"][0][0])
    assert widths[1] > 3 * widths[0]


def test_report_shows_intervals_on_the_mean_row_and_none_for_old_results():
    rng = np.random.default_rng(10)
    folds = [_accumulate(*_subjects(rng, 4, 50, 3, noise=1.0), [1, 2, 4])[0].as_dict()
             for _ in range(2)]
    header, rows, text = intensity_report([(1, folds[0]), (2, folds[1])], [1, 2], "T", "p")
    mean_icc = [r for r in rows if r[0] == "mean" and r[1].startswith("ICC")][0]
    assert mean_icc[1] == "ICC(3,1) [95% CI]" and "[" in mean_icc[-2]
    assert all("[" not in cell for r in rows if r[0] != "mean" for cell in r[2:])
    assert "subject-level bootstrap" in text
    assert "unit resampled: the subject (8 test subjects in all)" in text   # 2 folds x 4
    old = [{k: v for k, v in d.items() if k != "per_subject"} for d in folds]
    _, rows, text = intensity_report([(1, old[0]), (2, old[1])], [1, 2], "T", "p")
    assert all("[" not in cell for r in rows for cell in r[2:])
    assert "bootstrap" not in text

"""Subject-level bootstrap: confidence intervals of pooled frame metrics and paired differences.

DISFA's frames are not independent: a fold's test set is a handful of people, and the frames of
one person move together. The unit of resampling is therefore the *subject*. One bootstrap
replicate draws the fold's test subjects with replacement, pools the frames of the drawn
subjects (a subject drawn twice counts twice), and recomputes the metric exactly as the point
estimate is computed. Because F1 and accuracy depend on the frames only through the confusion
counts, a replicate is a weighted sum of per-subject count vectors: ``weights [B, S] @ counts
[S, K*4]``, so thousands of replicates cost one matrix product.

With several folds (the mean-of-folds convention), each fold's subjects are resampled within
that fold and the replicate's value is the mean of the per-fold values, like the point estimate.
Intervals are percentile intervals. Paired comparisons of two models (their interval, p-value
and training-seed variance) are in ``paired``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import accuracy_from_counts, f1_from_counts

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
#: Most resamples a bootstrap takes (``--bootstrap``'s maximum): 100x the default, far past
#: where percentile intervals stop moving.
MAX_RESAMPLES = 100_000
#: Most memory the replicate arrays of one bootstrap may take (estimated before allocating).
MAX_BOOTSTRAP_BYTES = 256 * 2**20


def check_resamples(resamples: int, subjects: int, columns: int) -> None:
    """A ValueError, before any allocation, if ``resamples`` is not 1..MAX_RESAMPLES or the
    replicate arrays (``[B, subjects]`` draws and a few ``[B, columns]`` float64 arrays, columns
    = values per subject: AUs x counts, x runs for paired) would exceed MAX_BOOTSTRAP_BYTES."""
    if isinstance(resamples, bool) or not isinstance(resamples, (int, np.integer)):
        raise ValueError(f"resamples must be an integer, got {resamples!r}")
    if not 1 <= resamples <= MAX_RESAMPLES:
        raise ValueError(f"resamples must be 1..{MAX_RESAMPLES}, got {resamples}")
    per_replicate = 8 * (int(subjects) + 3 * int(columns))
    if int(resamples) * per_replicate > MAX_BOOTSTRAP_BYTES:
        most = MAX_BOOTSTRAP_BYTES // per_replicate
        raise ValueError(f"{resamples} resamples of {subjects} subjects x {columns} values need "
                         f"about {resamples * per_replicate / 2**20:.0f} MiB, more than the "
                         f"{MAX_BOOTSTRAP_BYTES // 2**20} MiB a bootstrap may take; use at most "
                         f"{most} resamples")


def method_line(resamples: int, seed: int, level: float = DEFAULT_LEVEL,
                subjects: int | None = None) -> str:
    """The line every table with intervals carries: the method, the unit resampled, how many
    of them, and what the interval does not cover."""
    counted = f"{subjects} test subjects in all" if subjects else "test subjects"
    return (f"[{100 * level:.0f}% CI]: subject-level bootstrap, {resamples} resamples of each "
            f"fold's test subjects with replacement (seed {seed}); frames of the drawn subjects "
            "pooled and the metric recomputed (mean over folds per resample); percentile "
            f"interval; unit resampled: the subject ({counted}); not covered: training-seed "
            "variance (one trained model per fold) and subjects outside these folds")


@dataclass
class BootstrapSamples:
    """Per-replicate metrics ``[B, K]`` (per AU) and ``[B]`` (means over AUs)."""

    f1: np.ndarray
    accuracy: np.ndarray

    @property
    def mean_f1(self) -> np.ndarray:
        return self.f1.mean(axis=1)

    @property
    def mean_accuracy(self) -> np.ndarray:
        return self.accuracy.mean(axis=1)


def check_counts(counts: np.ndarray) -> np.ndarray:
    """``counts`` as float ``[subjects, AUs, 4]``; a ValueError names any other shape."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 3 or counts.shape[2] != 4 or counts.shape[0] < 1:
        raise ValueError(f"per-subject counts must be [subjects, AUs, 4], got {counts.shape}")
    return counts


def subject_weights(n_subjects: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``[B, S]`` multiplicities of each subject in each replicate (each row sums to S)."""
    return rng.multinomial(n_subjects, np.full(n_subjects, 1.0 / n_subjects), size=resamples)


def _metrics_of_replicates(weights: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, k, _ = counts.shape
    pooled = (weights @ counts.reshape(s, k * 4)).reshape(-1, k, 4)   # [B, K, 4]
    flat = pooled.reshape(-1, 4)
    f1 = f1_from_counts(flat).reshape(-1, k)
    acc = accuracy_from_counts(flat).reshape(-1, k)
    return f1, acc


def fold_rngs(seed: int, n_folds: int) -> list[np.random.Generator]:
    """One stream per fold, fixed by (seed, fold position): variants share their draws."""
    return [np.random.default_rng([int(seed), i]) for i in range(n_folds)]


def bootstrap_folds(
    fold_counts: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> BootstrapSamples:
    """Replicates of the mean-over-folds metrics; ``fold_counts[f]`` is ``[S_f, K, 4]``."""
    fold_counts = [check_counts(c) for c in fold_counts]
    for counts in fold_counts:
        check_resamples(resamples, counts.shape[0], counts.shape[1] * 4)
    f1 = acc = None
    for counts, rng in zip(fold_counts, fold_rngs(seed, len(fold_counts))):
        w = subject_weights(counts.shape[0], resamples, rng)
        f, a = _metrics_of_replicates(w, counts)
        f1 = f if f1 is None else f1 + f
        acc = a if acc is None else acc + a
    n = len(fold_counts)
    if n == 0:
        raise ValueError("no folds to resample")
    return BootstrapSamples(f1=f1 / n, accuracy=acc / n)


def percentile_interval(samples: np.ndarray, level: float = DEFAULT_LEVEL) -> np.ndarray:
    """``[..., 2]`` lower/upper percentile bounds over the replicate axis 0."""
    tail = 100 * (1 - level) / 2
    return np.moveaxis(np.percentile(samples, [tail, 100 - tail], axis=0), 0, -1)


def confidence_intervals(
    fold_counts: Sequence[np.ndarray], resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
    level: float = DEFAULT_LEVEL,
) -> dict[str, list]:
    """Intervals of per-AU and mean F1/accuracy, as JSON-ready lists of ``[low, high]``."""
    boot = bootstrap_folds(fold_counts, resamples, seed)
    return {
        "f1": percentile_interval(boot.f1, level).tolist(),
        "accuracy": percentile_interval(boot.accuracy, level).tolist(),
        "mean_f1": percentile_interval(boot.mean_f1, level).tolist(),
        "mean_accuracy": percentile_interval(boot.mean_accuracy, level).tolist(),
        "resamples": int(resamples), "seed": int(seed), "level": float(level),
        "method": method_line(resamples, seed, level),
    }

"""Frame-level AU detection metrics as the field reports them on DISFA.

Per AU the sigmoid output is thresholded at 0.5 (``logit >= 0``), true/false positives and
negatives are pooled over every evaluated frame of every subject, and

    F1 = 2 TP / (2 TP + FP + FN)        accuracy = (TP + TN) / N

A label that is NaN ("not coded": BP4D's 9, or an AU the test dataset does not code) is left
out of that AU's counts: each AU is scored on the frames coded for it, and ``n_scored`` says
how many (DISFA codes every frame, so there every AU's count is the frame count).

(``2TP / (2TP + FP + FN)`` equals ``2PR / (P + R)`` and is defined when P or R is not; an AU
with no positive frames and no positive predictions scores F1 = 0, as scikit-learn's
``f1_score(..., zero_division=0)``). The reported means are unweighted over AUs.

Counts are kept as integers so several processes (DDP ranks) can sum them exactly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

# The decision threshold lives with the score ranking this module builds on (one import
# direction); it is re-exported here, where reports look for it.
from .ranking import (PROBABILITY_THRESHOLD, average_precision, per_au,  # noqa: F401
                      probabilities_to_logits, roc_auc)


def confusion_counts(
    scores: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    *,
    from_logits: bool = True,
    threshold: float = PROBABILITY_THRESHOLD,
) -> np.ndarray:
    """Per-AU ``[K, 4]`` int64 counts (TP, FP, TN, FN) of one batch.

    ``scores`` are logits (``from_logits``) or probabilities, shape ``[N, K]``; ``targets`` 0/1.
    """
    scores = torch.as_tensor(scores).detach().float().cpu()
    targets = torch.as_tensor(targets).detach().cpu().bool()
    if scores.shape != targets.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} "
                         "must both be [N, K]")
    probs = torch.sigmoid(scores) if from_logits else scores
    pred = probs >= threshold
    tp = (pred & targets).sum(0)
    fp = (pred & ~targets).sum(0)
    tn = (~pred & ~targets).sum(0)
    fn = (~pred & targets).sum(0)
    return torch.stack([tp, fp, tn, fn], dim=1).numpy().astype(np.int64)


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-AU F1 from ``[K, 4]`` counts; 0 where an AU has neither positives nor predictions."""
    tp, fp, _, fn = (counts[:, j].astype(np.float64) for j in range(4))
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def accuracy_from_counts(counts: np.ndarray) -> np.ndarray:
    tp, fp, tn, fn = (counts[:, j].astype(np.float64) for j in range(4))
    n = tp + fp + tn + fn
    return np.divide(tp + tn, n, out=np.zeros_like(tp), where=n > 0)


@dataclass
class AUMetrics:
    """Pooled frame-level metrics of one evaluation (all fractions in 0..1)."""

    au_ids: list[int]
    f1: list[float]
    accuracy: list[float]
    mean_f1: float
    mean_accuracy: float
    n_frames: int  # frames evaluated (the most any AU was scored on)
    positive_rate: list[float]
    predicted_rate: list[float]
    loss: float | None = None
    counts: list[list[int]] = field(default_factory=list)
    #: Per held-out subject: names and ``[S][K][4]`` counts (the bootstrap's resampling unit).
    subjects: list[str] = field(default_factory=list)
    subject_counts: list = field(default_factory=list)
    #: Threshold-free metrics per AU (NaN where an AU's frames are all one class).
    auc: list[float] | None = None
    average_precision: list[float] | None = None
    decision_thresholds: list[float] | None = None
    #: Per AU, the (coded) frames it was scored on.
    n_scored: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = {
            "au_ids": self.au_ids, "f1": self.f1, "accuracy": self.accuracy,
            "mean_f1": self.mean_f1, "mean_accuracy": self.mean_accuracy,
            "n_frames": self.n_frames, "n_scored": self.n_scored,
            "positive_rate": self.positive_rate,
            "predicted_rate": self.predicted_rate, "loss": self.loss, "counts": self.counts,
            "probability_threshold": (self.decision_thresholds if self.decision_thresholds
                                      is not None else PROBABILITY_THRESHOLD),
        }
        if self.subjects:
            counts = np.asarray(self.subject_counts, dtype=np.int64)
            out["per_subject"] = {
                "subjects": self.subjects, "counts": counts.tolist(),
                "f1": [f1_from_counts(c).tolist() for c in counts],
                "n_frames": [int(c.sum(axis=1).max()) if len(c) else 0 for c in counts],
                "positives": (counts[:, :, 0] + counts[:, :, 3]).tolist()}
        if self.auc is not None:
            out["auc"], out["average_precision"] = _nan_to_none(self.auc), \
                _nan_to_none(self.average_precision)
            out["mean_auc"], out["mean_average_precision"] = _nanmean(self.auc), \
                _nanmean(self.average_precision)
        return out


def _nan_to_none(values) -> list[float | None]:
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


def _nanmean(values) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None


def grouped_counts(
    probabilities: np.ndarray, targets: np.ndarray, groups: np.ndarray, n_groups: int,
    thresholds: float | Sequence[float] = PROBABILITY_THRESHOLD,
) -> np.ndarray:
    """``[G, K, 4]`` counts (TP, FP, TN, FN) per group (subject) of ``[N, K]`` scores decided
    by ``score >= threshold`` (probabilities and probability thresholds, or logits and logit
    thresholds). NaN targets ("not coded") are left out."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    n, k = probabilities.shape
    pred = probabilities >= np.asarray(thresholds, dtype=np.float64)
    targets = np.asarray(targets)
    truth = targets > 0
    # column of (TP, FP, TN, FN) for each (pred, truth) pair
    code = np.where(pred, np.where(truth, 0, 1), np.where(truth, 3, 2))
    flat = (np.asarray(groups, dtype=np.int64)[:, None] * k + np.arange(k)) * 4 + code
    if targets.dtype.kind == "f":
        flat = flat[~np.isnan(targets)]
    return np.bincount(flat.ravel(), minlength=n_groups * k * 4).reshape(n_groups, k, 4)


def metrics_from_counts(
    counts: np.ndarray, au_ids: Sequence[int], loss: float | None = None
) -> AUMetrics:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(au_ids), 4):
        raise ValueError(f"counts shape {counts.shape} does not fit {len(au_ids)} AUs")
    f1 = f1_from_counts(counts)
    acc = accuracy_from_counts(counts)
    scored = counts.sum(axis=1)
    n = int(scored.max()) if len(counts) else 0
    tp, fp, _, fn = counts.T
    return AUMetrics(
        au_ids=[int(a) for a in au_ids],
        f1=f1.tolist(),
        accuracy=acc.tolist(),
        mean_f1=float(f1.mean()) if len(f1) else 0.0,
        mean_accuracy=float(acc.mean()) if len(acc) else 0.0,
        n_frames=n,
        positive_rate=((tp + fn) / np.maximum(scored, 1)).tolist(),
        predicted_rate=((tp + fp) / np.maximum(scored, 1)).tolist(),
        loss=loss,
        counts=counts.tolist(),
        n_scored=scored.astype(int).tolist(),
    )


class MetricAccumulator:
    """Sums confusion counts (and an optional loss) over batches; ``compute`` gives AUMetrics.

    With ``subjects`` (names) each ``update`` also gets the subject index of every frame, and
    the counts are kept per subject (their sum is the pooled counts). ``keep_scores`` keeps the
    float64 logits and labels for ROC-AUC/AP and threshold tuning (a float32 probability is 1.0
    above a logit of ~17: confident frames would tie). Decisions are made on the logits too,
    at the logits of the probability ``thresholds`` (or at ``logit_thresholds`` when given).
    ``counts_tensor``/``load_counts_tensor`` let DDP ranks all-reduce the totals; kept scores are gathered separately (``extend_scores``).
    """

    def __init__(self, au_ids: Sequence[int], subjects: Sequence[str] | None = None,
                 keep_scores: bool = False,
                 thresholds: float | Sequence[float] = PROBABILITY_THRESHOLD,
                 logit_thresholds: float | Sequence[float] | None = None) -> None:
        self.au_ids = [int(a) for a in au_ids]
        self.subjects = [str(s) for s in subjects] if subjects else []
        self.thresholds = thresholds
        self.logit_thresholds = np.asarray(
            probabilities_to_logits(thresholds) if logit_thresholds is None else logit_thresholds,
            dtype=np.float64)
        self.subject_counts = np.zeros((max(len(self.subjects), 1), len(self.au_ids), 4),
                                       dtype=np.int64)
        self.keep_scores = keep_scores
        self.scores: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.groups: list[np.ndarray] = []
        self.loss_sum = 0.0
        self.loss_frames = 0

    @property
    def counts(self) -> np.ndarray:
        return self.subject_counts.sum(axis=0)

    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, loss: float | None = None,
        groups: np.ndarray | None = None,
    ) -> None:
        scores = torch.as_tensor(logits).detach().cpu().double().numpy()
        # 1/0, NaN = not coded (kept: grouped_counts and the ranking metrics leave it out)
        values = torch.as_tensor(targets).detach().cpu().float().numpy()
        truth = np.where(np.isnan(values), np.nan, values > 0).astype(np.float32)
        if scores.shape != truth.shape or scores.ndim != 2:
            raise ValueError(f"scores {scores.shape} and targets {truth.shape} must both be [N, K]")
        groups = np.zeros(len(scores), np.int64) if groups is None else np.asarray(groups)
        self.subject_counts += grouped_counts(scores, truth, groups, len(self.subject_counts),
                                              self.logit_thresholds)
        if self.keep_scores:
            self.scores.append(scores)
            self.targets.append(truth)
            self.groups.append(groups.astype(np.int64))
        if loss is not None:
            self.loss_sum += float(loss) * len(targets)
            self.loss_frames += len(targets)

    def counts_tensor(self) -> torch.Tensor:
        """Counts and loss sums as one float64 vector (exact for integers below 2**53)."""
        return torch.tensor(
            [*self.subject_counts.reshape(-1).tolist(), self.loss_sum, self.loss_frames],
            dtype=torch.float64,
        )

    def load_counts_tensor(self, values: torch.Tensor) -> None:
        values = values.cpu().double()
        n = self.subject_counts.size
        self.subject_counts = values[:n].round().long().numpy().reshape(self.subject_counts.shape)
        self.loss_sum = float(values[n])
        self.loss_frames = int(round(float(values[n + 1])))

    def score_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Kept ``[N, K]`` float64 logits, ``[N, K]`` float32 labels (1/0, NaN = not coded) and
        ``[N]`` subject indices."""
        k = len(self.au_ids)
        if not self.scores:
            return np.zeros((0, k), np.float64), np.zeros((0, k), np.float32), np.zeros(0, np.int64)
        return (np.concatenate(self.scores), np.concatenate(self.targets),
                np.concatenate(self.groups))

    def extend_scores(self, parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
        """Replace the kept scores by ``parts`` (every rank's ``score_arrays``)."""
        self.scores, self.targets, self.groups = (list(x) for x in zip(*parts)) if parts \
            else ([], [], [])

    def at_thresholds(self, thresholds: Sequence[float],
                      logits: Sequence[float] | None = None) -> "MetricAccumulator":
        """The kept scores decided again at per-AU probability ``thresholds`` (counts per
        subject), compared as ``logits`` when given (exact where the probability is ~1)."""
        again = MetricAccumulator(self.au_ids, self.subjects, thresholds=list(thresholds),
                                  logit_thresholds=None if logits is None else list(logits))
        scores, labels, groups = self.score_arrays()
        again.subject_counts = grouped_counts(scores, labels, groups, len(again.subject_counts),
                                              again.logit_thresholds)
        return again

    def compute(self) -> AUMetrics:
        loss = self.loss_sum / self.loss_frames if self.loss_frames else None
        metrics = metrics_from_counts(self.counts, self.au_ids, loss)
        if self.subjects:
            metrics.subjects = list(self.subjects)
            metrics.subject_counts = self.subject_counts.tolist()
        if self.keep_scores:
            scores, labels, _ = self.score_arrays()
            metrics.auc = per_au(roc_auc, scores, labels)
            metrics.average_precision = per_au(average_precision, scores, labels)
        if not np.isscalar(self.thresholds):
            metrics.decision_thresholds = [float(t) for t in self.thresholds]
        return metrics

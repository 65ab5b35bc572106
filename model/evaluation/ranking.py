"""Threshold-free metrics per AU (ROC-AUC, average precision) and F1-optimal thresholds.

All three come from one sweep over the distinct scores in decreasing order: at each distinct
score ``t`` the rule ``score >= t`` gives cumulative true and false positives.

- ROC-AUC: the trapezoidal area under (FPR, TPR) through those points; tied scores form one
  step, so a tie between a positive and a negative counts one half (scikit-learn's
  ``roc_auc_score``).
- Average precision: ``sum_n (R_n - R_{n-1}) P_n`` over the same points, without
  interpolation (scikit-learn's ``average_precision_score``).
- F1-optimal threshold: the point with the highest ``2 TP / (TP + FP + P)``; the threshold is
  set halfway between that score and the next lower distinct score, so that frames scored
  exactly on it and slightly perturbed scores decide the same way.

An AU whose frames are all one class has no ROC curve: AUC and AP are NaN there (reported
as "n/a"), and its tuned threshold stays at the default.
"""
from __future__ import annotations

import numpy as np

from .metrics import PROBABILITY_THRESHOLD


def _sweep(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct scores (decreasing) and the cumulative TP/FP at ``score >= t`` for each."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order].astype(np.float64)
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return s[last_of_tie], tps, fps


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel() > 0
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return float("nan")
    _, tps, fps = _sweep(scores, labels)
    tpr = np.r_[0.0, tps / pos]
    fpr = np.r_[0.0, fps / neg]
    return float(np.trapezoid(tpr, fpr))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel() > 0
    pos = int(labels.sum())
    if pos == 0 or pos == len(labels):
        return float("nan")
    _, tps, fps = _sweep(scores, labels)
    precision = tps / (tps + fps)
    recall = tps / pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_au(fn, scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """``fn`` applied to every column of ``[N, K]`` scores and labels."""
    return [fn(scores[:, k], labels[:, k]) for k in range(scores.shape[1])]


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray,
                         default: float = PROBABILITY_THRESHOLD) -> float:
    """The probability threshold that maximises F1 of ``score >= threshold`` on these frames."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel() > 0
    pos = int(labels.sum())
    if pos == 0 or pos == len(labels):
        return float(default)
    distinct, tps, fps = _sweep(scores, labels)
    f1 = 2 * tps / (tps + fps + pos)
    best = int(np.argmax(f1))
    lower = distinct[best + 1] if best + 1 < len(distinct) else max(distinct[best] - 1e-6, 0.0)
    return float((distinct[best] + lower) / 2)


def tune_thresholds(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per-AU F1-optimal thresholds for ``[N, K]`` probabilities and 0/1 labels."""
    return [f1_optimal_threshold(scores[:, k], labels[:, k]) for k in range(scores.shape[1])]

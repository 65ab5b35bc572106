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

The scores are the model's logits, in float64 (``MetricAccumulator`` keeps them so): the ranking
is the sigmoid's, but a float32 sigmoid is exactly 1.0 above a logit of about 17 and would tie
every confident frame; thresholds are tuned on the logits (``tune_logit_thresholds``) and shown
as float64 probabilities (``logits_to_probabilities``), which stay below 1 up to a logit of ~36.
"""
from __future__ import annotations

import numpy as np

#: The default decision: sigmoid >= 0.5 (logit >= 0); ``metrics`` decides at it and an AU's
#: tuned threshold falls back to it.
PROBABILITY_THRESHOLD = 0.5


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
    """``fn`` applied to every column of ``[N, K]`` scores and labels, on the frames coded for
    that AU (a NaN label is "not coded")."""
    return [fn(*_coded(scores[:, k], labels[:, k])) for k in range(scores.shape[1])]


def _coded(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One AU's scores and labels less the frames not coded for it (NaN labels)."""
    labels = np.asarray(labels)
    if labels.dtype.kind != "f":
        return scores, labels
    keep = ~np.isnan(labels)
    return np.asarray(scores)[keep], labels[keep]


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray,
                         default: float = PROBABILITY_THRESHOLD, floor: float | None = 0.0,
                         below: float = 1e-6) -> float:
    """The threshold that maximises F1 of ``score >= threshold`` on these frames: probabilities
    by default; logits with ``default=0``, ``floor=None`` (``tune_logit_thresholds``). When the
    lowest score is the best cut, the threshold lies ``below`` under it (not under ``floor``)."""
    scores, labels = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel() > 0
    pos = int(labels.sum())
    if pos == 0 or pos == len(labels):
        return float(default)
    distinct, tps, fps = _sweep(scores, labels)
    f1 = 2 * tps / (tps + fps + pos)
    best = int(np.argmax(f1))
    if best + 1 < len(distinct):
        lower = distinct[best + 1]
    else:
        lower = distinct[best] - below
        lower = lower if floor is None else max(lower, floor)
    return float((distinct[best] + lower) / 2)


def tune_thresholds(scores: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per-AU F1-optimal thresholds for ``[N, K]`` probabilities and 0/1 labels."""
    return [f1_optimal_threshold(scores[:, k], labels[:, k]) for k in range(scores.shape[1])]


def tune_logit_thresholds(logits: np.ndarray, labels: np.ndarray) -> list[float]:
    """Per-AU F1-optimal thresholds on ``[N, K]`` float64 logits (0, i.e. probability 0.5, where
    an AU's frames are all one class); halfway between two distinct logits, so no tie."""
    logits = np.asarray(logits, np.float64)
    return [f1_optimal_threshold(*_coded(logits[:, k], labels[:, k]), default=0.0, floor=None,
                                 below=1.0)
            for k in range(logits.shape[1])]


def logits_to_probabilities(logits) -> list[float]:
    """The float64 sigmoid of each logit (what reports and ``model.predict`` show)."""
    values = np.asarray(logits, np.float64)
    with np.errstate(over="ignore"):  # exp(800) = inf gives probability 0, as it should
        return (1.0 / (1.0 + np.exp(-values))).tolist()


def probabilities_to_logits(probabilities) -> np.ndarray:
    """The logit of each probability threshold (0.5 -> 0 exactly; 1 -> +inf: nothing passes)."""
    p = np.asarray(probabilities, np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p) - np.log1p(-p)

"""Frame-level AU detection metrics as the field reports them on DISFA.

Per AU the sigmoid output is thresholded at 0.5 (``logit >= 0``), true/false positives and
negatives are pooled over every evaluated frame of every subject, and

    F1 = 2 TP / (2 TP + FP + FN)        accuracy = (TP + TN) / N

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

PROBABILITY_THRESHOLD = 0.5


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
    n_frames: int
    positive_rate: list[float]
    predicted_rate: list[float]
    loss: float | None = None
    counts: list[list[int]] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "au_ids": self.au_ids, "f1": self.f1, "accuracy": self.accuracy,
            "mean_f1": self.mean_f1, "mean_accuracy": self.mean_accuracy,
            "n_frames": self.n_frames, "positive_rate": self.positive_rate,
            "predicted_rate": self.predicted_rate, "loss": self.loss, "counts": self.counts,
            "probability_threshold": PROBABILITY_THRESHOLD,
        }


def metrics_from_counts(
    counts: np.ndarray, au_ids: Sequence[int], loss: float | None = None
) -> AUMetrics:
    counts = np.asarray(counts, dtype=np.int64)
    if counts.shape != (len(au_ids), 4):
        raise ValueError(f"counts shape {counts.shape} does not fit {len(au_ids)} AUs")
    f1 = f1_from_counts(counts)
    acc = accuracy_from_counts(counts)
    n = int(counts[0].sum()) if len(counts) else 0
    tp, fp, _, fn = counts.T
    return AUMetrics(
        au_ids=[int(a) for a in au_ids],
        f1=f1.tolist(),
        accuracy=acc.tolist(),
        mean_f1=float(f1.mean()) if len(f1) else 0.0,
        mean_accuracy=float(acc.mean()) if len(acc) else 0.0,
        n_frames=n,
        positive_rate=((tp + fn) / max(n, 1)).tolist(),
        predicted_rate=((tp + fp) / max(n, 1)).tolist(),
        loss=loss,
        counts=counts.tolist(),
    )


class MetricAccumulator:
    """Sums confusion counts (and an optional loss) over batches; ``compute`` gives AUMetrics.

    ``counts_tensor``/``load_counts_tensor`` let DDP ranks all-reduce the totals.
    """

    def __init__(self, au_ids: Sequence[int]) -> None:
        self.au_ids = [int(a) for a in au_ids]
        self.counts = np.zeros((len(self.au_ids), 4), dtype=np.int64)
        self.loss_sum = 0.0
        self.loss_frames = 0

    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, loss: float | None = None
    ) -> None:
        self.counts += confusion_counts(logits, targets)
        if loss is not None:
            self.loss_sum += float(loss) * len(targets)
            self.loss_frames += len(targets)

    def counts_tensor(self) -> torch.Tensor:
        """Counts and loss sums as one float64 vector (exact for integers below 2**53)."""
        return torch.tensor(
            [*self.counts.reshape(-1).tolist(), self.loss_sum, self.loss_frames],
            dtype=torch.float64,
        )

    def load_counts_tensor(self, values: torch.Tensor) -> None:
        values = values.cpu().double()
        k = len(self.au_ids)
        self.counts = values[: 4 * k].round().long().numpy().reshape(k, 4)
        self.loss_sum = float(values[4 * k])
        self.loss_frames = int(round(float(values[4 * k + 1])))

    def compute(self) -> AUMetrics:
        loss = self.loss_sum / self.loss_frames if self.loss_frames else None
        return metrics_from_counts(self.counts, self.au_ids, loss)

"""Model selection: what the selection split can score (its positive frames per AU, recorded
and warned about) and the score early stopping maximises.

DISFA's folds hold out two validation subjects. An AU none of their frames shows has F1 0 for
every model (no true positive can exist), so the mean F1 that picks the epoch is blind to that
AU: selection then favours whatever the other AUs like, and nothing in the numbers says so.
The run records the positives per AU (config.json ``selection``) and warns naming AU and fold.
"""
from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from .data import ShardFrames
from ..evaluation.intensity import IntensityMetrics
from ..evaluation.metrics import AUMetrics

log = logging.getLogger("model.train")


def selection_record(frames: ShardFrames, indices: np.ndarray, au_ids: Sequence[int],
                     split: str, fold: int, warn: bool = True) -> dict[str, Any]:
    """Positive frames per AU among the ``indices`` of ``frames`` that selection scores, in all
    and per subject; AUs with none are listed (``no_positive``) and, with ``warn``, logged."""
    indices = np.asarray(indices, dtype=np.int64)
    labels = frames.labels[indices] > 0
    names, groups = frames.subject_groups()
    groups = groups[indices]
    per_subject = {name: labels[groups == g].sum(axis=0).astype(int).tolist()
                   for g, name in enumerate(names)}
    totals = labels.sum(axis=0).astype(int)
    missing = [int(au) for au, n in zip(au_ids, totals) if n == 0]
    record = {"split": split, "subjects": names, "frames": int(len(indices)),
              "au_ids": [int(a) for a in au_ids], "positives": totals.tolist(),
              "positives_per_subject": per_subject, "no_positive": missing}
    if missing and warn:
        log.warning("fold %d: the %s subjects (%s) have no positive frame of %s among the %d "
                    "frames model selection scores: F1 there is 0 for every model, so the "
                    "selection score ignores %s (config.json 'selection' has the positives per "
                    "AU)", fold, split, ", ".join(names), ", ".join(f"AU{a}" for a in missing),
                    len(indices), "it" if len(missing) == 1 else "them")
    return record


def selection_score(task: str, metrics: AUMetrics, intensity: IntensityMetrics | None) -> float:
    """What early stopping maximises: mean F1 (occurrence), mean ICC over the evaluated AUs
    (intensity), or the average of the two (both; each lies in [0, 1] where it matters)."""
    if task == "occurrence" or intensity is None:
        return metrics.mean_f1
    if task == "intensity":
        return intensity.mean_icc
    return 0.5 * (metrics.mean_f1 + intensity.mean_icc)


SCORE_NAMES = {"occurrence": "mean F1", "intensity": "mean ICC",
               "both": "(mean F1 + mean ICC) / 2"}

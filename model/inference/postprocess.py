"""Optional per-face post-processing of a prediction table: calibration and smoothing.

Both are off by default and work on each ``face_id`` separately, on the rows where a face was
found (``face_found == 1``); rows without a face stay empty.

- ``calibrate``: OpenFace's person-specific idea for a detector. Some people look as if an AU
  were active when their face is at rest; OpenFace subtracts each person's low-percentile
  output so that their neutral face reads as neutral. Here, per face and AU, the logit is
  lowered by ``max(0, q - logit(neutral))`` where ``q`` is the face's ``percentile``-th logit
  and ``neutral`` the probability a resting face should get (0.1): a face whose quietest tenth
  is already above that is shifted down; a face that is at rest sometimes is left alone.
- ``smooth``: a running median over ``N`` consecutive rows of the face (odd N; scipy's
  ``median_filter``), which removes one-frame flickers of the decision.

The decisions ``AUxx_c`` are recomputed from the final probabilities.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.ndimage import median_filter

from .csv_format import au_name

CALIBRATION_PERCENTILE = 10.0
NEUTRAL_PROBABILITY = 0.1


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def calibrate_probabilities(probs: np.ndarray, percentile: float = CALIBRATION_PERCENTILE,
                            neutral: float = NEUTRAL_PROBABILITY) -> np.ndarray:
    """``[N, K]`` probabilities of one face -> calibrated (see the module doc)."""
    logits = _logit(probs)
    offset = np.maximum(0.0, np.percentile(logits, percentile, axis=0) - _logit(np.array(neutral)))
    return 1.0 / (1.0 + np.exp(-(logits - offset)))


def smooth_series(values: np.ndarray, window: int) -> np.ndarray:
    """Running median over ``window`` rows of ``[N, K]`` (edges repeat the end values)."""
    if window <= 1 or len(values) == 0:
        return values
    return median_filter(values, size=(window, 1), mode="nearest")


def postprocess(table: pd.DataFrame, au_ids: Sequence[int],
                decision_threshold: float | Sequence[float],
                calibrate: bool = False, smooth: int = 0) -> pd.DataFrame:
    """Calibrate and/or smooth per face, then recompute ``AUxx_c``; returns a new table."""
    table = table.copy()
    p_cols = [f"{au_name(a)}_p" for a in au_ids]
    r_cols = [c for c in table.columns if re.fullmatch(r"AU\d+_r", c)]  # every intensity
    # float64: calibration and smoothing write float64 back, which pandas >= 3 refuses to put
    # into a float32 column (a table built from float32 network outputs).
    table[p_cols + r_cols] = table[p_cols + r_cols].astype("float64")
    for _, rows in table[table["face_found"] == 1].groupby("face_id").groups.items():
        probs = table.loc[rows, p_cols].to_numpy(dtype=float)
        if calibrate:
            probs = calibrate_probabilities(probs)
        if smooth > 1:
            probs = smooth_series(probs, smooth)
            if r_cols:
                table.loc[rows, r_cols] = smooth_series(table.loc[rows, r_cols].to_numpy(float),
                                                        smooth)
        table.loc[rows, p_cols] = probs
    found = table["face_found"] == 1
    # one threshold, or one per AU (tuned at training with --tune-threshold)
    thresholds = np.broadcast_to(np.asarray(decision_threshold, dtype=np.float64), (len(au_ids),))
    for a, p, threshold in zip(au_ids, p_cols, thresholds):
        decided = pd.array((table[p] >= threshold).astype("int8"), dtype="Int8")
        decided[~found.to_numpy()] = pd.NA
        table[f"{au_name(a)}_c"] = decided
    return table

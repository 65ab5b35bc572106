"""The label arrays a shard stores, from what a dataset codes: occurrence by the dataset's rule,
per-AU counts over the coded frames, and the intensity histogram. 255 (``NOT_CODED``) is "not
coded" everywhere: neither a positive nor a negative."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .datasets.base import NOT_CODED, label_matrix
from .datasets.registry import LEGACY_DATASET, dataset_info


def binarize(intensity: np.ndarray, au_ids: Sequence[int], threshold: int,
             dataset: str = LEGACY_DATASET, occurrence: np.ndarray | None = None) -> np.ndarray:
    """uint8 labels of ``au_ids`` by ``dataset``'s rule (DISFA: ``intensity >= threshold``),
    NOT_CODED where the release has no code."""
    labels = label_matrix(dataset_info(dataset), intensity, occurrence, au_ids, threshold)
    return np.where(np.isnan(labels), NOT_CODED, labels).astype(np.uint8)


def label_stats(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-AU positive counts and negatives per positive, n_neg / max(n_pos, 1), over the
    coded frames."""
    coded = labels != NOT_CODED
    pos = ((labels == 1) & coded).sum(axis=0).astype(np.int64)
    neg = coded.sum(axis=0).astype(np.int64) - pos
    return pos, (neg / np.maximum(pos, 1)).astype(np.float32)


def intensity_histogram(intensity: np.ndarray) -> np.ndarray:
    """[R, 6] counts of each intensity 0-5 per intensity column (NOT_CODED not counted)."""
    hist = np.zeros((intensity.shape[1], 6), dtype=np.int64)
    for col in range(intensity.shape[1]):
        hist[col] = np.bincount(intensity[:, col].astype(np.int64), minlength=6)[:6]
    return hist

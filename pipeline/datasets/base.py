"""The contract between a dataset adapter and the rest of the pipeline.

A DISFA subject is a video per camera with one label row per video frame; BP4D and DISFA+ are
folders of frame images per sequence (subject/task, subject/trial) whose labels name frames by
number. An image-folder adapter gives, per sequence, the frames that have labels, each with its
image file, its label codes and its landmarks (:class:`SequenceData`); alignment and shards do
the rest the same way for every dataset.

Label arrays are ``uint8`` with :data:`NOT_CODED` where the release says "not coded" (BP4D's 9)
or where a frame has no code for that AU: it is masked in the loss, the metrics and the per-AU
weights, and never read as 0 or 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from .registry import DatasetInfo

#: Label value for "not coded" in shards and adapter arrays (uint8).
NOT_CODED = 255


@dataclass(frozen=True)
class SequenceRef:
    """One sequence of a release: ``subject`` (e.g. "F001"), ``name`` (e.g. "T1" or
    "A1_AU1_TrailNo_1", opaque) and the folder holding its frame images."""

    subject: str
    name: str
    frames_dir: Path


@dataclass
class SequenceData:
    """The labelled frames of one sequence, in frame order.

    ``frame_numbers``: the dataset's own frame numbers (BP4D: the CSV's; DISFA+: the 0-based
    file number); ``images``: the image file of each; ``occurrence`` ``[N, len(info.occurrence_aus)]``
    0/1 and ``intensity`` ``[N, len(info.intensity_aus)]`` 0-5, both uint8 with NOT_CODED;
    ``landmarks`` ``[N, P, 2]`` float32 0-based pixels in the frame, NaN rows where the release
    has none; ``dropped``: reason -> frames left out while reading (e.g. no image file);
    ``counts``: reason -> frames kept but short of something (e.g. no landmarks)."""

    frame_numbers: np.ndarray
    images: list[Path]
    occurrence: np.ndarray
    intensity: np.ndarray
    landmarks: np.ndarray
    dropped: dict[str, int] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frame_numbers)


class DatasetAdapter(Protocol):
    """How one image-folder dataset's release is found and read (``pipeline.align --dataset``)."""

    info: DatasetInfo

    def sequences(self, root: Path) -> list[SequenceRef]:
        """Every sequence under ``root``, sorted; a ``ReleaseError`` naming what is missing."""

    def read_sequence(self, root: Path, ref: SequenceRef) -> SequenceData:
        """The labelled frames of ``ref`` that have an image, with labels and landmarks."""

    def standard_folds(self) -> dict:
        """The dataset's standard folds manifest (``data_manifests/``)."""


def label_matrix(info: DatasetInfo, intensity: np.ndarray, occurrence: np.ndarray | None,
                 au_ids: Sequence[int], threshold: int) -> np.ndarray:
    """Occurrence ``[N, len(au_ids)]`` float32: 1/0, NaN where not coded or not in the dataset.

    An AU in ``info.occurrence_aus`` comes from the occurrence codes; one in
    ``info.intensity_aus`` only is ``intensity >= threshold``."""
    n = len(intensity)
    out = np.full((n, len(au_ids)), np.nan, dtype=np.float32)
    for j, au in enumerate(au_ids):
        source = info.label_source(int(au))
        if source == "occurrence":
            col = np.asarray(occurrence)[:, info.occurrence_aus.index(int(au))]
            out[:, j] = np.where(col == NOT_CODED, np.nan, col > 0)
        elif source == "intensity":
            col = np.asarray(intensity)[:, info.intensity_aus.index(int(au))]
            out[:, j] = np.where(col == NOT_CODED, np.nan, col >= threshold)
    return out


def intensity_matrix(info: DatasetInfo, intensity: np.ndarray, au_ids: Sequence[int]
                     ) -> np.ndarray:
    """Intensity ``[N, len(au_ids)]`` float32 0-5, NaN where not coded or not in the dataset."""
    out = np.full((len(intensity), len(au_ids)), np.nan, dtype=np.float32)
    for j, au in enumerate(au_ids):
        if int(au) in info.intensity_aus:
            col = np.asarray(intensity)[:, info.intensity_aus.index(int(au))]
            out[:, j] = np.where(col == NOT_CODED, np.nan, col)
    return out

"""``BP4DAdapter``: BP4D-Spontaneous as shipped, through the image-folder adapter contract.

Per sequence (subject/task) it gives the CSV's coded frames that have an image file, matched by
INTEGER frame number whatever the file's zero padding (``488.jpg`` and ``0753.jpg`` both occur),
with the 12 evaluated AUs' occurrence (9 -> NOT_CODED), the FERA 2015 intensity where its files
exist (a missing row -> NOT_CODED, counted) and 49 landmarks (NaN rows where the release has
none, counted: the aligner falls back to a detector for them). Rows without an image are
dropped and counted in ``SequenceData.dropped``.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import numpy as np

from ..base import NOT_CODED, SequenceData, SequenceRef
from ..disfa.layout import ReleaseError
from ..registry import DatasetInfo, dataset_info
from . import folds
from .facts import INTENSITY_AUS, N_LANDMARKS
from .labels import intensity_column, read_intensity, read_occurrence
from .landmarks import landmarks_for_frames, read_landmark_file
from .layout import IMAGE_SUFFIXES, BP4DLayout, find_release

log = logging.getLogger("pipeline.datasets.bp4d")

_IMAGE_RE = re.compile(r"^(\d+)\.[A-Za-z]+$")
NO_IMAGE = "no image file"
NO_LANDMARKS = "no landmarks"
NO_INTENSITY_ROW = "intensity row missing"


def frame_images(folder: Path, rel: str) -> dict[int, Path]:
    """Integer frame number -> image file in ``folder`` (``0753.jpg`` and ``753.jpg`` are both
    frame 753; both in one folder is an error naming them)."""
    out: dict[int, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            m = _IMAGE_RE.match(entry.name)
            if m is None or not entry.name.lower().endswith(IMAGE_SUFFIXES):
                continue
            frame = int(m.group(1))
            if frame in out:
                raise ReleaseError(f"{rel}: two image files for frame {frame}: "
                                   f"{out[frame].name} and {entry.name}")
            out[frame] = folder / entry.name
    return out


class BP4DAdapter:
    """Reads BP4D releases (FERA 2015 subset or the full release) found under a root folder."""

    info: DatasetInfo = dataset_info("bp4d")
    drop_lists: tuple[str, ...] = tuple(folds.DROP_LISTS)

    def __init__(self) -> None:
        self._layouts: dict[Path, BP4DLayout] = {}

    def layout(self, root: Path | str) -> BP4DLayout:
        """The release map of ``root`` (walked once per adapter)."""
        key = Path(root).resolve()
        if key not in self._layouts:
            self._layouts[key] = find_release(root)
        return self._layouts[key]

    def sequences(self, root: Path) -> list[SequenceRef]:
        """Every sequence with an occurrence CSV, sorted; a ReleaseError naming a CSV whose
        frame folder (``<subject>/<task>/`` with images) is nowhere under ``root``."""
        layout = self.layout(root)
        refs = []
        for key in sorted(layout.occurrence):
            if key not in layout.frames:
                raise ReleaseError(f"{layout.rel(layout.occurrence[key])}: no frame folder "
                                   f"{key[0]}/{key[1]}/ with images anywhere under {root} "
                                   "(videos are not read: extract their frames first)")
            refs.append(SequenceRef(key[0], key[1], layout.frames[key]))
        return refs

    def read_sequence(self, root: Path, ref: SequenceRef) -> SequenceData:
        """The CSV's frames of ``ref`` that have an image, with labels and landmarks."""
        layout = self.layout(root)
        key = (ref.subject, ref.name)
        csv_path = layout.occurrence.get(key)
        if csv_path is None:
            raise ReleaseError(f"{ref.subject}/{ref.name}: no occurrence CSV under {root}")
        frames, codes = read_occurrence(csv_path, layout.rel(csv_path))
        points = self._landmarks(layout, key, frames)
        images = frame_images(Path(ref.frames_dir), layout.rel(Path(ref.frames_dir)))
        keep = np.array([int(f) in images for f in frames], dtype=bool)
        frames, codes, points = frames[keep], codes[keep], points[keep]
        intensity, missing = self._intensity(layout, key, frames)
        dropped = {NO_IMAGE: int((~keep).sum())} if not keep.all() else {}
        counts = {NO_LANDMARKS: int(np.isnan(points).any(axis=(1, 2)).sum())}
        if missing:
            counts[NO_INTENSITY_ROW] = missing
        for reason, n in {**dropped, **counts}.items():
            if n:
                log.info("%s/%s: %d frames: %s", ref.subject, ref.name, n, reason)
        return SequenceData(frame_numbers=frames, images=[images[int(f)] for f in frames],
                            occurrence=codes, intensity=intensity, landmarks=points,
                            dropped=dropped, counts=counts)

    def _landmarks(self, layout: BP4DLayout, key, frames: np.ndarray) -> np.ndarray:
        path = layout.landmarks.get(key)
        if path is None:
            return np.full((len(frames), N_LANDMARKS, 2), np.nan, dtype=np.float32)
        rel = layout.rel(path)
        return landmarks_for_frames(read_landmark_file(path, rel), frames, rel)

    def _intensity(self, layout: BP4DLayout, key, frames: np.ndarray
                   ) -> tuple[np.ndarray, int]:
        files = layout.intensity.get(key, {})
        out = np.full((len(frames), len(INTENSITY_AUS)), NOT_CODED, dtype=np.uint8)
        missing = 0
        for j, au in enumerate(INTENSITY_AUS):
            path = files.get(au)
            by_frame = read_intensity(path, layout.rel(path)) if path is not None else None
            out[:, j], n = intensity_column(by_frame, frames)
            missing += n
        return out, missing

    def standard_folds(self) -> dict:
        """``data_manifests/bp4d_folds.json``: the 3 parts and which part each fold tests."""
        return folds.standard_folds()

    def dropped_frames(self, name: str) -> dict[tuple[str, str], set[int]]:
        """{(subject, task): frame numbers} that drop list ``name`` (one of ``drop_lists``)
        leaves out; applying it is the caller's choice (``--drop-list``)."""
        return folds.dropped_frames(name)

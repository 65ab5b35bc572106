"""``DisfaPlusAdapter``: the DISFA+ release as shipped, through the image-folder contract
(:class:`pipeline.datasets.base.DatasetAdapter`).

Sequences are the trials found under ``Labels/<subject>/`` (any nesting); a frame is kept
where all 12 AU files list it and its image exists (py-feat's rule), and ``dropped`` counts the
frames each rule leaves out. Labels are 0-5 intensities for the 12 AUs (positive at >= 2 by
the registry's default, so >= 3 is one flag away). Full-frame landmarks are NaN: the
``_FaceCropped.mat`` points are in crop coordinates with no stored transform (see
``landmarks``); what each file held is kept in ``adapter.crop_landmarks``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..base import SequenceData, SequenceRef
from ..disfa.facts import MANIFEST_DIR
from ..disfa.layout import ReleaseError
from ..registry import dataset_info
from . import facts
from .labels import read_trial_labels
from .landmarks import read_crop_landmarks
from .layout import (AU_FILE_RE as _AU_FILE, IMAGE_RE, IMAGES, LABELS, au_files, landmark_files, release_top,
                     subject_dirs, trial_dirs)

log = logging.getLogger("pipeline.datasets.disfa_plus")

TEST_MANIFEST = "disfa_plus_test.json"
DROP_NO_IMAGE = "no image file"


class DisfaPlusAdapter:
    """Reads a DISFA+ release (``Images/``, ``Labels/``, ``FaceLandmarks/``)."""

    drop_lists: tuple[str, ...] = ()  # DISFA+ publishes no bad-frame list

    def __init__(self) -> None:
        self.info = dataset_info("disfa+")
        #: (subject, trial) -> why the trial was left out (e.g. an AU file missing).
        self.skipped: dict[tuple[str, str], str] = {}
        #: (subject, trial) -> what its ``_FaceCropped.mat`` held (``CropLandmarks.summary``).
        self.crop_landmarks: dict[tuple[str, str], dict] = {}

    def sequences(self, root: Path) -> list[SequenceRef]:
        """Every trial with all 12 AU files, sorted by (subject, trial)."""
        top = release_top(Path(root))
        images = subject_dirs(top / IMAGES)
        refs = []
        for subject, label_dir in subject_dirs(top / LABELS).items():
            image_trials = trial_dirs(images[subject], IMAGE_RE) if subject in images else {}
            for trial, folder in trial_dirs(label_dir, _AU_FILE).items():
                present = au_files(folder)  # one listing of the folder, not one per AU
                missing = [f"AU{a}.txt" for a in facts.AUS if a not in present]
                if missing:  # py-feat skips such a trial too; say so rather than fail
                    self._skip(subject, trial, f"{', '.join(missing)} missing in {folder}")
                elif trial not in image_trials:
                    self._skip(subject, trial, f"no image folder {IMAGES}/{subject}/{trial}")
                else:
                    refs.append(SequenceRef(subject, trial, image_trials[trial]))
        if not refs:
            raise ReleaseError(f"{top / LABELS}: no trial with 12 AU files and images")
        return sorted(refs, key=lambda r: (r.subject, r.name))

    def _skip(self, subject: str, trial: str, why: str) -> None:
        log.warning("DISFA+ %s %s left out: %s", subject, trial, why)
        self.skipped[(subject, trial)] = why

    def read_sequence(self, root: Path, ref: SequenceRef) -> SequenceData:
        top = release_top(Path(root))
        label_dir = trial_dirs(top / LABELS / ref.subject, _AU_FILE).get(ref.name)
        if label_dir is None:
            raise ReleaseError(f"{top / LABELS / ref.subject}: no label folder {ref.name}")
        frames, intensity, dropped = read_trial_labels(label_dir)
        image_of = _images_by_number(Path(ref.frames_dir))
        keep = np.array([int(f) in image_of for f in frames], dtype=bool)
        dropped[DROP_NO_IMAGE] = int((~keep).sum())
        frames, intensity = frames[keep], intensity[keep]
        self._note_crop_landmarks(top, ref)
        n = len(frames)
        return SequenceData(
            frame_numbers=frames, images=[image_of[int(f)] for f in frames],
            occurrence=np.zeros((n, 0), dtype=np.uint8), intensity=intensity,
            landmarks=np.full((n, self.info.n_landmarks, 2), np.nan, dtype=np.float32),
            dropped=dropped)

    def _note_crop_landmarks(self, top: Path, ref: SequenceRef) -> None:
        path = landmark_files(top, ref.subject).get(ref.name)
        if path is None:
            self.crop_landmarks[(ref.subject, ref.name)] = {"file": None, "problem": "absent"}
            return
        seen = read_crop_landmarks(path)
        if seen.problem:
            log.warning("%s: %s", path, seen.problem)
        self.crop_landmarks[(ref.subject, ref.name)] = seen.summary()

    def dropped_frames(self, name: str) -> dict[tuple[str, str], set[int]]:
        """The contract's drop-list hook (BP4D has JAA's); DISFA+ offers none."""
        raise ValueError(f"--drop-list {name}: DISFA+ has no drop lists (BP4D has 'jaa')")

    def standard_folds(self) -> dict:
        """``data_manifests/disfa_plus_test.json``: the 9 subjects, all test (no split)."""
        return json.loads((MANIFEST_DIR / TEST_MANIFEST).read_text())


def _images_by_number(folder: Path) -> dict[int, Path]:
    """0-based frame number -> image file; other files (``TimeStamp.txt``) are ignored."""
    out: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        m = IMAGE_RE.match(path.name)
        if m is not None and path.is_file():
            if int(m.group(1)) in out:
                raise ReleaseError(f"{folder}: two images for frame {int(m.group(1))}: "
                                   f"{out[int(m.group(1))].name} and {path.name}")
            out[int(m.group(1))] = path
    return out


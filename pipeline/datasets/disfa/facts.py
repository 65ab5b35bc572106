"""Facts about the DISFA release that every part of the toolkit shares.

The numbers here come from the real release (see README, "DISFA facts"); the versioned
manifests in ``data_manifests/`` hold the bad-frame ranges and the standard three-fold split.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

MANIFEST_DIR = Path(__file__).resolve().parents[3] / "data_manifests"
BAD_FRAMES_CSV = MANIFEST_DIR / "disfa_bad_frames.csv"
FOLDS_JSON = MANIFEST_DIR / "disfa_folds.json"

#: The 12 AUs DISFA annotates, in the column order of every ``intensity`` array.
ALL_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
#: The 8 AUs the field evaluates on DISFA (and TRA-Net predicts).
EVAL_AUS: tuple[int, ...] = (1, 2, 4, 6, 9, 12, 25, 26)

#: The 27 subjects of the release (no SN014, SN015, SN019, SN020, SN022).
SUBJECTS: tuple[str, ...] = tuple(
    f"SN{n:03d}" for n in (*range(1, 14), 16, 17, 18, 21, *range(23, 33))
)
#: What a subject name may be: DISFA's ``SN0dd``. Names from manifests and shard attrs build
#: file names (``SN001_left.h5``), so nothing else is accepted: no path component can come from a
#: file. Another dataset changes this one pattern.
SUBJECT_PATTERN = re.compile(r"SN0\d\d")
FRAMES_PER_SUBJECT = 4845
FRAMES_EXCEPTIONS = {"SN010": 4844}
FPS = 20.0
FRAME_SIZE = (1024, 768)  # width, height of both cameras

#: FACS intensity letters: A=1 (trace) .. E=5 (maximum).
FACS_LETTERS = {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5}
#: Default positive threshold: the literal reading of the paper ("C-level or higher").
DEFAULT_THRESHOLD = 3

N_LANDMARKS = 66
NOSE_ROOT, NOSE_TIP, CHIN = 27, 30, 8  # indices in DISFA's 66-point order


def n_frames(subject: str) -> int:
    """Frames in the left-camera video of ``subject`` in the real release."""
    return FRAMES_EXCEPTIONS.get(subject, FRAMES_PER_SUBJECT)


def is_subject_name(name: object) -> bool:
    """Whether ``name`` is a subject name of the dataset (:data:`SUBJECT_PATTERN`, whole)."""
    return isinstance(name, str) and SUBJECT_PATTERN.fullmatch(name) is not None


def parse_threshold(value: str | int) -> int:
    """Turn a FACS letter (A-E) or an integer 0-5 into the minimum positive intensity."""
    text = str(value).strip().upper()
    if text in FACS_LETTERS:
        return FACS_LETTERS[text]
    try:
        number = int(text)
    except ValueError:
        number = -1
    if not 0 <= number <= 5:
        raise ValueError(f"threshold must be a FACS letter A-E or an integer 0-5, got {value!r}")
    return number


def au_columns(au_ids: Sequence[int]) -> list[int]:
    """Column indices into ``ALL_AUS`` of the given AU numbers; unknown AUs are an error."""
    unknown = [au for au in au_ids if au not in ALL_AUS]
    if unknown:
        raise ValueError(f"AUs {unknown} are not annotated in DISFA (known: {list(ALL_AUS)})")
    return [ALL_AUS.index(au) for au in au_ids]


@dataclass(frozen=True)
class FrameRange:
    """An inclusive range of 1-based video frames."""

    first: int
    last: int

    def __contains__(self, frame_1based: int) -> bool:
        return self.first <= frame_1based <= self.last

    def __len__(self) -> int:
        return self.last - self.first + 1


def read_bad_frame_csv(path: Path) -> dict[str, list[FrameRange]]:
    """Read ``subject,first_frame,last_frame`` rows (1-based, inclusive; ``#`` comments)."""
    path = Path(path)
    ranges: dict[str, list[FrameRange]] = {}
    with path.open(newline="") as handle:
        rows = csv.DictReader(line for line in handle if not line.lstrip().startswith("#"))
        needed = {"subject", "first_frame", "last_frame"}
        if rows.fieldnames is None or not needed <= set(rows.fieldnames):
            raise ValueError(f"{path}: expected columns {sorted(needed)}, got {rows.fieldnames}")
        for line_no, row in enumerate(rows, start=2):
            try:
                rng = FrameRange(int(row["first_frame"]), int(row["last_frame"]))
            except (TypeError, ValueError) as err:
                raise ValueError(f"{path}, row {line_no}: non-integer frame range {row}") from err
            if rng.first < 1 or rng.last < rng.first:
                raise ValueError(f"{path}, row {line_no}: bad frame range {rng.first}-{rng.last}")
            ranges.setdefault(row["subject"].strip().upper(), []).append(rng)
    return ranges


def bad_frame_ranges() -> dict[str, list[FrameRange]]:
    """The release's Error_LOG_Sheet ranges, as versioned in ``data_manifests``."""
    return read_bad_frame_csv(BAD_FRAMES_CSV)


def bad_frame_mask(ranges: Iterable[FrameRange], n: int):
    """Boolean array over 0-based frames ``0..n-1``: True where a range marks the frame bad."""
    import numpy as np

    mask = np.zeros(n, dtype=bool)
    for rng in ranges:
        mask[max(rng.first - 1, 0) : min(rng.last, n)] = True
    return mask


def standard_folds() -> dict:
    """The canonical DISFA three parts and the documented validation hold-out per fold."""
    with FOLDS_JSON.open() as handle:
        return json.load(handle)

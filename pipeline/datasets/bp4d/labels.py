"""Read BP4D's AU codes: the occurrence CSV of a sequence and the FERA 2015 intensity files.

Occurrence (``F001_T1.csv``): one header row, then one row per coded frame; column ``0`` is the
frame number and the column named ``k`` is AU k. Peers read it by name (ME-GraphAU) or by
position (FERA 2015, FMAE), which agree only when the header is consecutive integers, so the
columns are read by name and a header where an evaluated AU's name and position disagree is
refused (BP4D_FACTS.md). Codes are 1 present, 0 absent, 9 not coded; 9 becomes
:data:`NOT_CODED`, never 0 or 1.

Intensity (``AU06/F001_T1_*.csv``): no header, ``frame,intensity`` lines, 0-5 and 9 = unknown.
"""
from __future__ import annotations

import csv
import io

import numpy as np

from ..base import NOT_CODED
from ..disfa.layout import ReleaseError, read_bounded
from .facts import NOT_CODED_CODE, OCCURRENCE_AUS


def _rows(data: bytes, rel: str) -> list[list[str]]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReleaseError(f"{rel}: not a text CSV ({err})") from err
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text)) if any(row)]


def _columns(header: list[str], rel: str) -> list[int]:
    """The positions of the frame column and the evaluated AUs, checked by name and place."""
    names = {name: i for i, name in enumerate(header)}
    if names.get("0") != 0:
        raise ReleaseError(f"{rel}: the first header cell must be '0' (the frame column), "
                           f"got {header[:1]}")
    positions = [0]
    for au in OCCURRENCE_AUS:
        where = names.get(str(au))
        if where is None:
            raise ReleaseError(f"{rel}: no column for AU{au} in the header")
        if where != au:
            raise ReleaseError(f"{rel}: the header names AU{au} at position {where}, not {au}; "
                               "name and position disagree, so peers reading by position and "
                               "by name would get different labels")
        positions.append(where)
    return positions


def read_occurrence(path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    """(frame numbers [N] int64, codes [N, 12] uint8 in OCCURRENCE_AUS order, NOT_CODED for 9)."""
    rows = _rows(read_bounded(path, rel), rel)
    if not rows:
        raise ReleaseError(f"{rel}: empty file (expected a header row and one row per frame)")
    cols = _columns(rows[0], rel)
    frames = np.empty(len(rows) - 1, dtype=np.int64)
    codes = np.empty((len(rows) - 1, len(OCCURRENCE_AUS)), dtype=np.uint8)
    for i, row in enumerate(rows[1:]):
        line = i + 2
        try:
            values = [int(float(row[c])) for c in cols]
        except (IndexError, ValueError):
            raise ReleaseError(f"{rel}, line {line}: expected integers in columns 0 and "
                               f"{', '.join(map(str, OCCURRENCE_AUS))}") from None
        bad = [v for v in values[1:] if v not in (0, 1, NOT_CODED_CODE)]
        if bad:
            raise ReleaseError(f"{rel}, line {line}: AU code {bad[0]} (expected 0, 1 or "
                               f"{NOT_CODED_CODE})")
        frames[i] = values[0]
        codes[i] = [NOT_CODED if v == NOT_CODED_CODE else v for v in values[1:]]
    if len(np.unique(frames)) != len(frames):
        dup = int(frames[np.flatnonzero(np.diff(np.sort(frames)) == 0)[0]])
        raise ReleaseError(f"{rel}: frame {dup} has two rows")
    return frames, codes


def read_intensity(path, rel: str) -> dict[int, int]:
    """Frame number -> intensity 0-5, or NOT_CODED for the release's 9."""
    out: dict[int, int] = {}
    for line, row in enumerate(_rows(read_bounded(path, rel), rel), start=1):
        try:
            frame, value = int(float(row[0])), int(float(row[1]))
        except (IndexError, ValueError):
            raise ReleaseError(f"{rel}, line {line}: expected 'frame,intensity', got "
                               f"{','.join(row)!r}") from None
        if not (0 <= value <= 5 or value == NOT_CODED_CODE):
            raise ReleaseError(f"{rel}, line {line}: intensity {value} (expected 0-5 or 9)")
        if frame in out:
            raise ReleaseError(f"{rel}, line {line}: frame {frame} has two rows")
        out[frame] = NOT_CODED if value == NOT_CODED_CODE else value
    return out


def intensity_column(by_frame: dict[int, int] | None, frames: np.ndarray) -> tuple[np.ndarray, int]:
    """One AU's intensity for ``frames`` (NOT_CODED where the file has no row) and how many
    rows were missing; all NOT_CODED when there is no file."""
    if by_frame is None:
        return np.full(len(frames), NOT_CODED, dtype=np.uint8), 0
    col = np.array([by_frame.get(int(f), NOT_CODED) for f in frames], dtype=np.uint8)
    missing = sum(int(f) not in by_frame for f in frames)
    return col, missing

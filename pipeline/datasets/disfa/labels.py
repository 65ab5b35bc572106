"""The AU label files of a DISFA release: ``ActionUnit_Labels/SNnnn/SNnnn_auN.txt``."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .facts import ALL_AUS
from .layout import ReleaseError, SubjectFiles, read_bounded



def read_label_file(path: Path, rel: str | None = None) -> np.ndarray:
    """Intensities of one ``frame,intensity`` file, indexed by 0-based frame.

    Frames must run 1, 2, 3, ... without gaps (label line k is video frame k-1);
    intensities must be integers 0-5. Blank lines are ignored.
    """
    rel = rel or str(path)
    try:
        text = read_bounded(path, rel).decode()
    except UnicodeDecodeError as err:
        raise ReleaseError(f"{rel}: cannot read ({err})") from err
    fast = _fast_label_values(text)
    if fast is not None:
        return fast
    values: list[int] = []  # slow path: finds and names the first bad line
    for line_no, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        parts = re.split(r"[,\s;]+", line)
        if len(parts) != 2:
            raise ReleaseError(f"{rel} line {line_no}: expected 'frame,intensity', got {line!r}")
        frame_text, value_text = parts
        try:
            frame = int(frame_text)
        except ValueError:
            raise ReleaseError(f"{rel} line {line_no}: non-numeric frame {frame_text!r}") from None
        try:
            value = float(value_text)
        except ValueError:
            raise ReleaseError(
                f"{rel} line {line_no}: non-numeric intensity {value_text!r}") from None
        if not value.is_integer() or not 0 <= value <= 5:
            raise ReleaseError(f"{rel} line {line_no}: intensity {value_text!r} is not 0-5")
        if frame != len(values) + 1:
            raise ReleaseError(f"{rel} line {line_no}: frame {frame}, expected {len(values) + 1} "
                               "(frames must be consecutive from 1)")
        values.append(int(value))
    if not values:
        raise ReleaseError(f"{rel}: no labels")
    return np.asarray(values, dtype=np.uint8)


def _fast_label_values(text: str) -> np.ndarray | None:
    """Vectorised parse of a well-formed label file, or None to let the line parser report."""
    try:
        table = np.array(text.replace(",", " ").split(), dtype=np.int64).reshape(-1, 2)
    except ValueError:
        return None
    lines = [line for line in text.splitlines() if line.strip()]
    if (table.size == 0 or len(lines) != len(table)
            or any(line.count(",") != 1 for line in lines)  # exactly one pair per line
            or not np.array_equal(table[:, 0], np.arange(1, len(table) + 1))
            or table[:, 1].min() < 0 or table[:, 1].max() > 5):
        return None
    return table[:, 1].astype(np.uint8)


def read_labels(files: SubjectFiles) -> np.ndarray:
    """``[N, 12]`` uint8 intensities in ``ALL_AUS`` order; all 12 files must have N lines."""
    missing = [au for au in ALL_AUS if au not in files.label_files]
    if missing:
        raise ReleaseError(f"{files.subject}: no label file for AU {missing} in "
                           f"ActionUnit_Labels/{files.subject}")
    columns = []
    for au in ALL_AUS:
        path = files.label_files[au]
        columns.append(read_label_file(path, files.rel(path)))
    lengths = {au: len(c) for au, c in zip(ALL_AUS, columns)}
    if len(set(lengths.values())) != 1:
        common = max(set(lengths.values()), key=list(lengths.values()).count)
        odd = {au: n for au, n in lengths.items() if n != common}
        names = ", ".join(f"{files.rel(files.label_files[au])} has {n} frames"
                          for au, n in odd.items())
        raise ReleaseError(f"{files.subject}: label files disagree in length: {names}, "
                           f"the others {common}")
    return np.stack(columns, axis=1)


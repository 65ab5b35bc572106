"""The error log of a DISFA release (``Error_LOG_Sheet.xls``, or a CSV): bad-frame ranges.

The release's sheet is hand-made, so the table reader is tolerant of layout; a CSV with the
manifest's columns goes through :func:`pipeline.datasets.disfa.facts.read_bad_frame_csv`.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

from .facts import FrameRange, read_bad_frame_csv
from .layout import ReleaseError

_RANGE_RE = re.compile(r"(\d+)\s*(?:-|–|—|~|to|:)\s*(\d+)", re.IGNORECASE)
_SUBJECT_IN_TEXT_RE = re.compile(r"\bSN\s*0*(\d{1,3})\b", re.IGNORECASE)


def _cell_subject(value) -> str | None:
    if isinstance(value, str):
        m = _SUBJECT_IN_TEXT_RE.search(value)
        if m:
            return f"SN{int(m.group(1)):03d}"
    return None


def _cell_ranges(value) -> list[tuple[int, int]]:
    if isinstance(value, str):
        text = _SUBJECT_IN_TEXT_RE.sub(" ", value)
        return [(int(a), int(b)) for a, b in _RANGE_RE.findall(text)]
    return []


def _cell_int(value) -> int | None:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_error_log_table(rows: Iterable[Iterable], source: str = "error log"
                          ) -> dict[str, list[FrameRange]]:
    """Frame ranges per subject from a spreadsheet given as rows of cells.

    Tolerant of layout, because the release's sheet is hand-made: a subject is any cell like
    ``SN001`` (or ``SN 1``); a range is text like ``398-420`` (several per cell allowed, also
    ``398 to 420``), or a pair of integer cells (first, last) on a row without range text.
    Ranges belong to the subject on their row, else to the closest subject above (merged
    cells); with several subjects on one row (one subject per column), to that column's.
    """
    table = [list(r) for r in rows]
    ranges: dict[str, list[FrameRange]] = {}
    column_subjects: dict[int, str] = {}
    current: str | None = None

    def add(subject: str | None, first: int, last: int, where: str) -> None:
        if subject is None:
            raise ReleaseError(f"{source}, {where}: frame range {first}-{last} before any subject")
        if first < 1 or last < first:
            raise ReleaseError(f"{source}, {where}: bad frame range {first}-{last}")
        ranges.setdefault(subject, []).append(FrameRange(first, last))

    for row_no, row in enumerate(table, start=1):
        subjects_here = {c: s for c, cell in enumerate(row) if (s := _cell_subject(cell))}
        if len(subjects_here) > 1:
            column_subjects = subjects_here  # a header row: one subject per column
            current = None
        elif len(subjects_here) == 1:
            current = next(iter(subjects_here.values()))
            column_subjects = {}
        found_text = False
        for col, cell in enumerate(row):
            for first, last in _cell_ranges(cell):
                found_text = True
                owner = column_subjects.get(col) if column_subjects else current
                add(owner, first, last, f"row {row_no}")
        if not found_text and not column_subjects:
            numbers = [n for cell in row if not _cell_subject(cell)
                       if (n := _cell_int(cell)) is not None]
            if len(numbers) == 2:
                add(current, numbers[0], numbers[1], f"row {row_no}")
            elif len(numbers) > 2:
                raise ReleaseError(f"{source}, row {row_no}: cannot read a frame range from "
                                   f"{numbers}")
    for subject in ranges:
        ranges[subject].sort(key=lambda r: (r.first, r.last))
    return ranges


def read_error_log(path: Path | str) -> dict[str, list[FrameRange]]:
    """Bad-frame ranges from the release's ``Error_LOG_Sheet.xls`` or a CSV.

    CSV files with the columns ``subject,first_frame,last_frame`` go through
    ``facts.read_bad_frame_csv``; other CSVs and spreadsheets (.xls via xlrd, .xlsx if
    openpyxl is installed) through the tolerant :func:`parse_error_log_table`, all sheets.
    """
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"error log {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".txt"):
        head = path.read_text(errors="replace")
        lines = [ln for ln in head.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        if lines and {"subject", "first_frame", "last_frame"} <= {
                c.strip() for c in lines[0].split(",")}:
            try:
                return read_bad_frame_csv(path)
            except ValueError as err:
                raise ReleaseError(str(err)) from err
        import csv

        return parse_error_log_table(csv.reader(lines), source=str(path))
    if suffix in (".xls", ".xlsx"):
        import pandas as pd

        try:
            with warnings.catch_warnings():
                # pandas 3 deprecates its xlrd engine, still the one reader of legacy .xls here.
                warnings.filterwarnings("ignore", message=".*xlrd engine is deprecated.*")
                sheets = pd.read_excel(path, sheet_name=None, header=None,
                                       engine="xlrd" if suffix == ".xls" else None)
        except Exception as err:  # pandas/xlrd raise many types for unreadable workbooks
            raise ReleaseError(f"error log {path}: cannot read the spreadsheet ({err})") from err
        ranges: dict[str, list[FrameRange]] = {}
        for sheet_name, frame in sheets.items():
            rows = frame.astype(object).where(frame.notna(), None).values.tolist()
            for subject, rs in parse_error_log_table(rows, f"{path} sheet {sheet_name!r}").items():
                ranges.setdefault(subject, []).extend(rs)
        return ranges
    raise ReleaseError(f"error log {path}: unknown format {suffix!r} (expected .xls or .csv)")

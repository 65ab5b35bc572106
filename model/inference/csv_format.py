"""The per-frame CSV's columns and its two file formats.

Column order (the in-memory table and both formats): OpenFace 2.2 FeatureExtraction's own
columns first, in its order - ``frame, face_id, timestamp, confidence, success``, the head pose
``pose_Tx, pose_Ty, pose_Tz, pose_Rx, pose_Ry, pose_Rz``, the 2D landmarks ``x_0..x_67,
y_0..y_67`` (with ``--landmarks``), ``AUxx_r`` then ``AUxx_c``, each block sorted by name as
OpenFace sorts it - then ours: ``file`` (images), ``face_found``, ``face_score``,
``face_x, face_y, face_w, face_h``, ``AUxx_p``. Which AUs get ``_r``, ``_c`` and ``_p`` columns
comes from what the model estimates (:func:`table_columns`).

Formats (``--format``):

- ``openface`` (default): what OpenFace 2.2's ``RecorderCSV`` writes - ", " between fields in
  the header and the rows, its fixed decimals per column (:data:`OPENFACE_DECIMALS`), and
  OpenFace's full AU set (:data:`OPENFACE_INTENSITY_AUS`, :data:`OPENFACE_PRESENCE_AUS`) so
  readers that expect every OpenFace AU column (py-feat's ``Fex.aus``) work: an AU this model
  does not estimate is an empty column. A row without a face (``face_found = 0``) is written
  the way OpenFace writes a frame it failed to track: 0 in every OpenFace column it has a
  value for, except ``frame``, ``face_id`` and ``timestamp``; our own columns are empty there.
- ``plain``: the table as pandas writes it - "," between fields, 4 decimals, empty cells for
  every value that does not exist (all of a no-face row's face values).

Read either with :func:`read_predictions` (pandas ``skipinitialspace=True``).
"""
from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

FORMATS = ("openface", "plain")
DEFAULT_FORMAT = "openface"
#: OpenFace 2.2's AU models: intensity (``_r``) and presence (``_c``, also AU28).
OPENFACE_INTENSITY_AUS = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45)
OPENFACE_PRESENCE_AUS = tuple(sorted(OPENFACE_INTENSITY_AUS + (28,)))
OPENFACE_HEAD = ["frame", "face_id", "timestamp", "confidence", "success"]
POSE_COLUMNS = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]
OUR_FACE_COLUMNS = ["face_found", "face_score", "face_x", "face_y", "face_w", "face_h"]
#: Decimals OpenFace's RecorderCSV uses (std::fixed with these precisions); None: an integer.
OPENFACE_DECIMALS = [(r"frame|face_id|success|face_found", None), (r"timestamp", 3),
                     (r"confidence", 2), (r"pose_T[xyz]", 1), (r"pose_R[xyz]", 3),
                     (r"[xy]_\d+", 1), (r"AU\d+_r", 2), (r"AU\d+_c", 1),
                     (r"face_[xywh]", 1), (r"face_score|AU\d+_p", 4)]
#: OpenFace 2.2's field separator, header and rows alike.
OPENFACE_SEPARATOR = ", "


def au_name(au: int) -> str:
    """OpenFace's zero-padded AU label: 1 -> "AU01"."""
    return f"AU{int(au):02d}"


def _au_block(aus: Sequence[int], suffix: str) -> list[str]:
    # OpenFace sorts its AU names as strings; zero padding makes that the numeric order.
    return sorted(f"{au_name(a)}_{suffix}" for a in aus)


def table_columns(occurrence_aus: Sequence[int], intensity_aus: Sequence[int],
                  with_file: bool, with_landmarks: bool) -> list[str]:
    """The table's columns for a model estimating occurrence of ``occurrence_aus`` (``_c`` and
    ``_p`` columns; empty for a model without an occurrence head) and intensity of
    ``intensity_aus`` (``_r``)."""
    columns = OPENFACE_HEAD + POSE_COLUMNS
    if with_landmarks:
        columns += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    columns += _au_block(intensity_aus, "r") + _au_block(occurrence_aus, "c")
    columns += (["file"] if with_file else []) + OUR_FACE_COLUMNS
    return columns + _au_block(occurrence_aus, "p")


def openface_layout(columns: Sequence[str]) -> list[str]:
    """``columns`` with OpenFace's AU columns the model lacks added, in OpenFace's places
    (OpenFace's ``_c`` set only for a model with an occurrence head)."""
    r_cols = sorted({c for c in columns if re.fullmatch(r"AU\d+_r", c)}
                    | set(_au_block(OPENFACE_INTENSITY_AUS, "r")))
    c_cols = sorted({c for c in columns if re.fullmatch(r"AU\d+_c", c)})
    if c_cols:  # a model without a trained occurrence head writes no AUxx_c at all (#21)
        c_cols = sorted(set(c_cols) | set(_au_block(OPENFACE_PRESENCE_AUS, "c")))
    head = [c for c in columns if c in OPENFACE_HEAD + POSE_COLUMNS or re.fullmatch(r"[xy]_\d+", c)]
    tail = [c for c in columns if c not in set(head) | set(r_cols) | set(c_cols)]
    return head + r_cols + c_cols + tail


def _spec(column: str) -> str:
    """The %-format of one column's cells (OpenFace's fixed decimals; text as it is)."""
    for pattern, decimals in OPENFACE_DECIMALS:
        if re.fullmatch(pattern, column):
            return "%.0f" if decimals is None else f"%.{decimals}f"
    return "%s"


def _quoted(text: str) -> str:
    if not any(ch in text for ch in ',"\n\r'):
        return text
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([text])
    return buffer.getvalue()


def openface_rows(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` in OpenFace's layout and no-face rule (see the module doc), still numeric."""
    out = table.reindex(columns=openface_layout(list(table.columns))).copy()
    no_face = out["face_found"].to_numpy() == 0 if "face_found" in out else np.zeros(len(out), bool)
    estimated = [c for c in table.columns
                 if c in ("confidence", "success") or c in POSE_COLUMNS
                 or re.fullmatch(r"[xy]_\d+|AU\d+_[rc]", c)]
    for column in estimated:
        values = out[column].astype("float64")
        values[no_face] = 0.0
        out[column] = values
    return out


def to_text(table: pd.DataFrame, fmt: str = DEFAULT_FORMAT) -> str:
    """The CSV file's text for ``table`` in format ``fmt`` (``openface`` or ``plain``)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "plain":
        return table.to_csv(index=False, float_format="%.4f")
    rows = openface_rows(table)
    specs = [_spec(c) for c in rows.columns]
    data = [rows[c].tolist() if spec != "%s" else
            ["" if pd.isna(v) else _quoted(str(v)) for v in rows[c]]
            for c, spec in zip(rows.columns, specs)]
    template = OPENFACE_SEPARATOR.join(specs)
    # One %-format per row (fast); a missing number prints "nan", which becomes an empty cell
    # (frame, the first field, is never missing).
    lines = [OPENFACE_SEPARATOR.join(rows.columns)]
    lines += [(template % values).replace(", nan", ", ") for values in zip(*data)]
    return "\n".join(lines) + "\n"


def read_predictions(path: Path | str) -> pd.DataFrame:
    """A CSV written by ``model.predict`` in either format (or by OpenFace) as a table."""
    return pd.read_csv(path, skipinitialspace=True)

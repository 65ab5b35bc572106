"""Find and read the files of a DISFA release: videos, AU labels, landmarks, the error log.

The release is not uniform (see DISFA_FACTS.md), so discovery is tolerant where the release
varies and strict where a mistake would silently change the data:

* folder and file names match case-insensitively (``LeftVideo``/``leftVideo``, ``_comp``/``_Comp``,
  ``Video_RightCamera`` singular or plural);
* the landmark subfolder is taken whatever its name, as long as it is the only one holding
  ``.mat`` files;
* both landmark naming schemes are understood: ``SN001_0000_lm.mat`` (0-based frame) and
  ``l0NNNN_lm.mat`` (1-based frame);
* every parse error names the file (relative to the release root) and the line or frame.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from .disfa import ALL_AUS, N_LANDMARKS, FrameRange, read_bad_frame_csv
from .cli import CommandError

log = logging.getLogger(__name__)

CAMERAS = ("left", "right")

_DIR_PATTERNS = {
    "labels": re.compile(r"^action_?units?_?labels?$"),
    "left": re.compile(r"^videos?_?left_?camera$"),
    "right": re.compile(r"^videos?_?right_?camera$"),
    "landmarks": re.compile(r"^landmarks?_?points?$"),
}
_VIDEO_RE = re.compile(r"^(left|right)video(sn\d{3})(?:_comp)?\.(avi|mp4|mkv|mov)$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(sn\d{3})_au(\d+)\.txt$", re.IGNORECASE)
_SUBJECT_RE = re.compile(r"^sn\d{3}$", re.IGNORECASE)
#: ``SN001_0000_lm.mat``: 0-based frame number.
_LM_ZERO_BASED_RE = re.compile(r"^sn\d{3}_(\d+)_lm\.mat$", re.IGNORECASE)
#: ``l03631_lm.mat``: 1-based frame number (SN031 and others).
_LM_ONE_BASED_RE = re.compile(r"^l(\d+)_lm\.mat$", re.IGNORECASE)


class ReleaseError(CommandError, ValueError):
    """A file of the release is missing or does not parse; the message names file and line."""


@dataclass
class SubjectFiles:
    """Where one subject's files are (``None`` where the release lacks one)."""

    subject: str
    root: Path
    label_files: dict[int, Path] = field(default_factory=dict)  # AU number -> path
    videos: dict[str, Path] = field(default_factory=dict)  # camera -> path
    landmark_dir: Path | None = None

    def rel(self, path: Path) -> str:
        """``path`` relative to the release root, for messages."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


@dataclass
class ReleaseLayout:
    root: Path
    dirs: dict[str, Path]
    subjects: dict[str, SubjectFiles]


def _find_dir(root: Path, key: str) -> Path | None:
    matches = [
        p for p in root.iterdir()
        if p.is_dir() and _DIR_PATTERNS[key].match(p.name.lower().replace("-", "_"))
    ]
    if len(matches) > 1:
        raise ReleaseError(f"{root}: several folders look like the {key} folder: "
                           f"{sorted(p.name for p in matches)}")
    return matches[0] if matches else None


def discover(root: Path | str) -> ReleaseLayout:
    """Map the release under ``root``: subjects are those with labels, a video or landmarks."""
    root = Path(root)
    if not root.is_dir():
        raise ReleaseError(f"DISFA root {root} does not exist or is not a folder")
    dirs = {key: d for key in _DIR_PATTERNS if (d := _find_dir(root, key)) is not None}
    if "labels" not in dirs and "left" not in dirs and "right" not in dirs:
        raise ReleaseError(
            f"{root}: no ActionUnit_Labels, Videos_LeftCamera or Video_RightCamera folder; "
            "is this the DISFA release root?")
    subjects: dict[str, SubjectFiles] = {}

    def entry(name: str) -> SubjectFiles:
        name = name.upper()
        return subjects.setdefault(name, SubjectFiles(subject=name, root=root))

    if "labels" in dirs:
        for sdir in sorted(dirs["labels"].iterdir()):
            if sdir.is_dir() and _SUBJECT_RE.match(sdir.name):
                files = entry(sdir.name).label_files
                for f in sdir.iterdir():
                    m = _LABEL_RE.match(f.name)
                    if m and m.group(1).upper() == sdir.name.upper():
                        files[int(m.group(2))] = f
    for camera in CAMERAS:
        if camera not in dirs:
            continue
        for f in sorted(dirs[camera].iterdir()):
            m = _VIDEO_RE.match(f.name)
            if m and m.group(1).lower() == camera:
                sf = entry(m.group(2))
                if camera in sf.videos:
                    raise ReleaseError(f"{sf.subject}: two {camera}-camera videos: "
                                       f"{sf.videos[camera].name} and {f.name}")
                sf.videos[camera] = f
    if "landmarks" in dirs:
        for sdir in sorted(dirs["landmarks"].iterdir()):
            if sdir.is_dir() and _SUBJECT_RE.match(sdir.name):
                entry(sdir.name).landmark_dir = _landmark_folder(sdir, root)
    return ReleaseLayout(root=root, dirs=dirs, subjects=dict(sorted(subjects.items())))


def _landmark_folder(subject_dir: Path, root: Path) -> Path:
    """The one folder under ``subject_dir`` holding the .mat files (its name varies)."""
    candidates = [p for p in subject_dir.iterdir() if p.is_dir()]
    with_mats = [p for p in candidates if any(p.glob("*.mat"))]
    if len(with_mats) == 1:
        return with_mats[0]
    if not with_mats and any(subject_dir.glob("*.mat")):
        return subject_dir  # .mat files directly in the subject folder
    if len(with_mats) > 1:
        raise ReleaseError(f"{subject_dir.relative_to(root)}: several landmark subfolders "
                           f"{sorted(p.name for p in with_mats)}; expected one")
    if len(candidates) == 1:
        return candidates[0]  # empty: reported as missing landmarks later
    return subject_dir


# --------------------------------------------------------------------------- labels


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


# --------------------------------------------------------------------------- landmarks


def landmark_file_index(landmark_dir: Path) -> dict[int, Path]:
    """0-based frame -> .mat file, understanding both naming schemes."""
    return {frame: Path(landmark_dir) / name
            for frame, name in _landmark_names(Path(landmark_dir)).items()}


def _landmark_names(landmark_dir: Path) -> dict[int, str]:
    index: dict[int, str] = {}
    with os.scandir(landmark_dir) as entries:  # plain strings: 130k files, no Path overhead
        for entry in entries:
            name = entry.name
            if (m := _LM_ZERO_BASED_RE.match(name)) is not None:
                frame = int(m.group(1))
            elif (m := _LM_ONE_BASED_RE.match(name)) is not None:
                frame = int(m.group(1)) - 1
            else:
                continue
            if frame in index:
                raise ReleaseError(f"{landmark_dir}: frame {frame} has two landmark files: "
                                   f"{index[frame]} and {name}")
            index[frame] = name
    return index


_MI_INT8, _MI_UINT8, _MI_INT16, _MI_UINT16, _MI_INT32, _MI_UINT32 = 1, 2, 3, 4, 5, 6
_MI_SINGLE, _MI_DOUBLE, _MI_INT64, _MI_UINT64, _MI_MATRIX, _MI_COMPRESSED = 7, 9, 12, 13, 14, 15
_MI_DTYPES = {
    _MI_INT8: "i1", _MI_UINT8: "u1", _MI_INT16: "i2", _MI_UINT16: "u2", _MI_INT32: "i4",
    _MI_UINT32: "u4", _MI_SINGLE: "f4", _MI_DOUBLE: "f8", _MI_INT64: "i8", _MI_UINT64: "u8",
}


#: Largest file read from a release, and the most a landmark .mat may inflate to. A DISFA label
#: file is ~40 KB and a landmark .mat ~1 KB (66x2 doubles); anything far larger is not DISFA and
#: must not be able to exhaust memory (a 300 KB .mat can inflate to gigabytes).
MAX_RELEASE_FILE_BYTES = 64 * 2**20
MAX_MAT_BYTES = 1 * 2**20


def read_bounded(path: Path | str, rel: str, limit: int = MAX_RELEASE_FILE_BYTES) -> bytes:
    """The bytes of a release file, refusing one larger than ``limit`` before reading it."""
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise ReleaseError(f"{rel}: {size} bytes, more than the {limit} a DISFA file of this "
                               "kind can hold; refused")
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as err:
        raise ReleaseError(f"{rel}: cannot read ({err})") from err


def _inflate(payload: bytes, rel: str) -> bytes:
    """A compressed MAT element, refused (ReleaseError) if it inflates beyond MAX_MAT_BYTES."""
    inflater = zlib.decompressobj()
    data = inflater.decompress(payload, MAX_MAT_BYTES + 1)
    if len(data) > MAX_MAT_BYTES:
        raise ReleaseError(f"{rel}: a compressed variable inflates beyond {MAX_MAT_BYTES} bytes "
                           "(a landmark file holds ~1 KB); refused")
    return data


class _NotSimple(Exception):
    """The fast MAT reader does not handle this file; fall back to scipy."""


def _elements(buf: bytes, endian: str):
    """Yield ``(type, payload)`` of the MAT-5 data elements in ``buf``."""
    pos, end = 0, len(buf)
    while pos + 8 <= end:
        word, nbytes = struct.unpack_from(endian + "II", buf, pos)
        if word >> 16:  # small data element: size in the upper half, data in 4 bytes
            yield word & 0xFFFF, buf[pos + 4 : pos + 4 + (word >> 16)]
            pos += 8
            continue
        start = pos + 8
        yield word, buf[start : start + nbytes]
        pos = start + nbytes
        if word != _MI_COMPRESSED:
            pos += (-nbytes) % 8  # elements are padded to 8 bytes (compressed ones are not)


def _fast_mat_variable(data: bytes, name: str, rel: str = "") -> np.ndarray:
    """Read one real numeric matrix from a MAT-5 file (v6 or v7) without scipy's overhead.

    A DISFA landmark file is one small 66x2 matrix; scipy.io.loadmat spends far longer on
    set-up than on the data, and the release has 130,814 of them.
    """
    if len(data) < 128 or data[:4] == b"\x89HDF":
        raise _NotSimple
    endian = {b"IM": "<", b"MI": ">"}.get(data[126:128])
    if endian is None or struct.unpack_from(endian + "H", data, 124)[0] != 0x0100:
        raise _NotSimple  # not MAT-5 (v7.3 files are HDF5 behind the same header)
    pending = [data[128:]]
    while pending:
        for mtype, payload in _elements(pending.pop(), endian):
            if mtype == _MI_COMPRESSED:
                pending.append(_inflate(payload, rel))
                continue
            if mtype != _MI_MATRIX:
                continue
            sub = list(_elements(payload, endian))
            if len(sub) < 4:
                raise _NotSimple
            flags = struct.unpack_from(endian + "I", sub[0][1], 0)[0]
            if flags & 0x0800 or (flags & 0xFF) not in range(6, 16):  # complex / not numeric
                raise _NotSimple
            dims = np.frombuffer(sub[1][1], dtype=endian + "i4")
            var_name = bytes(sub[2][1]).decode("ascii", "replace")
            if int(np.prod(dims.astype(np.int64))) * 8 > MAX_MAT_BYTES:
                raise ReleaseError(f"{rel}: variable '{var_name}' declares shape "
                                   f"{tuple(int(d) for d in dims)}; too large, refused")
            if var_name != name:
                continue
            real_type, real = sub[3]
            if real_type not in _MI_DTYPES:
                raise _NotSimple
            values = np.frombuffer(real, dtype=endian + _MI_DTYPES[real_type])
            if values.size != int(np.prod(dims)):
                raise _NotSimple
            return values.astype(np.float64).reshape(tuple(dims), order="F")
    raise KeyError(name)


def read_landmark_mat(path: Path | str, rel: str | None = None) -> np.ndarray:
    """The ``pts`` matrix of one landmark file as float64 ``[66, 2]`` (MATLAB 1-based pixels)."""
    rel = rel or str(path)
    data = read_bounded(path, rel, MAX_MAT_BYTES)
    try:
        pts = _fast_mat_variable(data, "pts", rel)
    except KeyError:
        raise ReleaseError(f"{rel}: no variable 'pts'") from None
    except ReleaseError:
        raise
    except (_NotSimple, struct.error, zlib.error, ValueError):
        pts = _slow_mat_variable(path, rel)
    if pts.shape != (N_LANDMARKS, 2):
        raise ReleaseError(f"{rel}: 'pts' has shape {pts.shape}, expected ({N_LANDMARKS}, 2)")
    return pts


def _slow_mat_variable(path: Path, rel: str) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path), variable_names=["pts"])
    except NotImplementedError:  # MATLAB v7.3 files are HDF5
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "pts" not in f:
                    raise ReleaseError(f"{rel}: no variable 'pts'") from None
                if f["pts"].size * 8 > MAX_MAT_BYTES:  # checked before reading the array
                    raise ReleaseError(f"{rel}: 'pts' has shape {f['pts'].shape}; refused")
                return np.asarray(f["pts"][()], dtype=np.float64).T  # HDF5 stores transposed
        except OSError as err:
            raise ReleaseError(f"{rel}: not a readable .mat file ({err})") from err
    except Exception as err:  # scipy raises several types for corrupt files
        raise ReleaseError(f"{rel}: not a readable .mat file ({err})") from err
    if "pts" not in mat:
        raise ReleaseError(f"{rel}: no variable 'pts'")
    return np.asarray(mat["pts"], dtype=np.float64)


@dataclass
class Landmarks:
    """Per-frame landmarks of one subject in 0-based pixels (NaN where a file is missing)."""

    points: np.ndarray  # [N, 66, 2] float32
    missing: np.ndarray  # [N] bool: no file, left NaN (a run of missing files)
    filled: np.ndarray  # [N] bool: no file, copied from the neighbouring frame
    extra_files: int = 0  # files for frames beyond N (ignored)


def read_landmarks(files: SubjectFiles, n_frames: int) -> Landmarks:
    """Read the subject's landmark files for frames ``0..n_frames-1``.

    An isolated missing file (its neighbours present) is filled with the previous frame's
    landmarks, or the next frame's at the start (as OpenFace does for SN031 frame 3631);
    longer gaps stay NaN and are dropped downstream as ``landmarks_missing``.
    """
    if files.landmark_dir is None:
        raise ReleaseError(f"{files.subject}: no landmark folder Landmark_Points/{files.subject}")
    index = _landmark_names(files.landmark_dir)
    rel_dir = files.rel(files.landmark_dir)
    if not index:
        raise ReleaseError(f"{rel_dir}: no landmark .mat files")
    folder = str(files.landmark_dir)
    points = np.full((n_frames, N_LANDMARKS, 2), np.nan, dtype=np.float32)
    present = np.zeros(n_frames, dtype=bool)
    for frame, name in index.items():
        if 0 <= frame < n_frames:
            # MATLAB pixels are 1-based; the pipeline works in 0-based pixels.
            points[frame] = read_landmark_mat(f"{folder}/{name}", f"{rel_dir}/{name}") - 1.0
            present[frame] = True
    extra = sum(1 for frame in index if not 0 <= frame < n_frames)
    filled = np.zeros(n_frames, dtype=bool)
    for frame in np.flatnonzero(~present):
        prev_ok = frame > 0 and present[frame - 1]
        next_ok = frame + 1 < n_frames and present[frame + 1]
        before = frame == 0 or prev_ok
        after = frame == n_frames - 1 or next_ok
        if before and after and (prev_ok or next_ok):
            points[frame] = points[frame - 1] if prev_ok else points[frame + 1]
            filled[frame] = True
    missing = ~present & ~filled
    return Landmarks(points=points, missing=missing, filled=filled, extra_files=extra)


# --------------------------------------------------------------------------- error log

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
    ``pipeline.disfa.read_bad_frame_csv``; other CSVs and spreadsheets (.xls via xlrd, .xlsx if
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

"""The landmark files of a DISFA release: one MATLAB ``.mat`` per frame (66 points, ``pts``).

Both naming schemes are understood: ``SN001_0000_lm.mat`` (0-based frame) and ``l0NNNN_lm.mat``
(1-based frame). A small MAT-5 reader handles the release's files without scipy (130k files);
anything it does not know goes to scipy.
"""
from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .facts import N_LANDMARKS
from .layout import ReleaseError, SubjectFiles, read_bounded

#: ``SN001_0000_lm.mat``: 0-based frame number.
_LM_ZERO_BASED_RE = re.compile(r"^sn\d{3}_(\d+)_lm\.mat$", re.IGNORECASE)
#: ``l03631_lm.mat``: 1-based frame number (SN031 and others).
_LM_ONE_BASED_RE = re.compile(r"^l(\d+)_lm\.mat$", re.IGNORECASE)
#: The most a landmark .mat may inflate to (it holds ~1 KB).
MAX_MAT_BYTES = 1 * 2**20


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

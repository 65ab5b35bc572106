"""Read BP4D's 49-point landmark files (one ``.mat`` per sequence) into 0-based pixels.

The files' internals are UNVERIFIED (BP4D_FACTS.md), so exactly two forms are accepted and
anything else is refused with the file named:

* MATLAB v7.3 (HDF5), as the one public loader reads ``2DFeatures/F001_T1.mat``: ``fit/pred``
  holds one reference per frame, each a MATLAB 49x2 matrix (stored 2x49 in HDF5, hence the
  transpose); an empty matrix means "no landmarks for this frame".
* MATLAB v5 with one numeric array of 49 x 2 points per frame, stacked ``[N, 49, 2]`` or
  MATLAB-style ``[49, 2, N]``; a frame of NaN or all zeros has no landmarks.

Rows map to frames in one of two ways, decided by the count: as many rows as the sequence's CSV
has rows means row i is the i-th CSV frame; at least as many as its last CSV frame means row i
is frame i + 1 (the file covers the video from frame 1). Any other count fits neither and is
refused. Coordinates are MATLAB 1-based (JAA subtracts 1, "indexed from 0"), so 1 is subtracted.
"""
from __future__ import annotations

import os

import numpy as np

from ..disfa.layout import ReleaseError
from .facts import N_LANDMARKS

#: A sequence's landmark file holds at most ~3000 frames of 98 doubles (plus HDF5 overhead).
MAX_LANDMARK_FILE_BYTES = 256 * 2**20


def _hdf5_points(path, rel: str) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            if "fit/pred" not in handle:
                raise ReleaseError(f"{rel}: a v7.3 (HDF5) .mat without fit/pred; its top level "
                                   f"holds {sorted(handle.keys())}")
            refs = np.asarray(handle["fit/pred"][()]).reshape(-1)
            out = np.full((len(refs), N_LANDMARKS, 2), np.nan, dtype=np.float32)
            for i, ref in enumerate(refs):
                try:
                    node = handle[ref]
                except (TypeError, ValueError, KeyError):
                    raise ReleaseError(f"{rel}: fit/pred entry {i + 1} is not a reference to "
                                       "a matrix") from None
                arr = np.asarray(node[()])
                if int(node.attrs.get("MATLAB_empty", 0)) or arr.size == 0:
                    continue  # no landmarks for this frame
                if arr.shape != (2, N_LANDMARKS):
                    raise ReleaseError(f"{rel}: fit/pred entry {i + 1} has shape "
                                       f"{tuple(reversed(arr.shape))} in MATLAB terms, "
                                       f"expected {N_LANDMARKS}x2")
                out[i] = arr.T
    except OSError as err:
        raise ReleaseError(f"{rel}: cannot read the HDF5 .mat ({err})") from err
    return out


def _v5_points(path, rel: str) -> np.ndarray:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
    except (ValueError, TypeError, OSError, NotImplementedError) as err:
        raise ReleaseError(f"{rel}: cannot read the .mat ({err})") from err
    arrays = {k: np.asarray(v) for k, v in mat.items() if not k.startswith("__")
              and isinstance(v, np.ndarray) and v.dtype.kind in "fiu"}
    fits = {}
    for name, arr in arrays.items():
        if arr.ndim == 3 and arr.shape[1:] == (N_LANDMARKS, 2):
            fits[name] = arr
        elif arr.ndim == 3 and arr.shape[:2] == (N_LANDMARKS, 2):
            fits[name] = np.moveaxis(arr, 2, 0)
        elif arr.shape == (N_LANDMARKS, 2):
            fits[name] = arr[None]
    if len(fits) != 1:
        shapes = ", ".join(f"{k} {v.shape}" for k, v in arrays.items()) or "no numeric array"
        what = "several arrays fit" if fits else "unknown shape"
        raise ReleaseError(f"{rel}: {what}: expected one array of {N_LANDMARKS}x2 points per "
                           f"frame ([N,{N_LANDMARKS},2] or [{N_LANDMARKS},2,N]); found {shapes}")
    pts = next(iter(fits.values())).astype(np.float32)
    empty = ~np.isfinite(pts).all(axis=(1, 2)) | (pts == 0).all(axis=(1, 2))
    pts[empty] = np.nan
    return pts


def read_landmark_file(path, rel: str) -> np.ndarray:
    """The file's rows ``[R, 49, 2]`` float32, MATLAB 1-based as stored, NaN where empty."""
    import h5py

    try:
        size = os.stat(path).st_size
    except OSError as err:
        raise ReleaseError(f"{rel}: cannot read ({err})") from err
    if size > MAX_LANDMARK_FILE_BYTES:
        raise ReleaseError(f"{rel}: {size} bytes, more than a BP4D landmark file holds; refused")
    if h5py.is_hdf5(str(path)):
        return _hdf5_points(path, rel)
    return _v5_points(path, rel)


def landmarks_for_frames(rows: np.ndarray, frames: np.ndarray, rel: str) -> np.ndarray:
    """0-based points ``[N, 49, 2]`` for the CSV ``frames`` from a file's 1-based ``rows``."""
    if len(rows) == len(frames):
        picked = rows
    elif len(frames) and len(rows) >= int(frames.max()) and int(frames.min()) >= 1:
        picked = rows[frames - 1]
    else:
        last = int(frames.max()) if len(frames) else 0
        raise ReleaseError(f"{rel}: {len(rows)} landmark frames fit neither the sequence's "
                           f"{len(frames)} CSV rows nor its frames 1..{last}")
    return picked.astype(np.float32) - 1.0

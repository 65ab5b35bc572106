"""File writers of the BP4D twin: MATLAB v5 and v7.3 (HDF5) landmark files, text files.

The v7.3 file has what the one public loader of BP4D's ``2DFeatures/*.mat`` reads: ``fit/pred``,
one object reference per frame to a MATLAB 49x2 double (stored 2x49 in HDF5), an empty matrix
(``MATLAB_empty``) where a frame has no landmarks, and MATLAB's 512-byte header.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np


def write_text(path: Path, text: str) -> None:
    """Write ``text`` (LF line ends) atomically, making the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(text.encode())
    os.replace(tmp, path)


def write_mat_v5(path: Path, pts_1based: np.ndarray, layout: str) -> None:
    """One array ``fpoints`` of every frame's points, ``[N,49,2]`` or MATLAB-style ``[49,2,N]``;
    NaN rows where a frame has no landmarks."""
    import scipy.io

    arr = np.asarray(pts_1based, dtype=np.float64)
    if layout == "49,2,N":
        arr = np.moveaxis(arr, 0, 2)
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"fpoints": arr})
    data = bytearray(buf.getvalue())
    data[:116] = b"MATLAB 5.0 MAT-file, Created by: pipeline.synth (BP4D twin)".ljust(116)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))


def write_mat_v73(path: Path, pts_1based: np.ndarray) -> None:
    """A v7.3 .mat with ``fit/pred``: one reference per frame (NaN frames -> empty matrix)."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w", userblock_size=512) as handle:
        refs = handle.create_group("#refs#")
        fit = handle.create_group("fit")
        fit.attrs["MATLAB_class"] = np.bytes_("struct")
        pred = fit.create_dataset("pred", shape=(len(pts_1based), 1), dtype=h5py.ref_dtype)
        pred.attrs["MATLAB_class"] = np.bytes_("cell")
        for i, pts in enumerate(np.asarray(pts_1based, dtype=np.float64)):
            if np.isnan(pts).any():
                node = refs.create_dataset(f"f{i}", data=np.zeros(2, dtype=np.uint64))
                node.attrs["MATLAB_empty"] = np.uint8(1)
            else:
                node = refs.create_dataset(f"f{i}", data=pts.T)
            node.attrs["MATLAB_class"] = np.bytes_("double")
            pred[i, 0] = node.ref
    header = b"MATLAB 7.3 MAT-file, Platform: posix, Created by: pipeline.synth (BP4D twin)"
    with open(tmp, "r+b") as fh:
        fh.write(header.ljust(116) + bytes(8) + b"\x00\x02IM")
    os.replace(tmp, path)

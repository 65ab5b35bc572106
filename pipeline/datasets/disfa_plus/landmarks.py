"""DISFA+ ``<trial>_FaceCropped.mat``: per frame a face crop and its landmarks in the CROP's
coordinates (structure UNVERIFIED: ``FaceImg_CropResize``, 1xN cells or structs with
``imgID``, ``ImgCropped``, ``LndPntCropped``; anonymous sources only).

The crop transform is not stored, so these points cannot be put back into the full frame:
the adapter gives NaN full-frame landmarks (the aligner falls back to its detector) and keeps
what each file held (:class:`CropLandmarks`) so a reader can check the facts on a real file.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("pipeline.datasets.disfa_plus")

VARIABLE = "FaceImg_CropResize"
FIELDS = ("imgID", "ImgCropped", "LndPntCropped")
#: A trial's file holds its crops (~90 x 200x200x3 bytes); anything far larger is refused.
MAX_MAT_BYTES = 512 * 2**20


@dataclass
class CropLandmarks:
    """What one ``_FaceCropped.mat`` held: per frame number, points in crop pixels."""

    path: Path
    points: dict[int, np.ndarray] = field(default_factory=dict)
    crop_shape: tuple[int, ...] | None = None
    problem: str | None = None  # why nothing (or not everything) could be read

    def summary(self) -> dict:
        sizes = sorted({len(p) for p in self.points.values()})
        return {"file": self.path.name, "frames": len(self.points), "points": sizes,
                "crop_shape": list(self.crop_shape) if self.crop_shape else None,
                "problem": self.problem}


def _frame_of(img_id: object) -> int | None:
    text = str(np.squeeze(img_id)) if img_id is not None else ""
    stem = Path(text.strip()).stem
    return int(stem) if stem.isdigit() else None


def _element_fields(element: object) -> tuple[object, object, object] | None:
    """(imgID, ImgCropped, LndPntCropped) of one element: a struct (dict) or a 3-cell."""
    if isinstance(element, dict):
        if all(k in element for k in FIELDS):
            return tuple(element[k] for k in FIELDS)  # type: ignore[return-value]
        return None
    if isinstance(element, (list, tuple, np.ndarray)) and len(element) == 3:
        return element[0], element[1], element[2]
    return None


def _elements(cells: object) -> list:
    """The per-frame elements of the variable as ``loadmat(simplify_cells=True)`` gives it: a
    list of structs (dicts), an array of 3-cells, or one element alone (a 1x1 variable)."""
    if isinstance(cells, dict):
        return [cells]
    if isinstance(cells, np.ndarray):
        seq = list(np.ravel(cells)) if cells.dtype == object else []
    else:
        seq = list(cells) if isinstance(cells, (list, tuple)) else []
    if len(seq) == 3 and isinstance(seq[0], str):  # one frame's (imgID, image, points)
        return [seq]
    return seq


def read_crop_landmarks(path: Path) -> CropLandmarks:
    """Read ``path`` defensively: an unreadable or unexpected file is reported, not raised
    (no full-frame landmark depends on it)."""
    import scipy.io

    out = CropLandmarks(Path(path))
    try:
        if Path(path).stat().st_size > MAX_MAT_BYTES:
            out.problem = f"larger than {MAX_MAT_BYTES} bytes; not read"
            return out
        mat = scipy.io.loadmat(str(path), simplify_cells=True, variable_names=[VARIABLE])
    except Exception as err:  # noqa: BLE001 - v7.3 (HDF5), truncated, not a .mat: reported,
        # never fatal, since no full-frame landmark comes from this file
        out.problem = f"cannot read ({type(err).__name__}: {err})"
        return out
    cells = mat.get(VARIABLE)
    if cells is None:
        out.problem = f"no variable {VARIABLE!r} (has {sorted(k for k in mat if k[0] != '_')})"
        return out
    for pos, element in enumerate(_elements(cells)):
        parts = _element_fields(element)
        pts = None if parts is None else np.asarray(parts[2], dtype=float)
        if pts is None or pts.ndim != 2 or 2 not in pts.shape:
            out.problem = f"element {pos}: not (imgID, ImgCropped, LndPntCropped [P, 2])"
            continue
        frame = _frame_of(parts[0])
        out.points[pos if frame is None else frame] = pts if pts.shape[1] == 2 else pts.T
        if out.crop_shape is None:
            out.crop_shape = tuple(np.shape(parts[1]))
    return out

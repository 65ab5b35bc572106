"""Two-point similarity face alignment (the TRA-Net paper's pre-processing).

The paper aligns every frame with a similarity transform chosen so that (1) the midpoint of the
nose root and nose tip lands near the centre of the output and (2) the middle of the lower jaw
(the chin) lands near the bottom. Two point correspondences determine a similarity transform
(scale, rotation, translation) exactly, so both points land *on* their targets and the face is
put upright: the nose-to-chin line becomes vertical.

This module knows nothing about DISFA files: ``pipeline.align`` calls it with the release's
landmarks and ``model.predict`` with dlib's, both in DISFA's 66-point order.

Coordinates are 0-based pixels with pixel centres on integers (OpenCV's convention), so a target
given as a fraction ``f`` of the output size ``S`` sits at ``f * S`` pixels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

from .datasets.disfa.facts import CHIN, NOSE_ROOT, NOSE_TIP

#: Default targets as fractions of the output size (x, y). The nose midpoint goes to the centre;
#: the chin goes 7/8 of the way down, which keeps the brows and the jaw inside the crop for
#: DISFA's near-frontal faces (the forehead is cut at about the hairline) while leaving a margin
#: below the chin for open-mouth frames.
DEFAULT_NOSE_FRACTION: tuple[float, float] = (0.5, 0.5)
DEFAULT_CHIN_FRACTION: tuple[float, float] = (0.5, 0.875)
DEFAULT_SIZE = 224
#: ``replicate`` repeats the frame's edge pixels where the crop leaves the source frame; it avoids
#: hard black borders that a CNN could key on. ``constant`` fills with black instead.
BORDER_MODES = {"replicate": cv2.BORDER_REPLICATE, "constant": cv2.BORDER_CONSTANT}


class AlignmentError(ValueError):
    """The landmarks cannot define an alignment (NaN, or nose and chin coincide)."""


def _pair(value: Sequence[float], name: str) -> tuple[float, float]:
    values = tuple(float(v) for v in value)
    if len(values) != 2 or not all(np.isfinite(values)):
        raise ValueError(f"{name} must be two finite numbers (x, y), got {value!r}")
    return values  # type: ignore[return-value]


@dataclass
class AlignmentConfig:
    """Output size and where the nose midpoint and chin land, in output pixels.

    ``nose_target``/``chin_target`` left as ``None`` take the default fractions scaled by
    ``size``; :meth:`from_fractions` builds a config from fractions (what the CLI takes).
    """

    size: int = DEFAULT_SIZE
    nose_target: tuple[float, float] | None = None
    chin_target: tuple[float, float] | None = None
    border: str = "replicate"
    #: Recorded for provenance; OpenCV's bilinear interpolation is what ``align_face`` uses.
    interpolation: str = field(default="linear", init=False)

    def __post_init__(self) -> None:
        self.size = int(self.size)
        if self.size < 8:
            raise ValueError(f"size must be at least 8 pixels, got {self.size}")
        if self.border not in BORDER_MODES:
            raise ValueError(f"border must be one of {sorted(BORDER_MODES)}, got {self.border!r}")
        s = self.size
        if self.nose_target is None:
            self.nose_target = (DEFAULT_NOSE_FRACTION[0] * s, DEFAULT_NOSE_FRACTION[1] * s)
        if self.chin_target is None:
            self.chin_target = (DEFAULT_CHIN_FRACTION[0] * s, DEFAULT_CHIN_FRACTION[1] * s)
        self.nose_target = _pair(self.nose_target, "nose_target")
        self.chin_target = _pair(self.chin_target, "chin_target")
        if np.hypot(self.chin_target[0] - self.nose_target[0],
                    self.chin_target[1] - self.nose_target[1]) < 1.0:
            raise ValueError("nose_target and chin_target must be at least one pixel apart")

    @classmethod
    def from_fractions(
        cls,
        size: int = DEFAULT_SIZE,
        nose: Sequence[float] = DEFAULT_NOSE_FRACTION,
        chin: Sequence[float] = DEFAULT_CHIN_FRACTION,
        border: str = "replicate",
    ) -> "AlignmentConfig":
        nx, ny = _pair(nose, "nose fraction")
        cx, cy = _pair(chin, "chin fraction")
        return cls(size=size, nose_target=(nx * size, ny * size),
                   chin_target=(cx * size, cy * size), border=border)

    @property
    def nose_fraction(self) -> tuple[float, float]:
        return (self.nose_target[0] / self.size, self.nose_target[1] / self.size)

    @property
    def chin_fraction(self) -> tuple[float, float]:
        return (self.chin_target[0] / self.size, self.chin_target[1] / self.size)


def nose_and_chin(landmarks66: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two anchor points: mean of nose root (27) and nose tip (30), and the chin (8)."""
    pts = np.asarray(landmarks66, dtype=np.float64)
    return (pts[NOSE_ROOT] + pts[NOSE_TIP]) / 2.0, pts[CHIN].copy()


def similarity_matrix(
    nose_src: Sequence[float],
    chin_src: Sequence[float],
    nose_dst: Sequence[float],
    chin_dst: Sequence[float],
) -> np.ndarray:
    """The 2x3 similarity that maps ``nose_src -> nose_dst`` and ``chin_src -> chin_dst`` exactly.

    In complex numbers a similarity is ``z -> a z + t``; two correspondences give
    ``a = (chin_dst - nose_dst) / (chin_src - nose_src)`` and ``t = nose_dst - a nose_src``.
    """
    ns = complex(*map(float, nose_src))
    cs = complex(*map(float, chin_src))
    nd = complex(*map(float, nose_dst))
    cd = complex(*map(float, chin_dst))
    span = cs - ns
    if not np.isfinite(span) or abs(span) < 1e-6:
        raise AlignmentError(f"nose {nose_src} and chin {chin_src} do not define an alignment")
    a = (cd - nd) / span
    t = nd - a * ns
    return np.array([[a.real, -a.imag, t.real], [a.imag, a.real, t.imag]], dtype=np.float64)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine matrix to ``[N, 2]`` points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ matrix[:, :2].T + matrix[:, 2]


def alignment_matrix(landmarks66: np.ndarray, cfg: AlignmentConfig) -> np.ndarray:
    """The similarity that puts these landmarks' nose midpoint and chin on ``cfg``'s targets."""
    pts = np.asarray(landmarks66, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] <= max(NOSE_ROOT, NOSE_TIP, CHIN):
        raise AlignmentError(f"expected landmarks [66, 2], got shape {pts.shape}")
    nose, chin = nose_and_chin(pts)
    if not (np.all(np.isfinite(nose)) and np.all(np.isfinite(chin))):
        raise AlignmentError("nose or chin landmark is not finite")
    return similarity_matrix(nose, chin, cfg.nose_target, cfg.chin_target)


def alignment_matrices(landmarks: np.ndarray, cfg: AlignmentConfig) -> np.ndarray:
    """``[N, 2, 3]`` matrices for ``[N, 66, 2]`` landmarks: :func:`alignment_matrix` for a
    whole video at once (NaN rows where nose and chin coincide or are not finite)."""
    pts = np.asarray(landmarks, dtype=np.float64)
    nose = (pts[:, NOSE_ROOT] + pts[:, NOSE_TIP]) / 2.0
    chin = pts[:, CHIN]
    ns = nose[:, 0] + 1j * nose[:, 1]
    span = (chin[:, 0] + 1j * chin[:, 1]) - ns
    nd, cd = complex(*cfg.nose_target), complex(*cfg.chin_target)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = (cd - nd) / span
        t = nd - a * ns
    m = np.empty((len(pts), 2, 3), dtype=np.float64)
    m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a.real, -a.imag, t.real
    m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = a.imag, a.real, t.imag
    m[~(np.abs(span) >= 1e-6)] = np.nan  # also catches NaN spans
    return m


def warp(image: np.ndarray, matrix: np.ndarray, cfg: AlignmentConfig) -> np.ndarray:
    """Warp ``image`` (any channel order) into the ``size x size`` aligned frame."""
    # warpAffine only computes the small output, so the cost does not depend on the source size.
    return cv2.warpAffine(
        image, matrix, (cfg.size, cfg.size), flags=cv2.INTER_LINEAR,
        borderMode=BORDER_MODES[cfg.border], borderValue=0,
    )


def align_face(
    image: np.ndarray, landmarks66: np.ndarray, cfg: AlignmentConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align one face.

    Args:
        image: uint8 ``[H, W, 3]`` (RGB in, RGB out; the channel order is passed through).
        landmarks66: ``[66, 2]`` (x, y) 0-based pixel coordinates in ``image``, DISFA order.
        cfg: output size and targets (defaults: 224, nose centre, chin at 7/8 height).

    Returns:
        ``(aligned [S, S, 3] uint8, aligned landmarks [66, 2] float32, M 2x3 float64)``.
    """
    cfg = cfg or AlignmentConfig()
    matrix = alignment_matrix(landmarks66, cfg)
    aligned = warp(image, matrix, cfg)
    points = transform_points(landmarks66, matrix).astype(np.float32)
    return aligned, points, matrix

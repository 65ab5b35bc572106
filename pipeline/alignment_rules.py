"""Alignment rules for 49-point landmarks (BP4D, DISFA+), which have no jaw and so no chin.

Two rules (``pipeline.align --alignment``):

* ``nose-chin``: the paper's two-point similarity (:mod:`pipeline.alignment`): the midpoint of
  the nose root and nose tip to the centre, the chin near the bottom. The 49 points have the
  nose but not the chin, so the chin comes from a 68-point detector run on the same frame.
* ``jaa``: JAA-Net's similarity, the rule BP4D's peers (JAA, ARL, ADLD) use. Derived from the
  facts (BP4D_FACTS.md "Landmarks"), in our own words:

  1. the key points are the two eye centres (means of 49-point 19-24 and 25-30), the nose tip
     (13) and the mouth corners (31, 37);
  2. rotate about the origin by the angle that makes the line from the image-left eye centre
     to the image-right one horizontal;
  3. take the rotated key points' bounding box: its centre ``c`` and its larger side ``L``;
     the crop is a square of side ``box_enlarge * L`` (2.9) centred on ``c``;
  4. scale that square onto ``size`` pixels so that its edges land on pixel centres 0 and
     ``size - 1``: ``x -> s (R x - c) + (size - 1) / 2`` with ``s = (size - 1) / (2.9 L)``;
  5. warp with bilinear interpolation and grey (128) where the crop leaves the frame.

  Landmarks are 0-based pixels here (the release's 1-based ones have had 1 subtracted by the
  adapter). ``tests/test_jaa_alignment.py`` checks the rule on the two frames JAA publishes.

Coordinates are 0-based pixels with pixel centres on integers (OpenCV's convention).
"""
from __future__ import annotations

import cv2
import numpy as np

from .alignment import BORDER_MODES, AlignmentConfig, similarity_matrix

#: ``--alignment`` choices; ``nose-chin`` is the paper's (and DISFA's only) rule.
ALIGNMENT_RULES = ("nose-chin", "jaa")
#: JAA's crop: the key points' bounding box enlarged 2.9 times, 200 px, grey border.
JAA_BOX_ENLARGE = 2.9
JAA_DEFAULT_SIZE = 200
JAA_BORDER_VALUE = 128
#: 49-point indices (BP4D_FACTS.md "Landmarks"): DISFA's 66 minus the 17 jaw points.
EYE_LEFT_49 = tuple(range(19, 25))
EYE_RIGHT_49 = tuple(range(25, 31))
NOSE_ROOT_49, NOSE_TIP_49 = 10, 13  # 66-point 27 and 30
MOUTH_CORNERS_49 = (31, 37)
#: iBUG 68-point indices kept, in order, for the 49 points: no jaw (0-16), no inner-mouth
#: corners (60, 64).
FROM_68_TO_49 = np.array([i for i in range(17, 68) if i not in (60, 64)], dtype=np.intp)
#: 68-point index of the chin (the middle of the jaw).
CHIN_68 = 8


def to_49(points68: np.ndarray) -> np.ndarray:
    """A 68-point detector's landmarks (``[..., 68, 2]``) in the 49-point order."""
    pts = np.asarray(points68)
    if pts.shape[-2:] != (68, 2):
        raise ValueError(f"expected landmarks of shape [..., 68, 2], got {pts.shape}")
    return pts[..., FROM_68_TO_49, :]


def jaa_key_points(points49: np.ndarray) -> np.ndarray:
    """``[N, 5, 2]``: left eye centre, right eye centre, nose tip, the two mouth corners."""
    pts = np.asarray(points49, dtype=np.float64)
    eyes = [pts[:, list(EYE_LEFT_49)].mean(axis=1), pts[:, list(EYE_RIGHT_49)].mean(axis=1)]
    return np.stack([*eyes, pts[:, NOSE_TIP_49], pts[:, MOUTH_CORNERS_49[0]],
                     pts[:, MOUTH_CORNERS_49[1]]], axis=1)


def jaa_matrices(points49: np.ndarray, size: int = JAA_DEFAULT_SIZE,
                 box_enlarge: float = JAA_BOX_ENLARGE) -> np.ndarray:
    """``[N, 2, 3]`` JAA similarity matrices for ``[N, 49, 2]`` 0-based landmarks; NaN rows
    where the key points are not finite or coincide."""
    pts = np.asarray(points49, dtype=np.float64)
    if pts.ndim != 3 or pts.shape[1:] != (49, 2):
        raise ValueError(f"expected landmarks of shape [N, 49, 2], got {pts.shape}")
    key = jaa_key_points(pts)
    eye_line = key[:, 1] - key[:, 0]
    with np.errstate(divide="ignore", invalid="ignore"):
        length = np.hypot(eye_line[:, 0], eye_line[:, 1])
        cos, sin = eye_line[:, 0] / length, eye_line[:, 1] / length
        # Rotation by minus the eye line's angle: (x, y) -> (cos x + sin y, -sin x + cos y).
        rot = np.stack([np.stack([cos, sin], -1), np.stack([-sin, cos], -1)], axis=1)
        turned = np.einsum("nij,nkj->nki", rot, key)
        low, high = turned.min(axis=1), turned.max(axis=1)
        centre = (low + high) / 2.0
        side = (high - low).max(axis=1)
        scale = (size - 1) / (box_enlarge * side)
    m = np.empty((len(pts), 2, 3), dtype=np.float64)
    m[:, :, :2] = scale[:, None, None] * rot
    m[:, :, 2] = (size - 1) / 2.0 - scale[:, None] * centre
    m[~(np.isfinite(m).all(axis=(1, 2)) & (side > 1e-6))] = np.nan
    return m


def nose_chin_matrix_49(points49: np.ndarray, chin: np.ndarray, cfg: AlignmentConfig
                        ) -> np.ndarray:
    """The paper's rule for 49 points: nose midpoint from the 49 points (root 10, tip 13),
    the chin from a 68-point detector (its point 8), each onto ``cfg``'s target."""
    pts = np.asarray(points49, dtype=np.float64)
    nose = (pts[NOSE_ROOT_49] + pts[NOSE_TIP_49]) / 2.0
    return similarity_matrix(nose, np.asarray(chin, dtype=np.float64), cfg.nose_target,
                             cfg.chin_target)


def warp_with_rule(image: np.ndarray, matrix: np.ndarray, size: int, rule: str,
                   border: str = "replicate", dst: np.ndarray | None = None) -> np.ndarray:
    """Warp ``image`` into the ``size x size`` crop: ``jaa`` fills outside the frame with grey
    128 as JAA does (its models were trained on that border), ``nose-chin`` with ``border``."""
    if rule == "jaa":
        mode, value = cv2.BORDER_CONSTANT, (JAA_BORDER_VALUE,) * 3
    else:
        mode, value = BORDER_MODES[border], (0, 0, 0)
    return cv2.warpAffine(image, matrix, (size, size), dst=dst, flags=cv2.INTER_LINEAR,
                          borderMode=mode, borderValue=value)

"""Head pose and a landmark-fit confidence from 68 landmarks, the way OpenFace reports them.

A generic rigid 3D face (written here from average adult proportions, millimetres) is fitted
to the image landmarks with ``cv2.solvePnP``. Axes are OpenFace's camera axes: x to the image's
right, y down, z away from the camera; the model faces the camera when the rotation is zero.
The rotation matrix is split as OpenFace does, ``R = Rx(pose_Rx) @ Ry(pose_Ry) @ Rz(pose_Rz)``
(scipy's intrinsic "XYZ" Euler angles), in radians:

- ``pose_Rx`` (pitch) > 0: the face turns downward (chin toward the chest);
- ``pose_Ry`` (yaw) > 0: the face turns toward the image's left (the subject's right);
- ``pose_Rz`` (roll) > 0: the face rolls clockwise in the image (the eye on the image's right
  drops).

Without a calibrated camera the focal length is OpenFace's default guess (500 px at 640x480,
scaled with the frame), as OpenFace's own is. Against OpenFace on its own landmarks (see
:func:`openface_agreement`, docs/predict.md) yaw and roll agree within a degree; pitch differs
by the generic face's misfit to the person (9.5 degrees on OpenFace's test clip). The points
used are brows' ends, eyes, nose, mouth corners, chin and jaw at ear level; the translation
``pose_T*`` is the model's origin (the nose bridge) in millimetres.

``confidence`` is how well that rigid face explains the landmarks: ``exp(-rms / (0.1 * iod))``
with ``rms`` the reprojection error and ``iod`` the outer-eye-corner distance in pixels. Clear
near-frontal faces measured 0.45-0.71 (docs/predict.md); landmarks placed on something that
is not a face, strong profile views or failed landmark fits give low values. It is not OpenFace's landmark-detector certainty.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

if TYPE_CHECKING:
    import pandas as pd

#: iBUG 68-point index -> generic 3D position (mm; x image-right, y down, z away from camera).
GENERIC_FACE_3D: dict[int, tuple[float, float, float]] = {
    0: (-69.0, 6.0, 75.0), 16: (69.0, 6.0, 75.0),          # jaw at ear level
    8: (0.0, 114.0, 10.0),                                  # chin
    17: (-57.0, -14.0, 20.0), 21: (-15.0, -15.0, 0.0),      # brow ends (image left)
    22: (15.0, -15.0, 0.0), 26: (57.0, -14.0, 20.0),        # brow ends (image right)
    27: (0.0, 0.0, 0.0),                                    # nose bridge (origin)
    30: (0.0, 38.0, -25.0), 33: (0.0, 48.0, -10.0),         # nose tip, below the nose
    31: (-15.0, 44.0, -5.0), 35: (15.0, 44.0, -5.0),        # nostrils
    36: (-45.0, 0.0, 18.0), 39: (-20.0, 3.0, 8.0),          # eye corners (image left)
    42: (20.0, 3.0, 8.0), 45: (45.0, 0.0, 18.0),            # eye corners (image right)
    48: (-33.0, 56.0, 5.0), 54: (33.0, 56.0, 5.0),          # mouth corners
}
_INDEX = np.array(sorted(GENERIC_FACE_3D), dtype=np.int64)
_MODEL = np.array([GENERIC_FACE_3D[i] for i in _INDEX], dtype=np.float64)
#: Reprojection error (as a fraction of the outer-eye distance) at which confidence is 1/e.
FIT_SCALE = 0.1


def camera_matrix(width: int, height: int) -> np.ndarray:
    """OpenFace's default intrinsics without calibration: f = 500 px at 640x480, scaled."""
    f = (500.0 * width / 640.0 + 500.0 * height / 480.0) / 2.0
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def rotation_to_euler(matrix: np.ndarray) -> tuple[float, float, float]:
    """(Rx, Ry, Rz) with ``matrix = Rx @ Ry @ Rz`` (OpenFace's order), radians."""
    rx, ry, rz = Rotation.from_matrix(matrix).as_euler("XYZ")
    return float(rx), float(ry), float(rz)


def estimate_pose(landmarks68: np.ndarray, frame_size: tuple[int, int]
                  ) -> tuple[tuple[float, float, float], tuple[float, float, float], float]:
    """``((pose_Rx, pose_Ry, pose_Rz), (pose_Tx, pose_Ty, pose_Tz), confidence)`` for one face;
    ``frame_size`` = (w, h). The translation is the generic face's origin (the nose bridge) in
    the camera frame, millimetres, under the default camera."""
    nan3 = (float("nan"),) * 3
    points = np.asarray(landmarks68, dtype=np.float64)[_INDEX]
    camera = camera_matrix(*frame_size)
    ok, rvec, tvec = cv2.solvePnP(_MODEL, points, camera, None, flags=cv2.SOLVEPNP_EPNP)
    if ok:
        ok, rvec, tvec = cv2.solvePnP(_MODEL, points, camera, None, rvec, tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok or tvec[2, 0] <= 0:
        return nan3, nan3, 0.0
    projected, _ = cv2.projectPoints(_MODEL, rvec, tvec, camera, None)
    rms = float(np.sqrt(np.mean(np.sum((projected[:, 0] - points) ** 2, axis=1))))
    iod = float(np.linalg.norm(points[_INDEX.tolist().index(45)] - points[_INDEX.tolist().index(36)]))
    confidence = float(np.exp(-rms / (FIT_SCALE * max(iod, 1.0))))
    translation = tuple(float(v) for v in tvec[:, 0])
    return rotation_to_euler(cv2.Rodrigues(rvec)[0]), translation, confidence


def head_pose(landmarks68: np.ndarray, frame_size: tuple[int, int]
              ) -> tuple[tuple[float, float, float], float]:
    """``((pose_Rx, pose_Ry, pose_Rz), confidence)`` for one face; ``frame_size`` = (w, h)."""
    rotation, _, confidence = estimate_pose(landmarks68, frame_size)
    return rotation, confidence


def project_generic_face(angles: tuple[float, float, float], frame_size: tuple[int, int],
                         distance_mm: float = 600.0) -> np.ndarray:
    """68x2 landmarks of the generic face turned by ``angles`` (Rx, Ry, Rz) at ``distance_mm``
    in front of the default camera; points the model lacks are NaN. For tests and checks."""
    rotation = Rotation.from_euler("XYZ", angles).as_matrix()
    rvec = cv2.Rodrigues(rotation)[0]
    tvec = np.array([[0.0], [0.0], [distance_mm]])
    projected, _ = cv2.projectPoints(_MODEL, rvec, tvec, camera_matrix(*frame_size), None)
    out = np.full((68, 2), np.nan)
    out[_INDEX] = projected[:, 0]
    return out


def openface_agreement(openface: "pd.DataFrame", frame_size: tuple[int, int]) -> dict[str, Any]:
    """This module's pose and confidence on OpenFace's own 2D landmarks (rows of an OpenFace 2
    CSV with ``x_0..y_67`` and ``pose_R*``), against OpenFace's pose for the same rows: the mean
    absolute difference per axis in degrees, and the range of our confidence. The figures
    docs/predict.md states come from this (tests/data/openface2_test_rows.csv)."""
    xs = openface[[f"x_{i}" for i in range(68)]].to_numpy(float)
    ys = openface[[f"y_{i}" for i in range(68)]].to_numpy(float)
    fits = [estimate_pose(np.stack([x, y], axis=1), frame_size) for x, y in zip(xs, ys)]
    ours = np.degrees(np.array([fit[0] for fit in fits]))
    theirs = np.degrees(openface[["pose_Rx", "pose_Ry", "pose_Rz"]].to_numpy(float))
    difference = np.abs(ours - theirs).mean(axis=0)
    confidence = np.array([fit[2] for fit in fits])
    return {"mean_abs_difference_deg": dict(zip(("pitch", "yaw", "roll"), difference.tolist())),
            "mean_signed_difference_deg": dict(zip(("pitch", "yaw", "roll"),
                                                   (ours - theirs).mean(axis=0).tolist())),
            "confidence_range": (float(confidence.min()), float(confidence.max())),
            "rows": len(fits)}

"""How finely a still image is searched for faces (``--min-face``).

dlib's HOG detector scans an 80 px window, so a face is found only once the scanned copy shows
it at >= 80 px. Video frames are shrunk to ``--detect-width`` and tracked between detections
(speed matters over thousands of frames); a still image is searched once, so by default at the
scale where a face ``DEFAULT_MIN_FACE`` px wide fills the window: a group photo's back row is
found. The cost grows with the pixels scanned: measured times per image are in
docs/predict-outputs.md ("Faces in photos").
"""
from __future__ import annotations

import math
from pathlib import Path

from pipeline.face_landmarks import DLIB_DETECTOR_WINDOW, FaceLandmarker

#: Smallest face (px, in the image as stored) that ``--images`` finds by default.
DEFAULT_MIN_FACE = 40
#: Below this dlib would upsample 8x or more: memory and time out of proportion.
SMALLEST_MIN_FACE = 12


def search_scale(min_face: int) -> tuple[int, float]:
    """``(upsample, detect_scale)``: dlib's doublings and the shrink before them, such that a
    face ``min_face`` px wide reaches dlib's window (no finer, which would only cost time)."""
    if min_face < SMALLEST_MIN_FACE:
        raise ValueError(f"min_face must be >= {SMALLEST_MIN_FACE} px, got {min_face}")
    upsample = max(0, math.ceil(math.log2(DLIB_DETECTOR_WINDOW / min_face)))
    return upsample, min(1.0, DLIB_DETECTOR_WINDOW / (min_face * 2 ** upsample))


def still_landmarker(min_face: int, predictor: Path | None, min_score: float) -> FaceLandmarker:
    """The face finder for still images: the whole image, searched down to ``min_face`` px."""
    upsample, scale = search_scale(min_face)
    return FaceLandmarker(predictor_path=predictor, upsample=upsample, detect_scale=scale,
                          max_detect_width=None, min_score=min_score)

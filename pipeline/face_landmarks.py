"""Face detection and 68-point landmarks with dlib, mapped to DISFA's 66-point order.

Used where no AAM landmarks exist: DISFA's right camera (pipeline.align) and new videos
(model.predict). dlib's HOG frontal face detector finds the face; its 68-point iBUG shape
predictor (shipped inside the ``face-recognition-models`` package) places the landmarks.

Speed choices (why): the HOG detector dominates the cost and scales with the pixel count, while
the shape predictor costs ~3 ms whatever the frame size. So detection may run on a downscaled
copy (``detect_scale`` / ``max_detect_width``) and, in videos, only every N frames
(:class:`FaceTracker`), while the landmarks are always placed on the full-resolution frame.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from .cli import CommandError

log = logging.getLogger(__name__)

PREDICTOR_FILENAME = "shape_predictor_68_face_landmarks.dat"
PREDICTOR_PACKAGE = "face_recognition_models"
#: Environment variable that points at a predictor file (same role as ``--predictor PATH``).
PREDICTOR_ENV = "TRANET_DLIB_PREDICTOR"

#: iBUG 68-point indices that DISFA's 66-point AAM annotation lacks (the inner mouth corners).
DROPPED_68_INDICES = (60, 64)
#: For each DISFA 66-point index, the iBUG 68-point index it corresponds to.
DISFA66_FROM_68 = np.array([i for i in range(68) if i not in DROPPED_68_INDICES], dtype=np.int64)

#: dlib's HOG detector scans an 80x80 window: faces smaller than this (after any downscaling,
#: before upsampling) are missed. Used to size the search region when tracking.
DLIB_DETECTOR_WINDOW = 80

#: Default dlib score threshold (its "adjust_threshold"). Faces scoring below it are not reported.
#: dlib's own default is 0; false detections on textures and badges (e.g. the mission patch in
#: ``skimage.data.astronaut()``) score around 0 while real frontal faces mostly score > 0.3.
DEFAULT_MIN_SCORE = 0.05
#: A chosen face scoring below this, or with a rival nearly as good, is reported as doubtful.
DOUBTFUL_SCORE = 0.3


class PredictorNotFoundError(CommandError, FileNotFoundError):
    """dlib's 68-point shape predictor file could not be located."""


def to_disfa66(pts68: np.ndarray) -> np.ndarray:
    """Map iBUG 68-point landmarks (68x2, or [..., 68, 2]) to DISFA's 66-point order.

    DISFA's AAM points are the iBUG points without the two inner mouth corners (68-point 60
    and 64); everything else keeps its order, so inner-lip points 61-63 become 60-62 and
    65-67 become 63-65.
    """
    pts68 = np.asarray(pts68)
    if pts68.shape[-2:] != (68, 2):
        raise ValueError(f"expected landmarks of shape [..., 68, 2], got {pts68.shape}")
    return pts68[..., DISFA66_FROM_68, :]


def find_predictor_path(explicit: Path | str | None = None) -> Path:
    """Locate ``shape_predictor_68_face_landmarks.dat``.

    Order: ``explicit`` (the ``--predictor PATH`` option), the ``TRANET_DLIB_PREDICTOR``
    environment variable, then the file inside the installed ``face-recognition-models``
    package. The package is located without importing it: its ``__init__`` imports
    ``pkg_resources``, which recent setuptools no longer ships.
    """
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise PredictorNotFoundError(f"{path}: dlib shape predictor file not found")
        return path
    env = os.environ.get(PREDICTOR_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise PredictorNotFoundError(f"{path} (from ${PREDICTOR_ENV}): file not found")
        return path

    candidates: list[Path] = []
    spec = importlib.util.find_spec(PREDICTOR_PACKAGE)
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / "models" / PREDICTOR_FILENAME
                       for loc in spec.submodule_search_locations]
    try:  # installed-files list: also covers unusual layouts (e.g. data installed elsewhere)
        files = importlib.metadata.files("face_recognition_models") or []
        candidates += [Path(f.locate()) for f in files if f.name == PREDICTOR_FILENAME]
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    where = ", ".join(str(p) for p in candidates) or "package not installed"
    raise PredictorNotFoundError(
        f"dlib's {PREDICTOR_FILENAME} not found ({where}). Install it with "
        f"`pip install face-recognition-models`, or pass --predictor PATH "
        f"(or set ${PREDICTOR_ENV}) to a copy of the file.")


@functools.lru_cache(maxsize=4)
def _load_shape_predictor(path: str) -> Any:
    """Load a shape predictor once per process (the 68-point file is ~100 MB, ~1 s to read)."""
    import dlib

    try:
        return dlib.shape_predictor(path)
    except RuntimeError as err:
        raise PredictorNotFoundError(f"{path}: not a dlib shape predictor ({err})") from err


@dataclass(frozen=True)
class FaceResult:
    """One face in a frame, in the pixel coordinates of the full frame given to the landmarker.

    ``box`` is dlib's detection rectangle (x, y, w, h); ``landmarks68`` the iBUG 68 points
    (0-based pixels, x then y); ``score`` the detector's SVM margin (> 0 means above dlib's
    default threshold; not a probability); ``tracked`` says whether the face was found by the
    cheap search around the previous face (True) or by a full-frame detection (False).
    """

    box: tuple[float, float, float, float]
    landmarks68: np.ndarray
    score: float
    tracked: bool = False

    @property
    def landmarks66(self) -> np.ndarray:
        """The landmarks in DISFA's 66-point order."""
        return to_disfa66(self.landmarks68)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]


def face_rank(face: FaceResult, largest_area: float) -> float:
    """How much a face looks like *the* subject: detector score weighted by relative size.

    ``score * sqrt(area / largest_area)``: among equally sure detections the nearer (larger)
    face wins, but a large weak detection (a badge, a poster) cannot beat a clear face by size
    alone: a quarter of the area costs half the score.
    """
    return max(face.score, 0.0) * float(np.sqrt(face.area / max(largest_area, 1e-9)))


def choose_face(faces: list[FaceResult]) -> tuple[FaceResult | None, bool]:
    """The face with the highest :func:`face_rank`, and whether that choice is doubtful.

    Doubtful: the chosen face scores below :data:`DOUBTFUL_SCORE`, or another face ranks
    within 80% of it (two plausible subjects)."""
    if not faces:
        return None, False
    largest = max(f.area for f in faces)
    ranked = sorted(faces, key=lambda f: face_rank(f, largest), reverse=True)
    best = ranked[0]
    doubtful = best.score < DOUBTFUL_SCORE or (
        len(ranked) > 1 and face_rank(ranked[1], largest) >= 0.8 * face_rank(best, largest))
    return best, doubtful


def _to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 grayscale view of an RGB/gray frame (HOG on gray is ~4x faster than on RGB, and
    dlib's shape predictor reads intensities anyway)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got dtype {image.dtype}")
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if image.ndim == 3 and image.shape[2] == 1:
        return np.ascontiguousarray(image[:, :, 0])
    raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")


class FaceLandmarker:
    """dlib face detector + 68-point shape predictor.

    ``detect_scale`` (<= 1) and ``max_detect_width`` shrink the copy the detector scans (the
    smaller of the two scales wins); landmarks are always placed on the full frame.
    :meth:`detect_all` returns every face; :meth:`detect` the one :func:`choose_face` picks
    (detector score and size together, not the largest box alone). ``min_score`` is passed to
    dlib as the detection threshold (0 = dlib's default; negative finds more, less certain
    faces; ``model.predict`` uses :data:`DEFAULT_MIN_SCORE`).

    Picklable (the dlib objects are rebuilt lazily in each process), so it can be handed to
    joblib/DataLoader workers.
    """

    def __init__(self, predictor_path: Path | str | None = None, upsample: int = 0,
                 detect_scale: float = 1.0, max_detect_width: int | None = None,
                 min_score: float = 0.0) -> None:
        if not 0 < detect_scale <= 1:
            raise ValueError(f"detect_scale must be in (0, 1], got {detect_scale}")
        if max_detect_width is not None and max_detect_width < DLIB_DETECTOR_WINDOW:
            raise ValueError(f"max_detect_width must be >= {DLIB_DETECTOR_WINDOW}, "
                             f"got {max_detect_width}")
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        self.predictor_path = find_predictor_path(predictor_path)
        self.upsample = int(upsample)
        self.detect_scale = float(detect_scale)
        self.max_detect_width = max_detect_width
        self.min_score = float(min_score)
        self._detector: Any = None
        self._predictor: Any = None

    # -- lazy dlib objects (not picklable) ---------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_detector"] = state["_predictor"] = None
        return state

    def _ensure_loaded(self) -> None:
        if self._detector is None:
            import dlib

            self._detector = dlib.get_frontal_face_detector()
            self._predictor = _load_shape_predictor(str(self.predictor_path))

    # -- public API --------------------------------------------------------------------------
    def detection_scale(self, width: int) -> float:
        """The factor applied to a frame ``width`` pixels wide before the detector scans it."""
        scale = self.detect_scale
        if self.max_detect_width is not None and width * scale > self.max_detect_width:
            scale = self.max_detect_width / width
        return scale

    def detect(self, image: np.ndarray) -> FaceResult | None:
        """Detect faces in the whole frame; the one :func:`choose_face` picks, or None."""
        return choose_face(self.detect_all(image))[0]

    def detect_all(self, image: np.ndarray) -> list[FaceResult]:
        """Every face in the whole frame scoring at least ``min_score``, with landmarks."""
        self._ensure_loaded()
        gray = _to_gray(image)
        return self._detect_gray(gray, self.detection_scale(gray.shape[1]), (0, 0),
                                 tracked=False, full=gray)

    def detect_near(self, image: np.ndarray, box: tuple[float, float, float, float],
                    margin: float = 0.5) -> FaceResult | None:
        """Search only around ``box`` (x, y, w, h), widened by ``margin`` box sizes on each side.

        The region is scaled so the expected face is ~1.5x dlib's 80 px window: a small
        search that costs a few ms whatever the frame size. Returns None when no face is there.
        """
        self._ensure_loaded()
        gray = _to_gray(image)
        height, width = gray.shape
        x, y, w, h = box
        x0 = int(max(0, np.floor(x - margin * w)))
        y0 = int(max(0, np.floor(y - margin * h)))
        x1 = int(min(width, np.ceil(x + w * (1 + margin))))
        y1 = int(min(height, np.ceil(y + h * (1 + margin))))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        scale = min(1.0, 1.5 * DLIB_DETECTOR_WINDOW / max(w, 1.0))
        found = self._detect_gray(gray[y0:y1, x0:x1], scale, (x0, y0), tracked=True, full=gray)
        if not found:
            return None
        # The face being followed: the detection nearest the previous box's centre.
        cx, cy = x + w / 2, y + h / 2
        return min(found, key=lambda f: (f.box[0] + f.box[2] / 2 - cx) ** 2
                   + (f.box[1] + f.box[3] / 2 - cy) ** 2)

    # -- internals ---------------------------------------------------------------------------
    def _detect_gray(self, region: np.ndarray, scale: float, origin: tuple[int, int],
                     tracked: bool, full: np.ndarray) -> list[FaceResult]:
        import dlib

        # dlib misreads strided numpy views (e.g. a crop), so always hand it contiguous memory.
        scan = np.ascontiguousarray(region)
        if scale < 1.0:
            size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
            scan = cv2.resize(region, size, interpolation=cv2.INTER_AREA)
            scale_x, scale_y = scan.shape[1] / region.shape[1], scan.shape[0] / region.shape[0]
        else:
            scale_x = scale_y = 1.0
        rects, scores, _ = self._detector.run(scan, self.upsample, self.min_score)
        faces = []
        for rect, score in zip(rects, scores):
            # dlib rectangles are inclusive: width() = right - left + 1.
            x = rect.left() / scale_x + origin[0]
            y = rect.top() / scale_y + origin[1]
            w = rect.width() / scale_x
            h = rect.height() / scale_y
            full_rect = dlib.rectangle(int(round(x)), int(round(y)),
                                       int(round(x + w)) - 1, int(round(y + h)) - 1)
            shape = self._predictor(full, full_rect)
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            faces.append(FaceResult(box=(float(x), float(y), float(w), float(h)),
                                    landmarks68=pts, score=float(score), tracked=tracked))
        return faces


class FaceTracker:
    """Per-video face finding: full-frame detection every ``detect_every`` frames, and in
    between a search only around the previous face (:meth:`FaceLandmarker.detect_near`).

    Why a local search rather than reusing the previous box blindly: it costs a few ms, keeps
    the box fitted to a moving face, and notices when the face leaves (a blank frame is then
    reported as "no face" rather than given landmarks of nothing). When the local search fails
    the frame falls back to a full detection at once. Landmarks are computed on every frame.
    """

    def __init__(self, landmarker: FaceLandmarker, detect_every: int = 1,
                 search_margin: float = 0.5) -> None:
        if detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {detect_every}")
        self.landmarker = landmarker
        self.detect_every = int(detect_every)
        self.search_margin = float(search_margin)
        self.reset()

    def reset(self) -> None:
        """Forget the previous face (call between videos)."""
        self._previous: FaceResult | None = None
        self._since_detection = 0
        self.full_detections = 0
        self.local_searches = 0

    def update(self, image: np.ndarray) -> FaceResult | None:
        """The face in the next frame of the sequence, or None."""
        result = None
        if self._previous is not None and self._since_detection < self.detect_every - 1:
            self.local_searches += 1
            result = self.landmarker.detect_near(image, self._previous.box, self.search_margin)
            if result is not None:
                self._since_detection += 1
        if result is None:
            self.full_detections += 1
            result = self.landmarker.detect(image)
            self._since_detection = 0
        self._previous = result
        return result

"""Which faces are in each frame, and who is who across frames (``--faces best|all``).

``best``: one subject. Full-frame detection every ``detect_every`` frames (and whenever the
face is lost); in between only a search around the previous face. The face is chosen by
detector score and size together (:func:`pipeline.face_landmarks.choose_face`), never by size
alone; a doubtful choice is counted so the run can warn.

``all``: every face gets a ``face_id`` (0, 1, 2... in order of first appearance) that it keeps
while it is tracked. Detections are matched to tracks by the Hungarian algorithm (scipy) on the
distance between each detection's centre and the track's predicted centre (constant velocity),
relative to the face size, so two faces that cross keep their ids. A face that is not found for
up to ``max_gap`` frames keeps its id when it reappears within reach of where it was heading;
after that it is forgotten and a new face gets a new id.

Limits (documented in docs/predict.md): identities come from position and motion only, not from
appearance; two faces that swap places while both hidden, or a face that comes back far from
where it left, get the wrong or a new id; faces smaller than ~80 px (dlib's window) are missed
unless ``--upsample``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.face_landmarks import FaceLandmarker, FaceResult, choose_face

#: Frames a lost face keeps its id (about 1 s at 30 fps).
DEFAULT_MAX_GAP = 30


@dataclass
class TrackedFace:
    """A face in one frame: its id and what the landmarker found. ``face`` is None while a
    tracked face is lost (its row is written with ``success = 0`` until the gap runs out)."""

    face_id: int
    face: FaceResult | None
    doubtful: bool = False


@dataclass
class _Track:
    face_id: int
    box: tuple[float, float, float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    missed: int = 0
    history: list[int] = field(default_factory=list)

    def predicted_centre(self) -> tuple[float, float]:
        x, y, w, h = self.box
        steps = self.missed + 1
        return x + w / 2 + self.velocity[0] * steps, y + h / 2 + self.velocity[1] * steps

    def update(self, box: tuple[float, float, float, float]) -> None:
        old = _centre(self.box)
        new = _centre(box)
        steps = self.missed + 1
        measured = ((new[0] - old[0]) / steps, (new[1] - old[1]) / steps)
        # Smoothed velocity: robust to one jittery box.
        self.velocity = tuple(0.5 * v + 0.5 * m for v, m in zip(self.velocity, measured))
        self.box = box
        self.missed = 0


def _centre(box: tuple[float, float, float, float]) -> tuple[float, float]:
    return box[0] + box[2] / 2, box[1] + box[3] / 2


class BestFaceTracker:
    """``--faces best``: one face per frame (face_id 0), found as described in the module doc."""

    def __init__(self, landmarker: FaceLandmarker, detect_every: int = 1,
                 search_margin: float = 0.5) -> None:
        self.landmarker = landmarker
        self.detect_every = max(1, int(detect_every))
        self.search_margin = search_margin
        self._previous: FaceResult | None = None
        self._since_detection = 0
        self.doubtful_frames = 0

    def update(self, image: np.ndarray) -> list[TrackedFace]:
        face, doubtful = None, False
        if self._previous is not None and self._since_detection < self.detect_every - 1:
            face = self.landmarker.detect_near(image, self._previous.box, self.search_margin)
            self._since_detection += face is not None
        if face is None:
            face, doubtful = choose_face(self.landmarker.detect_all(image))
            self._since_detection = 0
        self._previous = face
        self.doubtful_frames += doubtful
        return [TrackedFace(0, face, doubtful)] if face is not None else []


class MultiFaceTracker:
    """``--faces all``: every face with a stable ``face_id`` (see the module doc).

    ``update`` returns the faces found in the frame plus the tracks lost for at most
    ``max_gap`` frames (with ``face=None``), sorted by id.
    """

    def __init__(self, landmarker: FaceLandmarker, detect_every: int = 1,
                 max_gap: int = DEFAULT_MAX_GAP, reach: float = 1.0) -> None:
        self.landmarker = landmarker
        self.detect_every = max(1, int(detect_every))
        self.max_gap = int(max_gap)
        self.reach = float(reach)   # match gate: centre distance in face widths (grows with gap)
        self.tracks: list[_Track] = []
        self._next_id = 0
        self._frame = 0
        self.doubtful_frames = 0

    def _find(self, image: np.ndarray) -> list[FaceResult]:
        """Full detection on schedule or when a tracked face was not found around its box."""
        full = self._frame % self.detect_every == 0 or not self.tracks
        if not full:
            found = []
            for track in self.tracks:
                face = self.landmarker.detect_near(image, track.box) if track.missed == 0 else None
                if face is None:
                    full = True
                    break
                found.append(face)
            if not full:
                return found
        return self.landmarker.detect_all(image)

    def _match(self, faces: list[FaceResult]) -> dict[int, int]:
        """track index -> face index, by predicted-centre distance in face widths."""
        if not faces or not self.tracks:
            return {}
        cost = np.zeros((len(self.tracks), len(faces)))
        for i, track in enumerate(self.tracks):
            px, py = track.predicted_centre()
            for j, face in enumerate(faces):
                cx, cy = _centre(face.box)
                size = max(track.box[2], face.box[2], 1.0)
                ratio = face.box[2] / max(track.box[2], 1.0)
                scale_penalty = 0.0 if 0.6 < ratio < 1.6 else 10.0
                cost[i, j] = np.hypot(cx - px, cy - py) / size + scale_penalty
        rows, cols = linear_sum_assignment(cost)
        matched = {}
        for i, j in zip(rows, cols):
            gate = self.reach * (1.0 + 0.25 * self.tracks[i].missed)
            if cost[i, j] <= gate:
                matched[i] = j
        return matched

    def update(self, image: np.ndarray) -> list[TrackedFace]:
        faces = self._find(image)
        matched = self._match(faces)
        out = []
        for i, track in enumerate(self.tracks):
            if i in matched:
                track.update(faces[matched[i]].box)
                out.append(TrackedFace(track.face_id, faces[matched[i]]))
            else:
                track.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= self.max_gap]
        out += [TrackedFace(t.face_id, None) for t in self.tracks if t.missed > 0]
        taken = set(matched.values())
        for j, face in enumerate(faces):
            if j not in taken:
                self.tracks.append(_Track(self._next_id, face.box))
                out.append(TrackedFace(self._next_id, face))
                self._next_id += 1
        self._frame += 1
        return sorted(out, key=lambda t: t.face_id)

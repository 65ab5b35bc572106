"""dlib face finding and the 68 -> 66 landmark mapping, on real faces."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from _disfa_fixtures import real_landmarks, require_fixture
from pipeline.datasets.disfa.facts import CHIN, NOSE_ROOT, NOSE_TIP
from pipeline.face_landmarks import (
    DISFA66_FROM_68,
    PREDICTOR_ENV,
    FaceLandmarker,
    FaceTracker,
    PredictorNotFoundError,
    find_predictor_path,
    to_disfa66,
)



@pytest.fixture(scope="module")
def landmarker() -> FaceLandmarker:
    return FaceLandmarker()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    """skimage's astronaut cropped to her head (280x280, face box ~88 px at (90, 80)).

    The crop matters: pasted on a plain canvas, the full picture's flag and suit produce a weak
    false detection larger than the face."""
    return np.ascontiguousarray(data.astronaut()[0:280, 90:370])


def test_mapping_drops_inner_mouth_corners() -> None:
    pts68 = np.stack([np.arange(68), np.arange(68) * 10], axis=1).astype(float)
    pts66 = to_disfa66(pts68)
    assert pts66.shape == (66, 2)
    assert 60 not in pts66[:, 0] and 64 not in pts66[:, 0]
    # Points before 60 keep their index; inner-lip 61-63 -> 60-62, 65-67 -> 63-65.
    np.testing.assert_array_equal(pts66[:60, 0], np.arange(60))
    np.testing.assert_array_equal(pts66[60:, 0], [61, 62, 63, 65, 66, 67])
    # The DISFA anatomical indices the alignment uses are unchanged by the mapping.
    for idx in (NOSE_ROOT, NOSE_TIP, CHIN):
        assert DISFA66_FROM_68[idx] == idx
    # Batched input keeps the leading axes.
    assert to_disfa66(np.zeros((5, 68, 2))).shape == (5, 66, 2)
    with pytest.raises(ValueError, match="68, 2"):
        to_disfa66(np.zeros((66, 2)))


def test_predictor_is_found_in_package_and_override_is_checked(tmp_path: Path,
                                                                monkeypatch) -> None:
    monkeypatch.delenv(PREDICTOR_ENV, raising=False)
    path = find_predictor_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 10**7
    missing = tmp_path / "nope.dat"
    with pytest.raises(PredictorNotFoundError, match="nope.dat"):
        find_predictor_path(missing)
    monkeypatch.setenv(PREDICTOR_ENV, str(missing))
    with pytest.raises(PredictorNotFoundError, match=PREDICTOR_ENV):
        find_predictor_path()
    bogus = tmp_path / "bogus.dat"
    bogus.write_bytes(b"not a predictor")
    with pytest.raises(PredictorNotFoundError, match="bogus.dat"):
        FaceLandmarker(predictor_path=bogus).detect(np.zeros((50, 50), np.uint8))


def test_astronaut_landmarks_are_anatomically_placed(landmarker, astronaut) -> None:
    face = landmarker.detect(astronaut)
    assert face is not None and not face.tracked and face.score > 0
    x, y, w, h = face.box
    pts = face.landmarks68
    assert pts.shape == (68, 2)
    # The face box lies in the middle of the crop.
    assert 60 < x < 140 and 50 < y < 130 and 60 < w < 130
    eyes = pts[36:48]
    nose_tip, chin, mouth = pts[30], pts[8], pts[48:60]
    assert eyes[:, 0].min() < nose_tip[0] < eyes[:, 0].max()
    assert eyes[:, 1].max() < nose_tip[1]          # eyes above the nose tip
    assert chin[1] > mouth[:, 1].max()             # chin below the mouth
    assert pts[36:42, 0].mean() < pts[42:48, 0].mean()  # subject's right eye on image left
    # Landmarks sit inside (a slightly enlarged) face box.
    assert np.all(pts[:, 0] > x - 0.2 * w) and np.all(pts[:, 0] < x + 1.2 * w)


def test_dlib_points_match_disfa_aam_landmarks_on_real_frame(landmarker) -> None:
    # The photo is licensed (../shared beside the clone); its landmarks are in tests/data.
    image = cv2.cvtColor(cv2.imread(str(require_fixture())), cv2.COLOR_BGR2RGB)
    truth = real_landmarks()
    face = landmarker.detect(image)
    assert face is not None
    iod = np.linalg.norm(truth[36:42].mean(0) - truth[42:48].mean(0))
    error = np.linalg.norm(face.landmarks66 - truth, axis=1) / iod
    assert error.mean() < 0.12
    # The inner lip decides the mapping: the right one fits far better than a naive one.
    naive = np.linalg.norm(np.delete(face.landmarks68, [66, 67], axis=0) - truth, axis=1) / iod
    assert error[60:].mean() < 0.6 * naive[60:].mean()


def test_no_face_gives_none_and_bad_images_raise(landmarker) -> None:
    assert landmarker.detect(np.zeros((240, 320, 3), np.uint8)) is None
    assert landmarker.detect(np.full((240, 320), 128, np.uint8)) is None
    with pytest.raises(ValueError, match="uint8"):
        landmarker.detect(np.zeros((50, 50, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        landmarker.detect(np.zeros((50, 50, 4), np.uint8))


def test_largest_face_is_kept(landmarker, astronaut) -> None:
    small = cv2.resize(astronaut, (230, 230), interpolation=cv2.INTER_AREA)  # face ~72 px
    canvas = np.full((400, 700, 3), 90, np.uint8)
    canvas[:280, :280] = astronaut
    canvas[100:330, 400:630] = small
    face = landmarker.detect(canvas)
    assert face is not None
    assert face.box[0] < 280  # the larger (left) copy wins
    # With upsampling dlib also finds the smaller copy; the larger one is still the one kept.
    import dlib

    rects = dlib.get_frontal_face_detector()(cv2.cvtColor(canvas, cv2.COLOR_RGB2GRAY), 1)
    assert len(rects) >= 2
    two = FaceLandmarker(upsample=1).detect(canvas)
    assert two is not None and two.box[0] < 280


def test_downscaled_detection_keeps_full_resolution_landmarks(landmarker, astronaut) -> None:
    big = cv2.resize(astronaut, (840, 840), interpolation=cv2.INTER_CUBIC)  # face ~260 px
    full = landmarker.detect(big)
    fast = FaceLandmarker(max_detect_width=420).detect(big)
    assert fast is not None and full is not None
    assert FaceLandmarker(max_detect_width=420).detection_scale(840) == pytest.approx(0.5)
    assert FaceLandmarker(detect_scale=0.25, max_detect_width=420).detection_scale(840) == 0.25
    # Same face, box within a few pixels; landmarks from the full frame agree closely.
    assert np.abs(np.subtract(fast.box, full.box)).max() < 0.2 * full.box[2]
    assert np.abs(fast.landmarks68 - full.landmarks68).mean() < 0.03 * full.box[2]
    with pytest.raises(ValueError):
        FaceLandmarker(detect_scale=0)


def test_landmarker_pickles(landmarker, astronaut) -> None:
    clone = pickle.loads(pickle.dumps(landmarker))
    face = clone.detect(astronaut)
    assert face is not None
    np.testing.assert_allclose(face.landmarks68, landmarker.detect(astronaut).landmarks68)


def test_tracker_searches_near_previous_face_and_notices_loss(landmarker, astronaut) -> None:
    frames = []
    for shift in (0, 6, 12, 18):  # a face moving right
        canvas = np.zeros((360, 480, 3), np.uint8)
        canvas[40:320, 50 + shift:330 + shift] = astronaut
        frames.append(canvas)
    frames.append(np.zeros((360, 480, 3), np.uint8))  # face gone
    frames.append(frames[0])                           # back again
    tracker = FaceTracker(landmarker, detect_every=10)
    results = [tracker.update(frame) for frame in frames]
    assert [r is not None for r in results] == [True, True, True, True, False, True]
    assert [r.tracked for r in results[:4]] == [False, True, True, True]
    xs = [r.landmarks68[30, 0] for r in results[:4]]
    assert np.all(np.diff(xs) > 2)  # the nose tip follows the motion
    # Full detections: first frame, the blank frame (after the local search failed), the return.
    assert tracker.full_detections == 3 and tracker.local_searches == 4
    tracker.reset()
    assert tracker.update(frames[0]).tracked is False
    with pytest.raises(ValueError):
        FaceTracker(landmarker, detect_every=0)

"""The two-point similarity alignment: exactness, properties, and a real DISFA face."""
import cv2
import numpy as np
import pytest

from _disfa_fixtures import (posed_landmarks, real_landmarks, require_fixture,
                             template_landmarks)
from pipeline.alignment import (AlignmentConfig, AlignmentError, align_face, alignment_matrices,
                                alignment_matrix, nose_and_chin, similarity_matrix,
                                transform_points)
from pipeline.datasets.disfa.facts import CHIN


def test_similarity_matrix_maps_both_points_exactly():
    m = similarity_matrix((10, 20), (14, 50), (112, 112), (112, 196))
    out = transform_points(np.array([[10, 20], [14, 50]]), m)
    np.testing.assert_allclose(out, [[112, 112], [112, 196]], atol=1e-9)
    # A similarity: the linear part is a scaled rotation.
    a, b = m[0, 0], m[1, 0]
    np.testing.assert_allclose(m[:, :2], [[a, -b], [b, a]])


def test_similarity_matrix_rejects_coincident_points():
    with pytest.raises(AlignmentError):
        similarity_matrix((5, 5), (5, 5), (0, 0), (0, 10))
    with pytest.raises(AlignmentError):
        alignment_matrix(np.full((66, 2), np.nan), AlignmentConfig())


def test_config_defaults_scale_with_size_and_fractions_round_trip():
    big, small = AlignmentConfig(), AlignmentConfig(size=112)
    assert big.nose_target == (112.0, 112.0) and big.chin_target == (112.0, 196.0)
    assert small.nose_target == (56.0, 56.0) and small.chin_target == (56.0, 98.0)
    cfg = AlignmentConfig.from_fractions(200, (0.5, 0.45), (0.5, 0.9))
    assert cfg.nose_target == (100.0, 90.0) and cfg.chin_target == (100.0, 180.0)
    assert cfg.nose_fraction == (0.5, 0.45) and cfg.chin_fraction == (0.5, 0.9)
    with pytest.raises(ValueError):
        AlignmentConfig(size=64, nose_target=(10, 10), chin_target=(10, 10.5))
    with pytest.raises(ValueError):
        AlignmentConfig(border="wrap")


def test_random_similarity_posed_faces_land_on_targets():
    """Property: whatever the pose, nose midpoint and chin land on the targets and the face
    comes out with the template's shape, upright."""
    rng = np.random.default_rng(1234)
    template = template_landmarks()
    for _ in range(200):
        size = int(rng.integers(16, 300))
        nose_frac = (rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.6))
        chin_frac = (nose_frac[0] + rng.uniform(-0.05, 0.05), nose_frac[1] + rng.uniform(0.2, 0.4))
        cfg = AlignmentConfig.from_fractions(size, nose_frac, chin_frac)
        pts = posed_landmarks(rng.uniform(-500, 1500, 2), rng.uniform(5, 800),
                              rng.uniform(-180, 180))
        m = alignment_matrix(pts, cfg)
        out = transform_points(pts, m)
        nose, chin = nose_and_chin(out)
        np.testing.assert_allclose(nose, cfg.nose_target, atol=1e-6)
        np.testing.assert_allclose(chin, cfg.chin_target, atol=1e-6)
        # Same shape as the template mapped by the target similarity alone.
        expected = transform_points(template, similarity_matrix(
            (0, 0), template[CHIN], cfg.nose_target, cfg.chin_target))
        np.testing.assert_allclose(out, expected, atol=1e-6 * max(1.0, size))


def test_image_moves_with_the_landmarks():
    """The warp applied to the pixels is the one applied to the points: a bright dot drawn at
    the nose midpoint ends up at the nose target."""
    rng = np.random.default_rng(7)
    for _ in range(10):
        pts = posed_landmarks(rng.uniform(150, 250, 2), rng.uniform(60, 90),
                              rng.uniform(-40, 40))
        img = np.zeros((400, 400, 3), np.uint8)
        nose, _ = nose_and_chin(pts)
        cv2.circle(img, tuple(int(v) for v in np.round(nose * 16)), 4 * 16, (255, 255, 255), -1,
                   lineType=cv2.LINE_AA, shift=4)
        cfg = AlignmentConfig(size=96)
        aligned, out_pts, _ = align_face(img, pts, cfg)
        assert aligned.shape == (96, 96, 3) and aligned.dtype == np.uint8
        weights = aligned[..., 0].astype(float)
        ys, xs = np.mgrid[0:96, 0:96]
        centroid = np.array([(xs * weights).sum(), (ys * weights).sum()]) / weights.sum()
        np.testing.assert_allclose(centroid, cfg.nose_target, atol=0.75)
        assert out_pts.dtype == np.float32 and out_pts.shape == (66, 2)


def test_border_modes():
    img = np.full((50, 50, 3), 200, np.uint8)
    pts = posed_landmarks((25, 10), 40, 0)  # a big face near the top: the crop leaves the frame
    const, _, _ = align_face(img, pts, AlignmentConfig(size=64, border="constant"))
    repl, _, _ = align_face(img, pts, AlignmentConfig(size=64, border="replicate"))
    assert const[0, 0].tolist() == [0, 0, 0]
    assert repl[0, 0].tolist() == [200, 200, 200]


def test_real_disfa_frame_is_aligned_upright():
    image = cv2.cvtColor(cv2.imread(str(require_fixture())), cv2.COLOR_BGR2RGB)
    pts = real_landmarks()
    cfg = AlignmentConfig()
    aligned, out, m = align_face(image, pts, cfg)
    assert aligned.shape == (224, 224, 3)
    nose, chin = nose_and_chin(out)
    np.testing.assert_allclose(nose, cfg.nose_target, atol=1e-3)
    np.testing.assert_allclose(chin, cfg.chin_target, atol=1e-3)
    left_eye, right_eye = out[36:42].mean(axis=0), out[42:48].mean(axis=0)
    assert left_eye[1] < nose[1] and right_eye[1] < nose[1]  # eyes above the nose
    assert left_eye[0] < nose[0] < right_eye[0]
    roll = np.degrees(np.arctan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0]))
    assert abs(roll) < 10  # eye line roughly horizontal
    assert out[17:27, 1].min() > 0 and out[:, 1].max() <= 224  # brows and jaw inside the crop
    # Pixels follow the points: the aligned crop equals the source sampled through M^-1.
    inv = cv2.invertAffineTransform(m)
    src = transform_points(np.array([[112.0, 112.0]]), inv)[0]
    np.testing.assert_allclose(aligned[112, 112].astype(float),
                               image[int(round(src[1])), int(round(src[0]))].astype(float),
                               atol=40)


def test_vectorised_matrices_match_the_single_frame_ones():
    rng = np.random.default_rng(3)
    faces = np.stack([posed_landmarks(rng.uniform(0, 1000, 2), rng.uniform(20, 400),
                                      rng.uniform(-90, 90)) for _ in range(50)])
    faces[7, 8] = (faces[7, 27] + faces[7, 30]) / 2  # chin on the nose: no alignment
    cfg = AlignmentConfig(size=128)
    batch = alignment_matrices(faces, cfg)
    for i, face in enumerate(faces):
        if i == 7:
            assert np.isnan(batch[i]).all()
            with pytest.raises(AlignmentError):
                alignment_matrix(face, cfg)
        else:
            np.testing.assert_allclose(batch[i], alignment_matrix(face, cfg), atol=1e-9)

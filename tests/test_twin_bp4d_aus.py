"""The twin renderer draws BP4D's AUs 7, 10, 14, 23, 24 (for a BP4D twin), each visibly, in its
own face region and differently from every other AU, while DISFA's 12 render as before."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pipeline.datasets.disfa.facts import ALL_AUS
from pipeline.twin.face_render import render_face
from pipeline.twin.face_shape import (EXTRA_AUS, RENDER_AUS, EYES, MOUTH, NOSE, Pose,
                                      au_intensities, face_shape, sample_identity)

POSE = Pose((100.0, 100.0), 120.0, 0.0, 0.0)
#: Where FACS puts each AU's visible change (landmark indices, DISFA's 66-point order).
REGION = {7: EYES, 10: NOSE + MOUTH, 14: MOUTH, 23: MOUTH, 24: MOUTH + [7, 8, 9]}
#: Points each AU must move, and how (image y grows downwards).
KEY_MOTION = {7: ([40, 47], "up"), 10: ([51], "up"), 14: ([48, 54], "out"),
              23: ([48, 54], "in"), 24: ([57], "up")}


def _render(aus, identity=None) -> np.ndarray:
    img = np.full((220, 200, 3), 128, np.uint8)
    render_face(img, identity or sample_identity(np.random.default_rng(3)), aus, POSE)
    return img.astype(int)


@pytest.fixture(scope="module")
def changes() -> dict[int, np.ndarray]:
    """Per AU, |pixels at intensity 5 - neutral| summed over channels."""
    neutral = _render({})
    return {au: np.abs(_render({au: 5}) - neutral).sum(axis=2) for au in RENDER_AUS}


def test_the_renderer_knows_bp4ds_extra_aus():
    assert EXTRA_AUS == (7, 10, 14, 23, 24)
    assert set(RENDER_AUS) == set(ALL_AUS) | set(EXTRA_AUS)
    with pytest.raises(ValueError, match="unknown AUs \\[11\\]"):
        au_intensities({11: 2.0})


@pytest.mark.parametrize("au", EXTRA_AUS)
def test_each_extra_au_moves_its_own_landmarks(au):
    neutral = face_shape(sample_identity(np.random.default_rng(3)), {}, POSE)
    moved = face_shape(sample_identity(np.random.default_rng(3)), {au: 5}, POSE)
    shift = np.linalg.norm(moved - neutral, axis=1)
    outside = [i for i in range(66) if i not in REGION[au]]
    assert shift[outside].max() < 1e-9
    keys, how = KEY_MOTION[au]
    delta = moved[keys] - neutral[keys]
    if how == "up":
        assert (delta[:, 1] < -1.0).all()
    elif how == "out":
        assert delta[0, 0] < -1.0 and delta[-1, 0] > 1.0
    else:
        assert delta[0, 0] > 1.0 and delta[-1, 0] < -1.0


@pytest.mark.parametrize("au", EXTRA_AUS)
def test_each_extra_au_changes_the_pixels_of_its_region_only(au, changes):
    pts = face_shape(sample_identity(np.random.default_rng(3)), {}, POSE)[REGION[au]]
    margin = 0.15 * POSE.scale  # "not far": 15% of the face width
    x0, y0 = np.floor(pts.min(axis=0) - margin).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0) + margin).astype(int)
    diff = changes[au]
    assert (diff > 30).sum() > 150, f"AU{au} barely shows"
    outside = diff.copy()
    outside[max(y0, 0):y1, max(x0, 0):x1] = 0
    assert outside.max() == 0, f"AU{au} changed pixels far from its region"


@pytest.mark.parametrize("au", EXTRA_AUS)
def test_each_extra_au_looks_different_from_every_other_au(au, changes):
    for other in RENDER_AUS:
        if other == au:
            continue
        a, b = changes[au], changes[other]
        apart = np.abs(a - b).sum() / max(a.sum(), b.sum())
        assert apart > 0.5, f"AU{au} and AU{other} change the face almost alike ({apart:.2f})"


def test_a_dict_naming_extra_aus_at_zero_draws_the_disfa_face():
    rng = np.random.default_rng(11)
    aus12 = list(rng.integers(0, 6, 12) * (rng.random(12) < 0.5))
    as_dict = {**dict(zip(ALL_AUS, aus12)), **{au: 0.0 for au in EXTRA_AUS}}
    assert np.array_equal(_render(aus12), _render(as_dict))


def _disfa_digest() -> str:
    """Twenty DISFA-AU faces (random people, poses, intensities) and their landmarks, hashed."""
    h = hashlib.sha256()
    rng = np.random.default_rng(5)
    for k in range(20):
        identity = sample_identity(rng)
        aus = rng.integers(0, 6, 12) * (rng.random(12) < 0.4) + (k % 3 == 0) * rng.random(12)
        pose = Pose((80.0 + k, 70.0), 90.0 + k, float(rng.uniform(-10, 10)),
                    float(rng.uniform(-15, 15)))
        img = np.full((160, 180, 3), 100, np.uint8)
        render_face(img, identity, list(aus), pose)
        h.update(img.tobytes())
        h.update(face_shape(identity, list(aus), pose).tobytes())
    return h.hexdigest()


def test_disfa_faces_render_exactly_as_before_the_extra_aus():
    # The digest of the same renders by the renderer of commit c965409 (before AU7-24 existed):
    # the DISFA twin, and so model.demo's figures, must not move by a pixel.
    assert _disfa_digest() == DIGEST_C965409


DIGEST_C965409 = "b2aa45b951aebc8535a6a50a7c9fb96e5c8e07bfccb057e40785c3cfcc473dcd"

"""The alignment rules for 49-point landmarks: JAA's similarity (exact on JAA's two published
frames) and the paper's nose/chin rule with the chin from a 68-point detector."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.alignment import AlignmentConfig, transform_points
from pipeline.alignment_rules import (FROM_68_TO_49, JAA_BORDER_VALUE, jaa_matrices,
                                      nose_chin_matrix_49, to_49, warp_with_rule)

FIXTURE = Path(__file__).parent / "data" / "bp4d_jaa_fixture.json"


def _fixture() -> list[tuple[str, np.ndarray, np.ndarray]]:
    data = json.loads(FIXTURE.read_text())
    assert "PyTorch-JAANet" in data["source"]
    return [(name, np.array(v["raw"].split(), float).reshape(49, 2),
             np.array(v["aligned"].split(), float).reshape(49, 2))
            for name, v in sorted(data["frames"].items())]


def test_jaa_rule_reproduces_the_published_aligned_points():
    frames = _fixture()
    assert [name for name, _, _ in frames] == ["F001/T1/2440", "F001/T1/2441"]
    raw = np.stack([r for _, r, _ in frames]) - 1.0  # the release's points are 1-based
    matrices = jaa_matrices(raw, size=200)
    for (name, _, aligned), pts, m in zip(frames, raw, matrices):
        error = np.abs(transform_points(pts, m) - aligned).max()
        assert error < 1e-5, (name, error)


def test_jaa_rule_levels_the_eyes_and_scales_with_size():
    _, raw, _ = _fixture()[1]
    raw = raw - 1.0
    m200, m400 = jaa_matrices(raw[None], 200)[0], jaa_matrices(raw[None], 400)[0]
    p200, p400 = transform_points(raw, m200), transform_points(raw, m400)
    eyes = [p200[19:25].mean(axis=0), p200[25:31].mean(axis=0)]
    assert abs(eyes[0][1] - eyes[1][1]) < 1e-9 and eyes[0][0] < eyes[1][0]
    # The crop's edges sit on pixel centres 0 and size - 1: points scale about them.
    assert np.allclose(p400, p200 * (399 / 199), atol=1e-9)


def test_jaa_rule_gives_nan_for_missing_landmarks():
    _, raw, _ = _fixture()[0]
    pts = np.stack([raw, np.full((49, 2), np.nan)])
    m = jaa_matrices(pts)
    assert np.isfinite(m[0]).all() and np.isnan(m[1]).all()


def test_jaa_warp_fills_outside_the_frame_with_grey():
    image = np.zeros((60, 40, 3), np.uint8)
    shift = np.array([[1.0, 0, 100], [0, 1.0, 100]])  # everything lands off the frame
    out = warp_with_rule(image, shift, 32, "jaa")
    assert out.shape == (32, 32, 3) and (out == JAA_BORDER_VALUE).all()
    assert (warp_with_rule(image, shift, 32, "nose-chin", "constant") == 0).all()


def test_68_points_reduce_to_49_without_jaw_or_inner_mouth_corners():
    pts68 = np.stack([np.arange(68), -np.arange(68)], axis=1).astype(float)
    pts49 = to_49(pts68)
    assert pts49.shape == (49, 2) and len(FROM_68_TO_49) == 49
    kept = set(pts49[:, 0].astype(int))
    assert not kept & set(range(17)) and 60 not in kept and 64 not in kept
    # Nose tip, eye corners and mouth corners are where the 49-point order puts them.
    assert pts49[13, 0] == 30 and pts49[19, 0] == 36 and pts49[31, 0] == 48
    assert pts49[37, 0] == 54
    with pytest.raises(ValueError):
        to_49(pts68[:66])


def test_nose_chin_rule_on_49_points_uses_the_detector_chin():
    _, raw, _ = _fixture()[0]
    raw = raw - 1.0
    chin = np.array([490.0, 1240.0])
    cfg = AlignmentConfig(size=224)
    m = nose_chin_matrix_49(raw, chin, cfg)
    nose = (raw[10] + raw[13]) / 2
    assert np.allclose(transform_points(np.stack([nose, chin]), m),
                       [cfg.nose_target, cfg.chin_target], atol=1e-9)

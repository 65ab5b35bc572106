"""The test fixtures themselves: a plain clone has the real frame's landmark numbers; the
licensed photo is looked for beside the clone, and CI can insist on it."""
from pathlib import Path

import numpy as np
import pytest

from _disfa_fixtures import (REAL_FIXTURE_DIR, REAL_LANDMARKS, REPO, REQUIRE_FIXTURES_ENV,
                             real_landmarks, require_fixture)


def test_real_landmarks_are_committed_with_the_repository():
    assert REAL_LANDMARKS.is_relative_to(REPO) and REAL_LANDMARKS.is_file()
    pts = real_landmarks()
    assert pts.shape == (66, 2) and np.isfinite(pts).all()
    # SN002's face in a 1024x768 frame: inside it, chin below the nose.
    assert (pts >= 0).all() and (pts[:, 0] < 1024).all() and (pts[:, 1] < 768).all()
    assert pts[8, 1] > pts[30, 1] > pts[27, 1]


def test_committed_landmarks_equal_the_shared_fixture():
    shared = require_fixture(REAL_FIXTURE_DIR / "frame0000_lm66.txt")
    np.testing.assert_array_equal(real_landmarks(), np.loadtxt(shared, comments="#"))


def test_missing_fixture_skips_with_where_it_is_looked_for(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "frame0000.jpg"
    monkeypatch.delenv(REQUIRE_FIXTURES_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"nowhere.*shared.fixtures"):
        require_fixture(missing)
    monkeypatch.setenv(REQUIRE_FIXTURES_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_FIXTURES_ENV):
        require_fixture(missing)
    present = tmp_path / "here.jpg"
    present.write_bytes(b"x")
    assert require_fixture(present) == present


def test_ci_requires_the_fixtures():
    ci = (Path(REPO) / ".ci" / "run").read_text()
    assert f"{REQUIRE_FIXTURES_ENV}=1" in ci

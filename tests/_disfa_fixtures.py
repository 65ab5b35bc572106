"""Tiny hand-made DISFA releases for the pipeline tests (the layout of DISFA_FACTS.md).

``write_release`` writes label files, one MJPG video per camera and per-frame landmark .mat
files whose face moves a little from frame to frame. Subjects with the same frame count share
one video and one set of landmark files (hard links), so a release with the real frame counts
of all 27 subjects is written in a few seconds.
"""
from __future__ import annotations

import functools
import operator
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import scipy.io

from pipeline.datasets.disfa.facts import ALL_AUS, CHIN, NOSE_ROOT, NOSE_TIP

REPO = Path(__file__).resolve().parents[1]
#: The licensed real frame is never committed; it lives in ../shared beside the clone (CI has it).
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"
REAL_FIXTURE_DIR = SHARED_FIXTURES / "disfa_sn002"
REAL_FRAME = REAL_FIXTURE_DIR / "frame0000.jpg"
#: Its 66 landmark coordinates are plain numbers and are committed (tests/data).
REAL_LANDMARKS = REPO / "tests" / "data" / "disfa_sn002_frame0000_lm66.txt"
#: Set to 1 (``.ci/run`` does) to make a missing real-frame fixture a failure, not a skip.
REQUIRE_FIXTURES_ENV = "TRANET_REQUIRE_FIXTURES"


def real_landmarks() -> np.ndarray:
    """The 66 landmarks of the real SN002 frame (0-based source pixels)."""
    return np.loadtxt(REAL_LANDMARKS, comments="#")


def require_fixture(path: Path = REAL_FRAME) -> Path:
    """``path`` if it exists; otherwise skip the calling test with a reason naming where the
    fixture is looked for, or fail it when ``TRANET_REQUIRE_FIXTURES=1`` (CI)."""
    import pytest

    if Path(path).is_file():
        return Path(path)
    reason = (f"real DISFA fixture {path} not found (licensed data, not in the repository: "
              f"put the fixture folder at {SHARED_FIXTURES} beside the clone)")
    if os.environ.get(REQUIRE_FIXTURES_ENV, "").strip() not in ("", "0"):
        pytest.fail(f"{reason}; {REQUIRE_FIXTURES_ENV} is set, so it is required")
    pytest.skip(reason)


@functools.lru_cache(maxsize=1)
def _template() -> np.ndarray:
    pts = real_landmarks()
    nose = (pts[NOSE_ROOT] + pts[NOSE_TIP]) / 2
    span = pts[CHIN] - nose
    angle = np.arctan2(span[0], span[1])  # rotate so that the chin is straight below the nose
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return ((pts - nose) @ rot.T) / np.hypot(*span)


def template_landmarks() -> np.ndarray:
    """The real face's 66 points normalised: nose midpoint at (0, 0), chin at (0, 1)."""
    return _template().copy()


def posed_landmarks(nose_xy: Sequence[float], scale: float, angle_deg: float) -> np.ndarray:
    """The template face with its nose midpoint at ``nose_xy``, nose-chin ``scale`` pixels long,
    rolled by ``angle_deg``."""
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return template_landmarks() @ rot.T * scale + np.asarray(nose_xy, dtype=float)


#: The face track repeats with this period, so landmark files repeat too and are hard-linked.
TRACK_PERIOD = 120


def face_track(n: int, width: int, height: int) -> np.ndarray:
    """``[n, 66, 2]`` 0-based landmarks of a face drifting and rolling gently (periodic)."""
    phase = 2 * np.pi * np.arange(n) / TRACK_PERIOD
    scale = 0.45 * height
    nose_x = width / 2 + 0.04 * width * np.sin(phase)
    nose_y = 0.38 * height + 0.03 * height * np.cos(2 * phase)
    angle = 8.0 * np.sin(3 * phase)
    return np.stack([posed_landmarks((x, y), scale, a) for x, y, a in zip(nose_x, nose_y, angle)])


def draw_frame(points: np.ndarray, width: int, height: int) -> np.ndarray:
    """A BGR frame: grey background, a face-coloured polygon, a white nose dot, a dark chin."""
    img = np.full((height, width, 3), 60, np.uint8)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(img, hull, (120, 150, 190))
    nose = (points[NOSE_ROOT] + points[NOSE_TIP]) / 2
    r = max(1, int(round(0.03 * max(width, height))))
    cv2.circle(img, tuple(int(v) for v in np.round(nose)), r, (255, 255, 255), -1)
    return img


def write_video(path: Path, frames_bgr, width: int, height: int, fps: float = 20.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    assert writer.isOpened(), path
    for frame in frames_bgr:
        writer.write(frame)
    writer.release()


def write_mat(path: Path, pts_1based: np.ndarray, compress: bool = False) -> None:
    scipy.io.savemat(str(path), {"pts": np.asarray(pts_1based, dtype=np.float64)},
                     do_compression=compress)


def label_intensities(subject: str, n: int, seed: int = 0) -> np.ndarray:
    """Deterministic ``[n, 12]`` intensities 0-5 in runs, per-AU base rates differing."""
    rng = np.random.default_rng(seed + int(subject[2:]))
    out = np.zeros((n, len(ALL_AUS)), np.uint8)
    for col in range(len(ALL_AUS)):
        p_active = 0.05 + 0.04 * col
        run = 25
        starts = rng.random((n + run - 1) // run) < p_active
        levels = rng.integers(1, 6, size=starts.size)
        out[:, col] = np.repeat(np.where(starts, levels, 0), run)[:n]
    return out


def write_labels(root: Path, subject: str, intensity: np.ndarray, folder_case: str = "") -> None:
    d = root / "ActionUnit_Labels" / subject
    d.mkdir(parents=True, exist_ok=True)
    prefixes = [f"{f}," for f in range(1, len(intensity) + 1)]
    digits = np.array([str(v) for v in range(10)])
    for col, au in enumerate(ALL_AUS):
        lines = map(operator.add, prefixes, digits[intensity[:, col]].tolist())
        (d / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")


def _link(src: Path | str, dst: Path | str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


@dataclass
class Release:
    root: Path
    frames: dict[str, int]
    landmarks: dict[int, np.ndarray] = field(default_factory=dict)  # n -> [n, 66, 2] 0-based
    intensity: dict[str, np.ndarray] = field(default_factory=dict)
    width: int = 32
    height: int = 24


def write_release(
    root: Path,
    frames: dict[str, int],
    width: int = 32,
    height: int = 24,
    cameras: Sequence[str] = ("left",),
    one_based_subjects: Sequence[str] = ("SN031",),
    missing_landmarks: dict[str, Sequence[int]] | None = None,
    compress_mat: bool = False,
    seed: int = 0,
    share_landmark_dirs: bool = False,
) -> Release:
    """Write a DISFA-like release under ``root``.

    ``frames``: subject -> frame count. ``one_based_subjects`` use the ``l0NNNN_lm.mat``
    naming (1-based); the others ``SN0xx_NNNN_lm.mat`` (0-based). ``missing_landmarks``:
    subject -> 0-based frames whose landmark file is left out. Names vary in case as in the
    real release (``LeftVideo``/``leftVideo``, ``_comp``/``_Comp``, ``tmp_frame_lm``/``frame_lm``).
    ``share_landmark_dirs``: subjects with the same frame count and naming scheme (and nothing
    missing) get a symlink to the first such subject's landmark folder, so the files inside keep
    that subject's prefix; the pipeline reads only the frame number. Makes a release with the
    real counts fast to write.
    """
    root = Path(root)
    missing_landmarks = missing_landmarks or {}
    cache = root / ".fixture_cache"
    cache.mkdir(parents=True, exist_ok=True)
    release = Release(root=root, frames=dict(frames), width=width, height=height)
    shared: dict[tuple[int, bool], Path] = {}
    video_dirs = {"left": root / "Videos_LeftCamera", "right": root / "Video_RightCamera"}
    for k, subject in enumerate(sorted(frames)):
        n = frames[subject]
        if n not in release.landmarks:
            pts = face_track(n, width, height)
            release.landmarks[n] = pts
            write_video(cache / f"video_{n}.avi", (draw_frame(p, width, height) for p in pts),
                        width, height)
            mats = cache / f"mats_{n}"
            mats.mkdir()
            for i, p in enumerate(pts):  # creating files is slow: write one period, link the rest
                if i < TRACK_PERIOD:
                    write_mat(mats / f"{i}.mat", p + 1.0, compress=compress_mat)  # 1-based
                else:
                    _link(f"{mats}/{i % TRACK_PERIOD}.mat", f"{mats}/{i}.mat")
        intensity = label_intensities(subject, n, seed)
        release.intensity[subject] = intensity
        write_labels(root, subject, intensity)
        for camera in cameras:
            video_dirs[camera].mkdir(parents=True, exist_ok=True)
            prefix = ("LeftVideo" if camera == "left" else "RightVideo")
            if k % 2:
                prefix = prefix[0].lower() + prefix[1:]
            suffix = "_comp" if k % 3 else "_Comp"
            _link(cache / f"video_{n}.avi", video_dirs[camera] / f"{prefix}{subject}{suffix}.avi")
        lm_dir = root / "Landmark_Points" / subject / ("tmp_frame_lm" if k % 2 else "frame_lm")
        skip = set(missing_landmarks.get(subject, ()))
        one_based = subject in one_based_subjects
        key = (n, one_based)
        if share_landmark_dirs and not skip and key in shared:
            lm_dir.parent.mkdir(parents=True)
            os.symlink(shared[key], lm_dir, target_is_directory=True)
            continue
        lm_dir.mkdir(parents=True)
        if not skip:
            shared.setdefault(key, lm_dir)
        src, dst = str(cache / f"mats_{n}"), str(lm_dir)
        for i in range(n):
            if i in skip:
                continue
            name = f"l0{i + 1:04d}_lm.mat" if one_based else f"{subject}_{i:04d}_lm.mat"
            _link(f"{src}/{i}.mat", f"{dst}/{name}")
    return release


def _avi_frame_chunks(data: bytes) -> list[int]:
    """Offsets of the frame chunks (``00dc``) in an AVI's ``movi`` list, in order."""
    movi, index = data.find(b"movi"), data.find(b"idx1")
    end = index if index > 0 else len(data)
    out, pos = [], data.find(b"00dc", movi)
    while 0 <= pos < end:
        out.append(pos)
        pos += 8 + int.from_bytes(data[pos + 4 : pos + 8], "little")
        pos += pos % 2  # chunks are padded to even sizes
    return out


def keep_first_frames(path: Path, keep: int) -> None:
    """Cut an AVI after its first ``keep`` frames, leaving the header's frame count as it was
    (a video that decodes fewer frames than it claims)."""
    data = Path(path).read_bytes()
    chunks = _avi_frame_chunks(data)
    assert keep < len(chunks), (keep, len(chunks))
    Path(path).unlink()  # fixture videos are hard links: write a file of its own
    Path(path).write_bytes(data[: chunks[keep]])


def set_header_frame_count(path: Path, n: int) -> None:
    """Make an AVI's header claim ``n`` frames (``avih`` total frames and ``strh`` length)
    whatever it really holds."""
    data = bytearray(Path(path).read_bytes())
    avih, strh = data.find(b"avih"), data.find(b"strh")
    assert avih > 0 and strh > 0, path
    data[avih + 24 : avih + 28] = int(n).to_bytes(4, "little")  # dwTotalFrames
    data[strh + 40 : strh + 44] = int(n).to_bytes(4, "little")  # dwLength
    Path(path).unlink()  # fixture videos are hard links: write a file of its own
    Path(path).write_bytes(bytes(data))

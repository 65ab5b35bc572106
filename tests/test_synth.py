"""The synthetic DISFA twin: layout, quirks, file formats, determinism and the face model."""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from pipeline.datasets.disfa import facts as disfa
from pipeline import twin as synth
from pipeline.twin import SynthConfig, build_subject, plan_subjects, synthesize
from pipeline.twin.face_render import render_face
from pipeline.twin.face_shape import (ALL_AUS, BROWS, EYES, JAW, MOUTH, NOSE, Identity, Pose,
                                     face_shape, sample_identity)

SUBJECTS = ("SN001", "SN002", "SN031")
FRAMES = 40


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> tuple[Path, SynthConfig, dict]:
    out = tmp_path_factory.mktemp("twin")
    cfg = SynthConfig.tiny(subjects=SUBJECTS, frames=FRAMES, seed=7)
    return out, cfg, synthesize(out, cfg)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".txt", ".mat", ".csv")}


def test_layout_names_and_quirks(twin):
    out, cfg, summary = twin
    assert summary["failed"] == {}
    assert sorted(summary["subjects"]) == list(SUBJECTS)
    left = sorted(p.name for p in (out / "Videos_LeftCamera").iterdir())
    right = sorted(p.name for p in (out / "Video_RightCamera").iterdir())
    assert left == ["LeftVideoSN001_comp.avi", "LeftVideoSN031_comp.avi",
                    "leftVideoSN002_Comp.avi"]
    assert right == [f"RightVideo{s}_Comp.avi" for s in SUBJECTS]
    for subject in SUBJECTS:
        labels = sorted(p.name for p in (out / "ActionUnit_Labels" / subject).iterdir())
        assert labels == sorted(f"{subject}_au{au}.txt" for au in ALL_AUS)
    # Standard scheme: 0-based 4-digit frames in tmp_frame_lm, one file per frame.
    sn001 = out / "Landmark_Points" / "SN001"
    assert [p.name for p in sn001.iterdir()] == ["tmp_frame_lm"]
    names = sorted(p.name for p in (sn001 / "tmp_frame_lm").iterdir())
    assert names == [f"SN001_{i:04d}_lm.mat" for i in range(FRAMES)]
    # SN031: l0 + 1-based frame, other folder name, the middle file missing.
    sn031 = out / "Landmark_Points" / "SN031"
    assert [p.name for p in sn031.iterdir()] == ["frame_lm"]
    names = sorted(p.name for p in (sn031 / "frame_lm").iterdir())
    missing = (FRAMES + 1) // 2
    assert names == [f"l0{k:04d}_lm.mat" for k in range(1, FRAMES + 1) if k != missing]
    assert "l00001_lm.mat" in names
    assert not (out / synth.TMP_DIR).exists()


def test_videos_read_back_with_size_and_count(twin):
    out, cfg, _ = twin
    for path in [out / "Videos_LeftCamera" / "leftVideoSN002_Comp.avi",
                 out / "Video_RightCamera" / "RightVideoSN031_Comp.avi"]:
        cap = cv2.VideoCapture(str(path))
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            frames.append(frame)
        assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(cfg.fps)
        cap.release()
        assert len(frames) == FRAMES
        assert frames[0].shape == (cfg.height, cfg.width, 3)
        assert frames[0].std() > 10  # a picture, not a blank frame


def test_label_files_format(twin):
    out, _, _ = twin
    text = (out / "ActionUnit_Labels" / "SN001" / "SN001_au12.txt").read_text()
    lines = text.splitlines()
    assert len(lines) == FRAMES
    assert all(re.fullmatch(r"\d+,[0-5]", line) for line in lines)
    assert [int(line.split(",")[0]) for line in lines] == list(range(1, FRAMES + 1))


def test_mat_contents_are_one_based_left_camera_landmarks(twin):
    out, cfg, _ = twin
    plan = next(p for p in plan_subjects(cfg) if p.subject == "SN031")
    subject = build_subject(plan, cfg)
    good = [i for i in range(FRAMES) if i + 1 != plan.missing_frame
            and not any(i + 1 in r for r in plan.bad_ranges)][:5]
    for i in good:
        mat = scipy.io.loadmat(out / "Landmark_Points/SN031/frame_lm" / plan.landmark_name(i))
        pts = mat["pts"]
        assert pts.shape == (66, 2) and pts.dtype == np.float64
        truth = subject.landmarks_true(i)  # 0-based pixels
        err = np.linalg.norm(pts - 1.0 - truth, axis=1).mean()
        assert err < 0.02 * subject.poses_left[i].scale
        # Not 0-based: the 1 px MATLAB offset is larger than the tracker jitter here.
        assert np.linalg.norm(pts - truth, axis=1).mean() > err


def test_error_log_frames_have_wrong_landmarks(twin):
    out, cfg, _ = twin
    ranges = disfa.read_bad_frame_csv(out / "Error_LOG_Sheet.csv")
    assert set(ranges) == {"SN001", "SN002"}  # SN031 has no bad frames in the release
    plan = next(p for p in plan_subjects(cfg) if p.subject == "SN001")
    subject = build_subject(plan, cfg)
    mask = disfa.bad_frame_mask(ranges["SN001"], FRAMES)
    assert 0 < mask.sum() < FRAMES
    for i in range(FRAMES):
        pts = scipy.io.loadmat(out / "Landmark_Points/SN001/tmp_frame_lm"
                               / plan.landmark_name(i))["pts"] - 1.0
        err = np.linalg.norm(pts - subject.landmarks_true(i), axis=1).mean()
        face = subject.poses_left[i].scale
        if mask[i]:
            assert err > 0.2 * face, f"bad frame {i + 1} landmarks look right"
        else:
            assert err < 0.02 * face, f"good frame {i + 1} landmarks are off"


def test_same_seed_same_bytes_other_seed_differs(twin, tmp_path):
    out, cfg, _ = twin
    again = tmp_path / "again"
    synthesize(again, SynthConfig.tiny(subjects=SUBJECTS, frames=FRAMES, seed=7, jobs=2,
                                       right_camera=False))
    first, second = _files(out), _files(again)
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)
    other = tmp_path / "other"
    synthesize(other, SynthConfig.tiny(subjects=("SN001",), frames=FRAMES, seed=8,
                                       right_camera=False))
    labels = [f"ActionUnit_Labels/SN001/SN001_au{au}.txt" for au in ALL_AUS]
    assert any(_files(other)[k] != first[k] for k in labels)


def test_rerun_resumes_without_rewriting(twin):
    out, cfg, _ = twin
    video = out / "Videos_LeftCamera" / "LeftVideoSN001_comp.avi"
    before = video.stat().st_mtime_ns
    summary = synthesize(out, cfg)
    assert summary["rendered_frames"] == 0
    assert video.stat().st_mtime_ns == before
    # A subject whose files went missing is written again, the others are kept.
    labels = (out / "ActionUnit_Labels/SN002/SN002_au1.txt").read_bytes()
    (out / "Videos_LeftCamera" / "leftVideoSN002_Comp.avi").unlink()
    summary = synthesize(out, cfg)
    assert summary["rendered_frames"] == 2 * FRAMES
    assert (out / "Videos_LeftCamera" / "leftVideoSN002_Comp.avi").exists()
    assert (out / "ActionUnit_Labels/SN002/SN002_au1.txt").read_bytes() == labels
    assert video.stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- face model

#: Landmarks each AU may move (FACS regions); everything else must stay put.
AU_REGIONS = {
    1: BROWS, 2: BROWS, 4: BROWS + EYES, 5: EYES, 6: EYES + [2, 3, 13, 14, 17, 26],
    9: NOSE + BROWS + EYES + MOUTH, 12: MOUTH + EYES, 15: MOUTH, 17: JAW + MOUTH,
    20: MOUTH + JAW, 25: MOUTH, 26: JAW + MOUTH,
}
#: Points that must move for each AU, and the direction (image y grows downwards).
AU_KEY_MOTION = {
    1: ([21, 22], "up"), 2: ([17, 26], "up"), 4: ([21, 22], "down"), 5: ([37, 44], "up"),
    6: ([40, 47], "up"), 9: ([31, 35], "up"), 12: ([48, 54], "up"), 15: ([48, 54], "down"),
    17: ([8, 57], "up"), 20: ([48, 54], "out"), 25: ([57], "down"), 26: ([8], "down"),
}


def _shape(aus: dict[int, int], identity: Identity | None = None) -> np.ndarray:
    return face_shape(identity or Identity(), aus, Pose((100.0, 100.0), 100.0, 0.0, 0.0))


@pytest.mark.parametrize("au", ALL_AUS)
def test_each_au_moves_its_landmarks_and_no_others(au):
    neutral = _shape({})
    moved = np.linalg.norm(_shape({au: 5}) - neutral, axis=1)
    outside = [i for i in range(66) if i not in AU_REGIONS[au]]
    assert moved[outside].max() < 1e-9, f"AU{au} moved points {np.nonzero(moved > 1e-9)}"
    keys, direction = AU_KEY_MOTION[au]
    delta = _shape({au: 5})[keys] - neutral[keys]
    if direction == "up":
        assert (delta[:, 1] < -1.0).all()
    elif direction == "down":
        assert (delta[:, 1] > 1.0).all()
    else:
        assert delta[0, 0] < -1.0 and delta[-1, 0] > 1.0
    # Intensity scales the deformation, with a clear step across the C threshold.
    steps = [np.linalg.norm(_shape({au: k})[keys] - neutral[keys]) for k in range(6)]
    assert all(a < b for a, b in zip(steps, steps[1:]))
    assert steps[3] - steps[2] > steps[2] - steps[1]


def test_au12_leaves_the_brows_and_jaw():
    neutral, smile = _shape({}), _shape({12: 5})
    assert np.allclose(neutral[BROWS + JAW], smile[BROWS + JAW])


def test_pose_rolls_and_scales_the_shape():
    identity = Identity()
    base = face_shape(identity, {}, Pose((0.0, 0.0), 100.0, 0.0, 0.0))
    rolled = face_shape(identity, {}, Pose((0.0, 0.0), 200.0, 10.0, 0.0))
    ang = lambda s: np.degrees(np.arctan2(*(s[45] - s[36])[::-1]))  # noqa: E731
    assert ang(rolled) - ang(base) == pytest.approx(10.0, abs=1e-6)
    assert np.linalg.norm(rolled[16] - rolled[0]) == pytest.approx(
        2 * np.linalg.norm(base[16] - base[0]))


REGION_OF_AU = {1: (17, 26), 4: (17, 26), 6: (36, 47), 9: (27, 35), 12: (48, 59), 25: (48, 65),
                26: (48, 65)}


@pytest.mark.parametrize("au", sorted(REGION_OF_AU))
def test_rendered_pixels_change_where_the_au_acts(au):
    identity = sample_identity(np.random.default_rng(3))
    pose = Pose((80.0, 80.0), 100.0, 0.0, 0.0)
    neutral = np.full((200, 160, 3), 128, np.uint8)
    active = neutral.copy()
    render_face(neutral, identity, [0] * 12, pose)
    aus = [5 if a == au else 0 for a in ALL_AUS]
    render_face(active, identity, aus, pose)
    pts = face_shape(identity, aus, pose)
    lo, hi = REGION_OF_AU[au]
    x0, y0 = np.floor(pts[lo:hi + 1].min(axis=0) - 6).astype(int)
    x1, y1 = np.ceil(pts[lo:hi + 1].max(axis=0) + 6).astype(int)
    diff = np.abs(active.astype(int) - neutral.astype(int)).sum(axis=2)
    inside = diff[y0:y1, x0:x1].mean()
    assert inside > 8.0
    # Hair and background far from the face never change.
    assert diff[:10].max() == 0


# ----------------------------------------------------------------------------- schedule


def test_real_count_mode_gives_the_release_lengths_and_ranges():
    cfg = SynthConfig(subjects=("SN010", "SN031", "SN021"), frames=4845)
    plans = {p.subject: p for p in plan_subjects(cfg)}
    assert plans["SN010"].n_frames == 4844
    assert plans["SN031"].n_frames == 4845
    assert plans["SN031"].missing_frame == 3631
    assert plans["SN031"].landmark_name(3630) == "l03631_lm.mat"
    assert plans["SN010"].landmark_name(0) == "SN010_0000_lm.mat"
    assert plans["SN021"].bad_ranges == disfa.bad_frame_ranges()["SN021"]
    assert synth.frames_for("SN010", 300) == 300
    args = synth.build_parser().parse_args(["--out", "x", "--frames", "real"])
    assert synth.frames_for("SN010", args.frames) == 4844


def test_short_twins_scale_the_bad_ranges_into_range():
    for subject, real in disfa.bad_frame_ranges().items():
        scaled = synth.scaled_bad_ranges(subject, 300, 300)
        assert scaled and all(1 <= r.first <= r.last <= 300 for r in scaled)
        assert all(a.last < b.first for a, b in zip(scaled, scaled[1:]))
        assert len(scaled) <= len(real)


def test_schedule_covers_eval_aus_above_threshold_and_has_episodes():
    for seed in range(6):
        sched = synth.au_schedule(300, np.random.default_rng(seed))
        assert sched.shape == (300, 12) and sched.max() <= 5
        for au in disfa.EVAL_AUS:
            col = sched[:, ALL_AUS.index(au)]
            assert (col >= 3).sum() >= 5, f"seed {seed}: AU{au} never reaches C"
            assert (col == 0).sum() > 0
        # Episodes ramp: intensity changes by at most a couple of levels per frame.
        assert np.abs(np.diff(sched.astype(int), axis=0)).max() <= 2
    long = synth.au_schedule(4845, np.random.default_rng(0))
    rates = (long >= 3).mean(axis=0)
    assert rates[ALL_AUS.index(25)] > rates[ALL_AUS.index(20)]  # rare vs common, as in DISFA
    assert rates.max() < 0.6


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="SN014"):
        SynthConfig(subjects=("SN014",))
    with pytest.raises(ValueError):
        SynthConfig(frames=0)


def test_au1_stays_visible_under_au4():
    neutral, sad = _shape({}), _shape({1: 4, 4: 4})
    inner = [21, 22]
    assert (sad[inner, 1] < neutral[inner, 1]).all()  # inner brows still raised
    assert sad[21, 0] > neutral[21, 0] and sad[22, 0] < neutral[22, 0]  # and drawn together

"""pipeline.align end to end on hand-made releases: shards, drop rules, reruns, bad input,
Dask, the right camera, and the real frame counts (126,144 kept frames)."""
import json
import os
import re
import shutil

import cv2
import numpy as np
import pytest

from _disfa_fixtures import (keep_first_frames, real_landmarks, require_fixture,
                             set_header_frame_count, write_labels, write_mat, write_release,
                             write_video)
from pipeline import align as align_mod
from pipeline.align import AlignConfig, main, run_align
from pipeline.alignment import nose_and_chin
from pipeline.build_folds import FoldConfig, build_folds
from pipeline.datasets.disfa.facts import ALL_AUS, EVAL_AUS, SUBJECTS, n_frames, standard_folds
from pipeline.shards import ShardReader, ShardWriter, is_complete_shard


def _run(root, out, *extra):
    return main(["--disfa-root", str(root), "--out", str(out), *map(str, extra)])


def _summary(out):
    return json.loads((out / "align_summary.json").read_text())


def _replace_mat(release, subject, frame, pts_0based):
    """Rewrite one landmark file (unlinking first: fixture files are hard links)."""
    folder = next((release.root / "Landmark_Points" / subject).iterdir())
    path = folder / f"{subject}_{frame:04d}_lm.mat"
    path.unlink()
    write_mat(path, pts_0based + 1.0)


def test_round_trip_through_align(tmp_path, capsys):
    rel = write_release(tmp_path / "disfa", {"SN001": 30, "SN002": 30, "SN031": 30},
                        width=96, height=72, missing_landmarks={"SN031": [12]})
    out = tmp_path / "shards"
    assert _run(rel.root, out, "--size", 32, "--jobs", 2, "--threshold", "B") == 0
    table = capsys.readouterr().out
    assert "SN031" in table and "filled 1" in table
    for subject in ("SN001", "SN002", "SN031"):
        r = ShardReader(out / f"{subject}_left.h5")
        assert len(r) == 30 and r.frame_index.tolist() == list(range(30))
        np.testing.assert_array_equal(r.intensity, rel.intensity[subject])
        cols = [ALL_AUS.index(a) for a in EVAL_AUS]
        np.testing.assert_array_equal(r.labels, rel.intensity[subject][:, cols] >= 2)
        a = r.attrs
        assert (a["subject"], a["camera"], a["threshold"], a["image_size"]) == (
            subject, "left", 2, 32)
        assert tuple(a["au_ids"]) == EVAL_AUS and a["n_source_frames"] == 30
        np.testing.assert_allclose(a["nose_target"], [16, 16])
        np.testing.assert_allclose(a["chin_target"], [16, 28])
        assert a["dropped"] == {} and a["pipeline_version"] == align_mod.PIPELINE_VERSION
        assert a["config"]["size"] == 32 and a["config"]["threshold"] == 2
        assert a["config"]["landmark_source"] == "release"
        np.testing.assert_array_equal(a["pos_count"], r.labels.sum(0))
        # Landmarks were transformed with the frame: nose midpoint and chin on their targets.
        nose = (r.landmarks[:, 27] + r.landmarks[:, 30]) / 2
        np.testing.assert_allclose(nose, np.tile([16, 16], (30, 1)), atol=1e-3)
        np.testing.assert_allclose(r.landmarks[:, 8], np.tile([16, 28], (30, 1)), atol=1e-3)
        # ... and so were the pixels: the white nose dot sits at the centre, in RGB order.
        img = r.image(7).astype(int)
        assert img[16, 16].min() > 200 and img[2, 2].max() < 100  # dot; background
        face = img[22, 16]  # on the face, below the nose: drawn as BGR (120, 150, 190)
        assert face[0] > face[2]
    assert ShardReader(out / "SN031_left.h5").attrs["config"]["landmarks_filled"] == 1
    summary = _summary(out)
    row = summary["subjects"]["SN001_left"]
    assert row["status"] == "ok" and row["kept"] == 30 and row["frames_read"] == 30
    labels = ShardReader(out / "SN001_left.h5").labels
    np.testing.assert_allclose(row["pos_rate"], labels.mean(0))
    assert summary["totals"] == {"frames_read": 90, "kept": 90, "dropped": {}, "filled": 1}


def test_drop_rules_and_counts(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 40}, width=64, height=48,
                        missing_landmarks={"SN001": [10, 11, 20]})
    truth = rel.landmarks[40]
    bad = truth[5].copy()
    bad[3] = np.nan
    _replace_mat(rel, "SN001", 5, bad)
    bad = truth[6].copy()
    bad[8] = (bad[27] + bad[30]) / 2  # chin on the nose
    _replace_mat(rel, "SN001", 6, bad)
    _replace_mat(rel, "SN001", 7, truth[7] + [1000, 0])  # off the frame
    log = tmp_path / "errors.csv"
    log.write_text("subject,first_frame,last_frame\nSN001,30,32\nSN009,1,5\n")
    out = tmp_path / "shards"
    assert _run(rel.root, out, "--size", 32, "--error-log", log, "--encoding", "raw") == 0
    r = ShardReader(out / "SN001_left.h5")
    assert r.attrs["dropped"] == {"error_log": 3, "landmarks_missing": 2, "landmarks_nan": 1,
                                  "landmarks_degenerate": 1, "landmarks_outside_frame": 1}
    expected = [i for i in range(40) if i not in (5, 6, 7, 10, 11, 29, 30, 31)]
    assert r.frame_index.tolist() == expected  # frame 20 kept: filled from frame 19
    np.testing.assert_allclose(r.landmarks[expected.index(20)], r.landmarks[expected.index(19)])
    assert r.attrs["config"]["bad_ranges"] == [[30, 32]]
    assert _summary(out)["subjects"]["SN001_left"]["filled"] == 1


def test_rerun_skips_current_shards_and_redoes_changed_ones(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 20, "SN002": 20})
    out = tmp_path / "shards"
    base = ("--size", 32, "--encoding", "raw")
    assert _run(rel.root, out, *base) == 0
    stamp = {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")}
    assert _run(rel.root, out, *base) == 0
    assert {r["status"] for r in _summary(out)["subjects"].values()} == {"skipped"}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.h5")} == stamp
    assert _run(rel.root, out, *base, "--subjects", "SN002", "--force") == 0
    rows = _summary(out)["subjects"]
    assert rows["SN002_left"]["status"] == "ok" and rows["SN001_left"]["status"] == "skipped"
    assert _run(rel.root, out, "--size", 40, "--encoding", "raw") == 0  # settings changed
    assert {r["status"] for r in _summary(out)["subjects"].values()} == {"ok"}
    assert ShardReader(out / "SN001_left.h5").image_size == 40


def test_bad_input_is_reported_per_subject(tmp_path, capsys, caplog):
    subjects = {s: 30 for s in ("SN001", "SN002", "SN003", "SN004", "SN005", "SN006", "SN007",
                                "SN008")}
    rel = write_release(tmp_path / "disfa", subjects)
    root = rel.root
    videos = root / "Videos_LeftCamera"

    def video(subject):
        return next(p for p in videos.iterdir() if subject in p.name)

    video("SN002").unlink()  # no video
    data = video("SN003").read_bytes()  # truncated: cut in the middle of the frame data
    video("SN003").unlink()
    (videos / "LeftVideoSN003_comp.avi").write_bytes(data[: len(data) // 2])
    video("SN004").unlink()  # corrupt: not a video at all
    (videos / "LeftVideoSN004_comp.avi").write_bytes(os.urandom(5000))
    lines = [f"{i},0" for i in range(1, 31)]
    lines[16] = "17,x"
    au4 = root / "ActionUnit_Labels" / "SN005" / "SN005_au4.txt"
    au4.unlink()
    au4.write_text("\n".join(lines) + "\n")  # non-numeric intensity on line 17
    au9 = root / "ActionUnit_Labels" / "SN006" / "SN006_au9.txt"
    au9.unlink()
    au9.write_text("".join(f"{i},0\n" for i in range(1, 29)))  # wrong length
    folder = next((root / "Landmark_Points" / "SN007").iterdir())
    (folder / "SN007_0004_lm.mat").unlink()
    write_mat(folder / "SN007_0004_lm.mat", np.zeros((68, 2)))  # wrong shape
    shutil.rmtree(root / "ActionUnit_Labels" / "SN008")  # labels shorter than the video
    write_labels(root, "SN008", rel.intensity["SN008"][:25])

    out = tmp_path / "shards"
    assert _run(root, out, "--size", 32, "--jobs", 2) == 1
    rows = _summary(out)["subjects"]
    assert rows["SN001_left"]["status"] == "ok"
    errors = {key[:5]: row.get("error", "") for key, row in rows.items()}
    assert "SN002: no left-camera video in Videos_LeftCamera" in errors["SN002"]
    assert "Videos_LeftCamera/LeftVideoSN003_comp.avi" in errors["SN003"]
    assert "frame" in errors["SN003"]
    assert "Videos_LeftCamera/LeftVideoSN004_comp.avi: cannot open the video" in errors["SN004"]
    assert errors["SN005"] == ("ActionUnit_Labels/SN005/SN005_au4.txt line 17: "
                               "non-numeric intensity 'x'")
    assert "ActionUnit_Labels/SN006/SN006_au9.txt has 28 frames, the others 30" in errors["SN006"]
    assert "SN007/frame_lm/SN007_0004_lm.mat: 'pts' has shape (68, 2)" in errors["SN007"]
    assert ("leftVideoSN008_comp.avi: the video decodes 30 frames (header says 30), the label "
            "files have 25: 5 frames apart, more than --length-tolerance 2") in errors["SN008"]
    assert "FAILED" in capsys.readouterr().err
    # No partial shard is left, under the final name or as a temporary file.
    assert sorted(p.name for p in out.iterdir()) == ["SN001_left.h5", "align_summary.json"]
    assert is_complete_shard(out / "SN001_left.h5")


def test_truncated_video_with_intact_header_names_the_frame(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 30}, width=64, height=48)
    out = tmp_path / "shards"
    video = next((rel.root / "Videos_LeftCamera").iterdir())
    cap = cv2.VideoCapture(str(video))
    frames = [cap.read()[1] for _ in range(30)]
    video.unlink()
    write_video(video, frames[:20], 64, 48)  # a whole, shorter file: header says 20
    assert _run(rel.root, out, "--size", 32) == 1
    assert (f"{video.name}: the video decodes 20 frames (header says 20), the label files have "
            "30: 10 frames apart, more than --length-tolerance 2 (the video ends early") in (
        _summary(out)["subjects"]["SN001_left"]["error"])
    # Frame data cut away behind an intact header (it still says 30): decoding stops early.
    whole = tmp_path / "whole.avi"
    write_video(whole, frames, 64, 48)
    video.unlink()
    video.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert _run(rel.root, out, "--size", 32) == 1
    error = _summary(out)["subjects"]["SN001_left"]["error"]
    assert re.fullmatch(rf"Videos_LeftCamera/{video.name}: the video decodes (\d+) frames "
                        r"\(header says 30\), the label files have 30: \d+ frames apart, more "
                        r"than --length-tolerance 2 \(the video ends early: truncated or "
                        r"corrupt\?\); --trim-to-shorter aligns the \1 frames both have",
                        error), error
    assert not list(out.glob("*.h5")) and not list(out.glob(".*tmp*"))
    decoded = int(re.match(r".* decodes (\d+) frames", error).group(1))
    assert _run(rel.root, out, "--size", 32, "--trim-to-shorter") == 0  # the good frames stay
    assert ShardReader(out / "SN001_left.h5").frame_index.tolist() == list(range(decoded))


def test_missing_root_is_an_error(tmp_path, capsys):
    assert _run(tmp_path / "absent", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err


def test_dask_backend_gives_the_same_shards(tmp_path):
    distributed = pytest.importorskip("distributed")
    rel = write_release(tmp_path / "disfa", {"SN001": 20, "SN002": 20})
    cfg = dict(disfa_root=str(rel.root), size=16, encoding="raw")
    run_align(AlignConfig(out=str(tmp_path / "joblib"), jobs=2, **cfg))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster:
        summary = run_align(AlignConfig(out=str(tmp_path / "dask"), backend="dask",
                                        scheduler=cluster.scheduler_address, **cfg))
    assert summary["failed"] == []
    for name in ("SN001_left.h5", "SN002_left.h5"):
        a, b = ShardReader(tmp_path / "joblib" / name), ShardReader(tmp_path / "dask" / name)
        np.testing.assert_array_equal(a.frame_index, b.frame_index)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.image(3), b.image(3))


def test_right_camera_uses_dlib_landmarks(tmp_path):
    """Both cameras on the real SN002 frame: the right video gets dlib's landmarks, which
    must agree with the release's AAM points after alignment."""
    pytest.importorskip("dlib")
    root = tmp_path / "disfa"
    frame = cv2.imread(str(require_fixture()))
    height, width = frame.shape[:2]
    for folder, name in (("Videos_LeftCamera", "LeftVideoSN002_comp.avi"),
                         ("Video_RightCamera", "RightVideoSN002_Comp.avi")):
        (root / folder).mkdir(parents=True)
        write_video(root / folder / name, [frame] * 3, width, height)
    write_labels(root, "SN002", np.zeros((3, 12), np.uint8))
    lm_dir = root / "Landmark_Points" / "SN002" / "tmp_frame_lm"
    lm_dir.mkdir(parents=True)
    for i in range(3):
        write_mat(lm_dir / f"SN002_{i:04d}_lm.mat", real_landmarks() + 1.0)
    out = tmp_path / "shards"
    assert _run(root, out, "--camera", "both", "--size", 112) == 0
    left, right = ShardReader(out / "SN002_left.h5"), ShardReader(out / "SN002_right.h5")
    assert len(right) == 3 and right.attrs["config"]["landmark_source"] == "dlib"
    nose, chin = nose_and_chin(right.landmarks[0])
    np.testing.assert_allclose(nose, [56, 56], atol=1e-3)
    np.testing.assert_allclose(chin, [56, 98], atol=1e-3)
    # Same frame, so dlib's aligned face should match the AAM-aligned one to a few pixels.
    error = np.linalg.norm(right.landmarks[0] - left.landmarks[0], axis=1)
    assert np.median(error) < 0.05 * 112


def test_append_many_equals_append(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (5, 8, 8, 3), dtype=np.uint8)
    images[1] = images[0]  # equal-length JPEGs must not confuse the block write
    intensity = rng.integers(0, 6, (5, 12)).astype(np.uint8)
    points = rng.uniform(0, 8, (5, 66, 2)).astype(np.float32)
    commit = dict(subject="SN001", camera="left", threshold=3, nose_target=(4, 4),
                  chin_target=(4, 7), n_source_frames=5)
    for encoding in ("raw", "jpeg"):
        with ShardWriter(tmp_path / f"a_{encoding}.h5", 8, encoding=encoding) as w:
            for i in range(5):
                w.append(images[i], i, intensity[i], points[i])
            w.commit(**commit)
        with ShardWriter(tmp_path / f"b_{encoding}.h5", 8, encoding=encoding) as w:
            w.append_many(images[:2], [0, 1], intensity[:2], points[:2])
            w.append_many(images[2:], [2, 3, 4], intensity[2:], points[2:])
            w.commit(**commit)
        with ShardWriter(tmp_path / f"c_{encoding}.h5", 8, encoding=encoding) as w:
            w.append_many(images[..., ::-1].copy(), range(5), intensity, points, bgr=True)
            w.commit(**commit)
        a, b, c = (ShardReader(tmp_path / f"{x}_{encoding}.h5") for x in "abc")
        for i in range(5):
            np.testing.assert_array_equal(a.image(i), b.image(i))
            np.testing.assert_array_equal(a.image(i), c.image(i))
        for other in (b, c):
            np.testing.assert_array_equal(a.landmarks, other.landmarks)
            np.testing.assert_array_equal(a.intensity, other.intensity)
            np.testing.assert_array_equal(a.frame_index, other.frame_index)


@pytest.fixture(scope="module")
def real_count_shards(tmp_path_factory):
    """All 27 subjects with the release's frame counts (tiny frames), aligned with defaults
    except for a small, raw output to keep the test fast."""
    base = tmp_path_factory.mktemp("real_counts")
    rel = write_release(base / "disfa", {s: n_frames(s) for s in SUBJECTS},
                        missing_landmarks={"SN031": [3630]}, share_landmark_dirs=True)
    out = base / "shards"
    summary = run_align(AlignConfig(disfa_root=str(rel.root), out=str(out), jobs=2, size=16,
                                    encoding="raw"))
    return out, summary


def test_real_counts_keep_126144_frames(real_count_shards):
    out, summary = real_count_shards
    assert summary["failed"] == []
    totals = summary["totals"]
    assert totals["frames_read"] == 130_814
    assert totals["kept"] == 126_144
    assert totals["dropped"] == {"error_log": 4_670}
    assert totals["filled"] == 1  # SN031's missing l03631_lm.mat
    rows = summary["subjects"]
    assert rows["SN021_left"]["kept"] == 1_793
    assert rows["SN010_left"]["frames_read"] == 4_844
    assert ShardReader(out / "SN031_left.h5").frame_index.tolist()[3628:3632] == [
        3628, 3629, 3630, 3631]


def test_real_counts_make_the_standard_parts(real_count_shards):
    out, _ = real_count_shards
    manifest = build_folds(out, FoldConfig())
    parts_frames = standard_folds()["kept_frames_per_part"]
    assert parts_frames == [43_173, 40_344, 42_627]
    for k, fold in enumerate(manifest["folds"]):
        assert fold["frames"]["test"] == parts_frames[k]
        assert sum(fold["frames"].values()) == 126_144


def test_synth_twin_end_to_end(tmp_path):
    """pipeline.synth -> pipeline.align (the twin's own error log) -> pipeline.build_folds."""
    synth = pytest.importorskip("pipeline.twin")
    from pipeline.build_folds import load_folds, write_folds
    from pipeline.datasets.disfa.facts import read_bad_frame_csv

    twin = tmp_path / "twin"
    result = synth.synthesize(twin, synth.SynthConfig.tiny(n_subjects=3, frames=40,
                                                           right_camera=False))
    assert not result["failed"]
    error_log = twin / "Error_LOG_Sheet.csv"
    out = tmp_path / "shards"
    summary = run_align(AlignConfig(disfa_root=str(twin), out=str(out), size=48, jobs=2,
                                    error_log=str(error_log)))
    assert summary["failed"] == []
    ranges = read_bad_frame_csv(error_log)
    assert summary["totals"]["filled"] == 1  # the twin's missing landmark file
    for subject in ("SN001", "SN002", "SN003"):
        r = ShardReader(out / f"{subject}_left.h5")
        n_bad = sum(len(x) for x in ranges.get(subject, []))
        assert r.attrs["dropped"].get("error_log", 0) == n_bad
        assert len(r) + sum(r.attrs["dropped"].values()) == 40
        nose = (r.landmarks[:, 27] + r.landmarks[:, 30]) / 2
        np.testing.assert_allclose(nose, np.tile([24, 24], (len(r), 1)), atol=1e-3)
        np.testing.assert_allclose(r.landmarks[:, 8], np.tile([24, 42], (len(r), 1)), atol=1e-3)
        eyes = r.landmarks[:, 36:48, 1].mean(axis=1)
        assert (eyes < nose[:, 1]).all()
    manifest = build_folds(out, FoldConfig(scheme="kfold", k=3, seed=0, val_subjects=1))
    path = write_folds(manifest, tmp_path / "folds")
    loaded = load_folds(path)
    assert loaded["image_size"] == 48 and len(loaded["folds"]) == 3
    for fold in loaded["folds"]:
        assert len(fold["train"]) == len(fold["val"]) == len(fold["test"]) == 1
        assert sum(fold["au_weights"]) == pytest.approx(len(loaded["au_ids"]))


def test_trim_to_shorter_aligns_the_common_frames(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 30})
    shutil.rmtree(rel.root / "ActionUnit_Labels" / "SN001")
    write_labels(rel.root, "SN001", rel.intensity["SN001"][:25])
    out = tmp_path / "shards"
    assert _run(rel.root, out, "--size", 32) == 1
    assert _run(rel.root, out, "--size", 32, "--length-tolerance", 4) == 1
    assert _run(rel.root, out, "--size", 32, "--length-tolerance", 5) == 0
    assert _run(rel.root, out, "--size", 32, "--trim-to-shorter", "--force") == 0
    r = ShardReader(out / "SN001_left.h5")
    assert r.frame_index.tolist() == list(range(25))
    assert (r.attrs["n_video_frames"], r.attrs["n_label_frames"]) == (30, 25)
    assert r.attrs["n_source_frames"] == 25
    row = _summary(out)["subjects"]["SN001_left"]
    assert (row["n_video_frames"], row["n_label_frames"], row["frames_read"]) == (30, 25, 25)


def _reference_and_crafted(tmp_path, n_labels, camera="left"):
    """A 30-frame release aligned as is (the reference), and a copy to craft videos in."""
    rel = write_release(tmp_path / "disfa", {"SN001": 30}, width=64, height=48,
                        cameras=("left", "right"))
    ref = tmp_path / "ref"
    assert _run(rel.root, ref, "--size", 32, "--encoding", "raw", "--camera", camera) == 0
    if n_labels != 30:
        shutil.rmtree(rel.root / "ActionUnit_Labels" / "SN001")
        write_labels(rel.root, "SN001", rel.intensity["SN001"][:n_labels])
    folder = "Videos_LeftCamera" if camera == "left" else "Video_RightCamera"
    video = next((rel.root / folder).iterdir())
    return rel, ref, video


def _check_paired_from_the_start(ref, out, camera, aligned, n_video, n_labels, header):
    a, b = ShardReader(ref / f"SN001_{camera}.h5"), ShardReader(out / f"SN001_{camera}.h5")
    assert b.frame_index.tolist() == list(range(aligned))
    for i in (0, aligned // 2, aligned - 1):  # frame i carries label i and video frame i
        np.testing.assert_array_equal(b.image(i), a.image(i))
        np.testing.assert_array_equal(b.intensity[i], a.intensity[i])
    assert (b.attrs["n_video_frames"], b.attrs["n_label_frames"]) == (n_video, n_labels)
    assert b.attrs["config"]["video_header_frames"] == header
    summary = _summary(out)
    row = summary["subjects"][f"SN001_{camera}"]
    assert row["status"] == "ok" and row["frames_read"] == row["kept"] == aligned
    assert (row["n_video_frames"], row["n_label_frames"]) == (n_video, n_labels)
    assert (f"SN001 {camera}: the video decodes {n_video} frames, the labels have {n_labels}; "
            f"the first {aligned} were aligned") in summary["warnings"]


@pytest.mark.parametrize("camera", ["left", "right"])
def test_video_decoding_one_frame_less_than_its_header_and_labels(tmp_path, monkeypatch, camera,
                                                                  caplog):
    """Header 30, decodes 29, labels 30: the 29 frames both have are aligned, not lost."""
    if camera == "right":
        _fake_dlib(monkeypatch)
    rel, ref, video = _reference_and_crafted(tmp_path, 30, camera)
    keep_first_frames(video, 29)
    assert int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    out = tmp_path / "out"
    assert _run(rel.root, out, "--size", 32, "--encoding", "raw", "--camera", camera) == 0
    _check_paired_from_the_start(ref, out, camera, aligned=29, n_video=29, n_labels=30, header=30)
    assert "decodes 29 frames (header says 30), the label files have 30" in caplog.text


@pytest.mark.parametrize("camera", ["left", "right"])
def test_video_decoding_one_frame_more_than_its_header_and_labels(tmp_path, monkeypatch, camera):
    """Header 29, decodes 30, labels 29: the 29 labelled frames are aligned."""
    if camera == "right":
        _fake_dlib(monkeypatch)
    rel, ref, video = _reference_and_crafted(tmp_path, 29, camera)
    set_header_frame_count(video, 29)
    assert int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT)) == 29
    out = tmp_path / "out"
    assert _run(rel.root, out, "--size", 32, "--encoding", "raw", "--camera", camera) == 0
    _check_paired_from_the_start(ref, out, camera, aligned=29, n_video=30, n_labels=29, header=29)


def _fake_dlib(monkeypatch):
    """The right camera's dlib tracker, replaced by the fixture's own face track (the fixture
    face is a polygon dlib does not find); the length handling under test is the same."""
    from _disfa_fixtures import face_track

    class Tracker:
        def __init__(self):
            self.points, self.k = face_track(30, 64, 48), 0

        def update(self, rgb):
            face = type("Face", (), {"landmarks66": self.points[self.k]})
            self.k += 1
            return face

    monkeypatch.setattr(align_mod, "_right_camera_tracker", lambda cfg: Tracker())


def test_error_log_ranges_that_miss_the_video_are_warned(tmp_path, capsys):
    rel = write_release(tmp_path / "disfa", {"SN001": 30, "SN002": 30})
    log = tmp_path / "errors.csv"
    log.write_text("subject,first_frame,last_frame\nSN001,5,6\nSN001,25,40\nSN001,100,120\n"
                   "SN002,3,4\n")
    out = tmp_path / "shards"
    for _ in range(2):  # the rerun (shards skipped) still says so
        assert _run(rel.root, out, "--size", 32, "--error-log", log) == 0
        summary = _summary(out)
        row = summary["subjects"]["SN001_left"]
        assert row["error_log_outside"] == [[25, 40], [100, 120]]
        assert row["dropped"] == {"error_log": 2 + 6} and row["kept"] == 22
        assert summary["subjects"]["SN002_left"]["error_log_outside"] == []
        expected = ("SN001 left: error-log ranges [[25, 40], [100, 120]] reach past its 30 "
                    "frames (an error log for another copy?)")
        assert summary["warnings"] == [expected]
        printed = capsys.readouterr().out
        assert "WARNINGS" in printed and expected in printed
    # The release's own ranges on a 30-frame copy: every SN001 range misses it.
    assert _run(rel.root, tmp_path / "manifest", "--size", 32) == 0
    row = _summary(tmp_path / "manifest")["subjects"]["SN001_left"]
    assert row["error_log_outside"] == [[398, 420], [3190, 3243]] and row["kept"] == 30


def test_root_error_log_that_differs_from_the_one_in_use_is_warned(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 30, "SN002": 30})
    sheet = rel.root / "Error_LOG_Sheet.csv"
    sheet.write_text("subject,first_frame,last_frame\nSN001,5,6\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("subject,first_frame,last_frame\nSN001,5,6\nSN002,1,2\n")
    out = tmp_path / "shards"
    assert _run(rel.root, out, "--size", 32, "--error-log", manifest) == 0
    summary = _summary(out)
    assert summary["error_log"] == {"in_use": str(manifest), "root_sheets": [
        {"sheet": str(sheet), "subjects_differing": ["SN002"]}]}
    assert any(str(sheet) in w and "differs from the ranges in use" in w and "SN002" in w
               for w in summary["warnings"])
    # Only the subjects aligned count, and the sheet in use is not compared with itself.
    assert _run(rel.root, out, "--size", 32, "--error-log", manifest, "--subjects", "SN001") == 0
    assert _summary(out)["error_log"]["root_sheets"] == []
    assert _run(rel.root, tmp_path / "own", "--size", 32, "--error-log", sheet) == 0
    assert _summary(tmp_path / "own")["error_log"]["root_sheets"] == []


def test_dask_backend_without_dask_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "distributed" else real(name, *a))
    with pytest.raises(ValueError, match=r'pip install -e "\.\[dask\]"'):
        AlignConfig(disfa_root="r", out="x", backend="dask")

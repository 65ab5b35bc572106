"""--test-camera compares one thing: by default both cameras on the frames the left test kept
(tiny twin, both cameras aligned, the twin's own error log dropping left frames)."""
import json

import numpy as np
import pytest

from model.crossval import main as crossval_main
from pipeline.shards import ShardReader, shard_name
from trainer_fixtures import write_manifest

CV = ["--preset", "small", "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8",
      "--workers", "0", "--eval-batch-size", "32", "--quiet", "--lr", "0.05", "--plot-every",
      "100", "--threads", "1", "--bootstrap", "50"]
TEST = ("SN003", "SN004")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """Shards of both cameras of a 4-subject twin and a one-fold manifest testing SN003, SN004."""
    from pipeline.align import main as align_main
    from pipeline.twin import ERROR_LOG, SynthConfig, synthesize

    root = tmp_path_factory.mktemp("camera")
    synthesize(root / "release", SynthConfig.tiny(n_subjects=4, width=320, height=240))
    common = ["--disfa-root", str(root / "release"), "--out", str(root / "sh"), "--size", "48",
              "--error-log", str(root / "release" / ERROR_LOG)]
    assert align_main([*common, "--camera", "left"]) == 0
    assert align_main([*common, "--camera", "right", "--subjects", *TEST]) == 0  # test only
    manifest = write_manifest(root / "folds.json", root / "sh",
                              [(["SN001"], ["SN002"], list(TEST))], 48)
    return root, manifest


def _frames(shards, subject, camera):
    return ShardReader(shards / shard_name(subject, camera)).frame_index


def _run(root, manifest, out, *extra):
    assert crossval_main(["--shards", str(root / "sh"), "--manifest", str(manifest),
                          "--out", str(out), "--test-camera", "right", *extra, *CV]) == 0
    report = json.loads((out / "crossval.json").read_text())
    return report, (out / "cameras_tranet.md").read_text()


def test_default_compares_both_cameras_on_the_frames_the_left_test_kept(twin, tmp_path):
    root, manifest = twin
    sh = root / "sh"
    extra = sum(len(np.setdiff1d(_frames(sh, s, "right"), _frames(sh, s, "left"))) for s in TEST)
    assert extra > 0   # the right shards hold error-log frames the left test dropped
    report, table = _run(root, manifest, tmp_path / "cv")
    (r,) = report["results"]["tranet"]
    right, left = r["test_camera"]["per_subject"], r["test_camera_left"]["per_subject"]
    expected = [len(np.intersect1d(_frames(sh, s, "left"), _frames(sh, s, "right")))
                for s in right["subjects"]]
    assert right["n_frames"] == left["n_frames"] == expected
    record = r["test_camera"]["comparison"]
    assert record["frames"] == "matched" and record["counts"]["compared"] == sum(expected)
    assert record["counts"]["right_only_error_log"] + record["counts"]["right_only_other"] == extra
    assert record["landmarks"] == {"left": ["release"], "right": ["dlib"]}
    assert report["cameras"]["tranet"]["comparison"]["frames"] == "matched"
    assert "the same frames" in table and f"the same {sum(expected)} frames" in table
    assert "left aligned from release landmarks, right from dlib landmarks" in table


def test_camera_frames_all_compares_every_frame_each_camera_kept(twin, tmp_path):
    root, manifest = twin
    sh = root / "sh"
    report, table = _run(root, manifest, tmp_path / "cv", "--camera-frames", "all")
    (r,) = report["results"]["tranet"]
    right = r["test_camera"]["per_subject"]
    assert right["n_frames"] == [len(_frames(sh, s, "right")) for s in right["subjects"]]
    assert r["test"]["per_subject"]["n_frames"] == [len(_frames(sh, s, "left"))
                                                    for s in right["subjects"]]
    assert right["n_frames"] != r["test"]["per_subject"]["n_frames"]
    assert "test_camera_left" not in r and r["test_camera"]["comparison"]["frames"] == "all"
    assert "frame sets differ" in table and "--camera-frames all" in table


def test_camera_shards_with_dlib_left_shards_match_the_landmark_source(twin, tmp_path):
    from pipeline.align import main as align_main

    root, manifest = twin
    dlib_dir = tmp_path / "sh_dlib"
    assert align_main(["--disfa-root", str(root / "release"), "--out", str(dlib_dir),
                       "--camera", "both", "--landmarks", "dlib", "--size", "48",
                       "--subjects", *TEST]) == 0
    report, table = _run(root, manifest, tmp_path / "cv", "--camera-shards", str(dlib_dir))
    (r,) = report["results"]["tranet"]
    record = r["test_camera"]["comparison"]
    assert record["landmarks"] == {"left": ["dlib"], "right": ["dlib"]}
    assert record["left_shards"] == str(dlib_dir)
    right, left = r["test_camera"]["per_subject"], r["test_camera_left"]["per_subject"]
    expected = [len(np.intersect1d(np.intersect1d(
        _frames(root / "sh", s, "left"), _frames(dlib_dir, s, "right")),
        _frames(dlib_dir, s, "left"))) for s in right["subjects"]]
    assert right["n_frames"] == left["n_frames"] == expected
    assert "left aligned from dlib landmarks, right from dlib landmarks" in table
    assert "they differ" not in table
    report, table = _run(root, manifest, tmp_path / "cv", "--camera-shards", str(dlib_dir),
                         "--camera-frames", "all")   # every frame, both sides from dlib
    (r,) = report["results"]["tranet"]
    for key, camera in (("test_camera", "right"), ("test_camera_left", "left")):
        per = r[key]["per_subject"]
        assert per["n_frames"] == [len(_frames(dlib_dir, s, camera)) for s in per["subjects"]]


def test_align_landmarks_dlib_aligns_the_left_camera_from_dlib_without_the_error_log(
        tmp_path, monkeypatch):
    """--landmarks dlib: the left camera's shard comes from dlib's landmarks, and the error log
    (which describes the release's AAM tracking) is not applied; the default is unchanged."""
    from _disfa_fixtures import face_track, write_release
    from pipeline import align as align_mod

    class Tracker:  # the fixture's polygon face is not one dlib finds: its own track instead
        def __init__(self):
            self.points, self.k = face_track(30, 64, 48), 0

        def update(self, rgb):
            self.k += 1
            return type("Face", (), {"landmarks66": self.points[self.k - 1]})

    monkeypatch.setattr(align_mod, "_right_camera_tracker", lambda cfg: Tracker())
    rel = write_release(tmp_path / "disfa", {"SN001": 30}, width=64, height=48)
    errors = tmp_path / "errors.csv"
    errors.write_text("subject,first_frame,last_frame\nSN001,5,6\n")
    common = ["--disfa-root", str(rel.root), "--size", "32", "--error-log", str(errors)]
    assert align_mod.main([*common, "--out", str(tmp_path / "aam")]) == 0
    assert align_mod.main([*common, "--out", str(tmp_path / "dlib"), "--landmarks", "dlib"]) == 0
    aam = ShardReader(tmp_path / "aam" / "SN001_left.h5")
    dlib = ShardReader(tmp_path / "dlib" / "SN001_left.h5")
    assert aam.attrs["config"]["landmark_source"] == "release" and len(aam) == 28
    assert dlib.attrs["config"]["landmark_source"] == "dlib" and len(dlib) == 30
    assert dlib.attrs["config"]["bad_ranges"] == [] and dict(dlib.attrs["dropped"]) == {}
    assert dlib.attrs["config"]["content_key"]["landmarks"] == "dlib"
    assert "landmarks" not in aam.attrs["config"]["content_key"]


def test_camera_shards_bad_input_is_one_line_and_exit_1(twin, tmp_path, caplog):
    root, manifest = twin
    base = ["--shards", str(root / "sh"), "--manifest", str(manifest), "--out",
            str(tmp_path / "cv"), *CV]
    assert crossval_main([*base, "--test-camera", "right", "--camera-shards",
                          str(tmp_path / "nowhere")]) == 1
    assert f"--camera-shards {tmp_path / 'nowhere'}: not a folder of shards" in caplog.text
    assert crossval_main([*base, "--camera-shards", str(root / "sh")]) == 1
    assert "--camera-shards is for --test-camera" in caplog.text
    assert not (tmp_path / "cv" / "tranet").exists()   # refused before any training

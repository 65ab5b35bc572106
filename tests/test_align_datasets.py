"""``pipeline.align --dataset bp4d|disfa+``: image-folder sequences through a dataset adapter
into one ``<subject>_frontal.h5`` shard per subject, with JAA's or the nose/chin rule, the
detector fallback for frames without landmarks, drop lists, reruns and bad input.

The real adapters are written elsewhere; here a small fake adapter that follows the protocol
reads a release made in a temp dir (PNG frames, labels in an .npz per sequence), and a fake
detector knows each frame's true 68 points by the frame's pixels."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import h5py
import numpy as np
import pytest

from _disfa_fixtures import draw_frame, posed_landmarks
from pipeline import align as align_mod
from pipeline.aligner import frames_run
from pipeline.alignment import transform_points
from pipeline.alignment_rules import jaa_matrices
from pipeline.datasets import adapters
from pipeline.datasets.base import NOT_CODED, SequenceData, SequenceRef
from pipeline.datasets.disfa import ReleaseError
from pipeline.datasets.registry import dataset_info
from pipeline.shards import ShardReader

W, H = 120, 160  # portrait, like BP4D
#: Frames known to the fake detector: sha1 of the RGB pixels -> the face's 68 points.
KNOWN_FACES: dict[str, np.ndarray] = {}


def _key(rgb: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def _to68(pts66: np.ndarray) -> np.ndarray:
    """DISFA's 66 points with iBUG's inner-mouth corners (60, 64) put back."""
    return np.insert(pts66, [60, 63], [pts66[48], pts66[54]], axis=0)


class FakeAdapter:
    """The DatasetAdapter protocol over ``root/<subject>/<sequence>/{n}.png`` + labels.npz."""

    info = dataset_info("bp4d")
    drop_lists = ("jaa",)
    fail_subject: str | None = None

    def sequences(self, root: Path) -> list[SequenceRef]:
        return [SequenceRef(d.parent.name, d.name, d) for d in sorted(Path(root).glob("*/*"))
                if d.is_dir()]

    def read_sequence(self, root: Path, ref: SequenceRef) -> SequenceData:
        if ref.subject == self.fail_subject:
            raise ReleaseError(f"{ref.frames_dir}/labels.npz: unreadable (test)")
        z = np.load(ref.frames_dir / "labels.npz")
        images = {int(p.stem): p for p in ref.frames_dir.glob("*.png")}
        keep = [i for i, n in enumerate(z["frames"]) if int(n) in images]
        data = SequenceData(z["frames"][keep], [images[int(z["frames"][i])] for i in keep],
                            z["occurrence"][keep], z["intensity"][keep], z["landmarks"][keep],
                            {"no_image": len(z["frames"]) - len(keep), "other": 0})
        # What an adapter counts about frames it keeps (BP4D's: frames without landmarks).
        data.counts = {"no_landmarks": int(np.isnan(data.landmarks).any(axis=(1, 2)).sum())}
        return data

    def standard_folds(self) -> dict:
        return {}

    def dropped_frames(self, name: str) -> dict[tuple[str, str], set[int]]:
        return {("F001", "T1"): {2441}}


def _write_sequence(folder: Path, first: int, n: int, seed: int, *, no_landmarks=(),
                    unknown_faces=(), no_image=()) -> None:
    """``n`` frames numbered from ``first``; ``no_landmarks``: frame numbers whose release
    landmarks are NaN; ``unknown_faces``: ... and the detector finds no face either."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    frames = np.arange(first, first + n)
    lms = np.full((n, 49, 2), np.nan, np.float32)
    for i, number in enumerate(frames):
        pts = posed_landmarks((W / 2 + rng.uniform(-6, 6), 0.45 * H), 0.4 * H,
                              rng.uniform(-10, 10))
        image = draw_frame(pts, W, H)
        if int(number) not in no_image:
            # BP4D's padding varies between sequences.
            cv2.imwrite(str(folder / f"{number:0{4 if seed % 2 else 1}d}.png"), image)
        if int(number) not in unknown_faces:
            KNOWN_FACES[_key(image[..., ::-1])] = _to68(pts)
        if int(number) not in no_landmarks:
            lms[i] = pts[17:]
    occurrence = rng.integers(0, 2, (n, 12)).astype(np.uint8)
    occurrence[0, 3] = NOT_CODED  # a "9" in the release
    intensity = rng.integers(0, 6, (n, 5)).astype(np.uint8)
    np.savez(folder / "labels.npz", frames=frames, occurrence=occurrence, intensity=intensity,
             landmarks=lms)


class FakeDetector:
    calls = 0

    def reset(self) -> None:
        pass

    def update(self, rgb: np.ndarray):
        FakeDetector.calls += 1
        pts = KNOWN_FACES.get(_key(rgb))
        return None if pts is None else SimpleNamespace(landmarks68=pts)


@pytest.fixture
def release(tmp_path, monkeypatch):
    root = tmp_path / "bp4d"
    _write_sequence(root / "F001" / "T1", 2440, 6, 1, no_landmarks={2443, 2444},
                    unknown_faces={2444})
    _write_sequence(root / "F001" / "T2", 1, 4, 2, no_image={3})
    _write_sequence(root / "M002" / "T1", 5, 5, 3)
    adapter = FakeAdapter()
    monkeypatch.setattr(frames_run, "get_adapter", lambda name: adapter)
    monkeypatch.setattr(frames_run, "frames_detector", lambda cfg: FakeDetector())
    return SimpleNamespace(root=root, adapter=adapter)


def _align(root, out, *extra) -> int:
    return align_mod.main(["--dataset", "bp4d", "--root", str(root), "--out", str(out),
                           *map(str, extra)])


def test_jaa_alignment_writes_one_frontal_shard_per_subject(release, tmp_path, capsys):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa") == 0
    assert sorted(p.name for p in out.glob("*.h5")) == ["F001_frontal.h5", "M002_frontal.h5"]
    r = ShardReader(out / "F001_frontal.h5")
    assert (r.dataset, r.camera, r.image_size) == ("bp4d", "frontal", 200)  # JAA's default
    # 6 + 4 labelled frames: one has no image, one has neither landmarks nor a face.
    assert len(r) == 8 and r.frame_index.tolist() == list(range(8))
    with h5py.File(r.path) as f:
        sequence, number = f["sequence"][()], f["frame_number"][()]
        assert json.loads(f.attrs["sequences"]) == ["T1", "T2"]
        assert f.attrs["alignment_rule"] == "jaa" and f.attrs["landmarks_from_detector"] == 1
        assert f.attrs["landmark_source"].startswith("release-49")
    assert sequence.tolist() == [0] * 5 + [1] * 3
    assert number.tolist() == [2440, 2441, 2442, 2443, 2445, 1, 2, 4]
    assert r.attrs["dropped"] == {"no_image": 1, "no_face": 1}
    assert r.attrs["n_source_frames"] == 10
    assert np.isnan(r.label_matrix([6], 3)[0, 0])  # the release's 9 stays "not coded"
    # Aligned landmarks are JAA's transform of the release's points (frame 2440).
    z = np.load(release.root / "F001" / "T1" / "labels.npz")
    want = transform_points(z["landmarks"][0], jaa_matrices(z["landmarks"][:1], 200)[0])
    np.testing.assert_allclose(r.landmarks[0], want, atol=1e-3)
    summary = json.loads((out / "align_summary.json").read_text())
    assert summary["totals"]["from_detector"] == 1
    assert summary["subjects"]["F001_frontal"]["adapter_counts"] == {"no_landmarks": 2}
    assert summary["subjects"]["F001_frontal"]["dropped"] == {"no_image": 1, "no_face": 1}
    table = capsys.readouterr().out
    assert "detector" in table and "noimage" in table and "F001" in table


def test_detector_points_replace_missing_landmarks(release, tmp_path):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa", "--size", 64,
                  "--subjects", "F001") == 0
    r = ShardReader(out / "F001_frontal.h5")
    assert r.image_size == 64 and not (out / "M002_frontal.h5").exists()
    row = 3  # frame 2443: no release landmarks, the detector's 68 reduced to 49
    assert np.isfinite(r.landmarks[row]).all()
    eyes = r.landmarks[row, 19:25].mean(0), r.landmarks[row, 25:31].mean(0)
    assert abs(eyes[0][1] - eyes[1][1]) < 1e-3  # JAA levels the eyes


def test_nose_chin_rule_takes_the_chin_from_the_detector(release, tmp_path):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--subjects", "M002", "--size", 48) == 0
    r = ShardReader(out / "M002_frontal.h5")
    assert len(r) == 5 and r.attrs["config"]["alignment_rule"] == "nose-chin"
    with h5py.File(r.path) as f:
        assert f.attrs["landmark_source"].startswith("release-49 + dlib-68 chin")
    nose = (r.landmarks[:, 10] + r.landmarks[:, 13]) / 2
    np.testing.assert_allclose(nose, np.tile([24, 24], (5, 1)), atol=1e-3)
    np.testing.assert_allclose(r.attrs["chin_target"], [24, 42])


def test_drop_list_leaves_out_its_frames(release, tmp_path):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa", "--drop-list", "jaa",
                  "--subjects", "F001") == 0
    r = ShardReader(out / "F001_frontal.h5")
    assert r.attrs["dropped"]["drop_list"] == 1 and len(r) == 7
    with h5py.File(r.path) as f:
        assert 2441 not in f["frame_number"][()].tolist()


def test_rerun_skips_force_redoes_and_a_failed_subject_does_not_stop_others(release,
                                                                              tmp_path):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa") == 0
    stamp = (out / "M002_frontal.h5").stat().st_mtime_ns
    assert _align(release.root, out, "--alignment", "jaa") == 0
    summary = json.loads((out / "align_summary.json").read_text())
    assert {r["status"] for r in summary["subjects"].values()} == {"skipped"}
    assert (out / "M002_frontal.h5").stat().st_mtime_ns == stamp
    release.adapter.fail_subject = "F001"
    assert _align(release.root, out, "--alignment", "jaa", "--force") == 1
    summary = json.loads((out / "align_summary.json").read_text())
    assert summary["failed"] == ["F001_frontal"]
    assert "labels.npz" in summary["subjects"]["F001_frontal"]["error"]
    assert summary["subjects"]["M002_frontal"]["status"] == "ok"
    assert (out / "F001_frontal.h5").is_file()  # the old shard is kept, not half-written


def test_changed_settings_redo_the_shard(release, tmp_path):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa", "--subjects", "M002") == 0
    assert _align(release.root, out, "--subjects", "M002") == 0  # nose-chin now
    summary = json.loads((out / "align_summary.json").read_text())
    assert summary["subjects"]["M002_frontal"]["status"] == "ok"
    assert ShardReader(out / "M002_frontal.h5").attrs["config"]["alignment_rule"] == "nose-chin"


@pytest.mark.parametrize("extra, words", [
    (["--dataset", "disfa", "--alignment", "jaa"], "--alignment jaa"),
    (["--dataset", "bp4d", "--camera", "right"], "--camera"),
    (["--dataset", "bp4d", "--subjects", "SN001"], "not BP4D subject names"),
    (["--dataset", "bp4d", "--aus", "5"], "not coded in BP4D"),
    (["--dataset", "disfa+", "--drop-list", "jaa"], "only BP4D has drop lists"),
])
def test_options_that_do_not_fit_the_dataset_fail_in_one_line(tmp_path, capsys, extra, words):
    with pytest.raises(SystemExit) as err:
        align_mod.main(["--root", str(tmp_path), "--out", str(tmp_path / "o"), *extra])
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert words in message and "Traceback" not in message


def test_root_is_the_disfa_root_alias_and_disfa_defaults_are_unchanged(tmp_path):
    parser = align_mod.build_parser()
    a = align_mod.config_from_args(parser.parse_args(["--root", "R", "--out", "O"]))
    b = align_mod.config_from_args(parser.parse_args(["--disfa-root", "R", "--out", "O"]))
    assert a == b and a.dataset == "disfa" and a.size == 224 and a.threshold == 3
    assert a.content_key("left") == align_mod.AlignConfig(disfa_root="R", out="O").content_key()


def test_get_adapter_names_what_is_missing(monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset"):
        adapters.get_adapter("ck+")
    with pytest.raises(ReleaseError, match="own path"):
        adapters.get_adapter("disfa")
    monkeypatch.setitem(adapters.ADAPTERS, "bp4d", ("pipeline.datasets.bp4d.nope", "X"))
    with pytest.raises(ReleaseError, match="cannot be loaded"):
        adapters.get_adapter("bp4d")


def test_a_shard_whose_frame_numbers_disagree_in_length_is_refused(release, tmp_path):
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa", "--subjects", "M002") == 0
    with h5py.File(out / "M002_frontal.h5", "a") as f:
        del f["frame_number"]
        f.create_dataset("frame_number", data=np.arange(3, dtype=np.int32))
    with pytest.raises(Exception, match="disagree in length"):
        ShardReader(out / "M002_frontal.h5")


# --------------------------------------------------------------------------- folds


def _bp4d_shard(out: Path, subject: str, n: int, seed: int) -> None:
    from pipeline.shards import ShardWriter

    rng = np.random.default_rng(seed)
    occurrence = rng.integers(0, 2, (n, 12)).astype(np.uint8)
    occurrence[: n // 2, 0] = NOT_CODED  # half the frames not coded for AU1
    with ShardWriter(out / f"{subject}_frontal.h5", 16, encoding="raw", dataset="bp4d") as w:
        w.append_many(np.zeros((n, 16, 16, 3), np.uint8), range(n),
                      rng.integers(0, 6, (n, 5)), np.zeros((n, 49, 2)), occurrence=occurrence)
        w.commit(subject=subject, camera="frontal", threshold=3, nose_target=(8, 8),
                 chin_target=(8, 14), n_source_frames=n)


def test_folds_take_any_dataset_and_leave_not_coded_frames_out_of_rates(tmp_path, capsys):
    from pipeline.build_folds import load_folds, main as folds_main

    shards = tmp_path / "shards"
    for i, subject in enumerate(("F001", "F002", "M001", "M002")):
        _bp4d_shard(shards, subject, 20, i)
    assert folds_main(["--shards", str(shards), "--out", str(tmp_path / "f"), "--scheme",
                       "kfold", "--k", "2"]) == 0  # the camera defaults to frontal here
    manifest = load_folds(tmp_path / "f")
    assert manifest["dataset"] == "bp4d" and manifest["camera"] == "frontal"
    fold = manifest["folds"][0]
    labels = np.concatenate([ShardReader(shards / f"{s}_frontal.h5").labels
                             for s in fold["train"]])
    coded = labels[:, 0] != NOT_CODED
    assert fold["pos_count"]["train"][0] == int((labels[coded, 0] == 1).sum())
    assert fold["pos_rate"]["train"][0] == pytest.approx((labels[coded, 0] == 1).mean())
    assert sorted(fold["train"] + fold["val"] + fold["test"]) == ["F001", "F002", "M001", "M002"]
    # DISFA's split does not fit BP4D's shards.
    assert folds_main(["--shards", str(shards), "--out", str(tmp_path / "g")]) == 2
    assert "DISFA's split" in capsys.readouterr().err


def test_bp4d3_reads_the_parts_manifest(tmp_path, monkeypatch):
    from pipeline import build_folds as bf

    shards = tmp_path / "shards"
    for i, subject in enumerate(("F001", "F002", "M001", "M002", "M003", "F003")):
        _bp4d_shard(shards, subject, 10, i)
    monkeypatch.setattr(bf, "MANIFEST_DIR", tmp_path)
    with pytest.raises(bf.FoldError, match="bp4d_folds.json"):
        bf.build_folds(shards, bf.FoldConfig(scheme="bp4d3", camera="frontal"))
    # As BP4D's manifest numbers them (ME-GraphAU's): fold 1 tests part 3, fold 3 part 1.
    (tmp_path / "bp4d_folds.json").write_text(json.dumps({
        "dataset": "bp4d", "parts": [["F001", "M001"], ["F002", "M002"], ["M003", "F003"]],
        "folds": [{"fold": 1, "test_part": 3}, {"fold": 2, "test_part": 2},
                  {"fold": 3, "test_part": 1}],
        "validation_subjects_per_fold": [["F001", "F002"], ["F001", "M003"], ["F002", "M003"]]}))
    manifest = bf.build_folds(shards, bf.FoldConfig(scheme="bp4d3", camera="frontal"))
    first, last = manifest["folds"][0], manifest["folds"][2]
    assert first["test"] == ["M003", "F003"] and last["test"] == ["F001", "M001"]
    assert first["val"] == ["F001", "F002"] and first["train"] == ["M001", "M002"]
    assert manifest["dataset"] == "bp4d"
    for fold in manifest["folds"]:
        assert not set(fold["test"]) & set(fold["train"] + fold["val"])


def test_an_unreadable_frame_is_dropped_and_counted(release, tmp_path):
    image = next((release.root / "M002" / "T1").glob("*6.png"))
    image.write_bytes(b"not an image at all")
    out = tmp_path / "shards"
    assert _align(release.root, out, "--alignment", "jaa", "--subjects", "M002") == 0
    r = ShardReader(out / "M002_frontal.h5")
    assert len(r) == 4 and r.attrs["dropped"] == {"image_unreadable": 1}


def test_real_face_takes_its_chin_and_missing_points_from_dlib(tmp_path, monkeypatch):
    """On the real DISFA frame (the fixture): dlib's chin lands near the release's own chin,
    and a frame without release landmarks is aligned from dlib's points."""
    from _disfa_fixtures import REAL_FRAME, real_landmarks, require_fixture

    frame = cv2.imread(str(require_fixture(REAL_FRAME)))
    pts66 = real_landmarks()
    folder = tmp_path / "bp4d" / "F001" / "T1"
    folder.mkdir(parents=True)
    for n in (1, 2):
        cv2.imwrite(str(folder / f"{n}.png"), frame)
    lms = np.stack([pts66[17:], np.full((49, 2), np.nan)]).astype(np.float32)
    np.savez(folder / "labels.npz", frames=np.array([1, 2]),
             occurrence=np.zeros((2, 12), np.uint8), intensity=np.zeros((2, 5), np.uint8),
             landmarks=lms)
    monkeypatch.setattr(frames_run, "get_adapter", lambda name: FakeAdapter())
    out = tmp_path / "shards"
    assert _align(tmp_path / "bp4d", out, "--size", 100) == 0  # nose-chin, real dlib
    r = ShardReader(out / "F001_frontal.h5")
    assert len(r) == 2 and r.attrs["config"]["landmarks_from_detector"] == 1
    m = cv2.estimateAffinePartial2D(pts66[17:], r.landmarks[0])[0]
    chin = pts66[8] @ m[:, :2].T + m[:, 2]  # the release's chin, aligned
    assert np.hypot(*(chin - [50, 87.5])) < 6  # dlib's chin was put at (50, 87.5)
    np.testing.assert_allclose(r.landmarks[1], r.landmarks[0], atol=6)


def test_subjects_run_in_parallel_processes(release, tmp_path):
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    assert _align(release.root, serial, "--alignment", "jaa", "--subjects", "M002") == 0
    assert _align(release.root, parallel, "--alignment", "jaa", "--jobs", "2") == 0
    summary = json.loads((parallel / "align_summary.json").read_text())
    assert sorted(summary["subjects"]) == ["F001_frontal", "M002_frontal"]
    a, b = ShardReader(serial / "M002_frontal.h5"), ShardReader(parallel / "M002_frontal.h5")
    np.testing.assert_array_equal(a.landmarks, b.landmarks)


class FakeDisfaPlus(FakeAdapter):
    """DISFA+'s scheme: 12 intensity columns, no occurrence codes, SN0xx subjects."""

    info = dataset_info("disfa+")

    def read_sequence(self, root: Path, ref: SequenceRef) -> SequenceData:
        data = super().read_sequence(root, ref)
        n = len(data)
        data.intensity = np.tile(np.arange(12, dtype=np.uint8) % 6, (n, 1))
        data.occurrence = np.zeros((n, 0), np.uint8)
        return data


def test_disfa_plus_intensities_become_labels_at_its_threshold(tmp_path, monkeypatch):
    root = tmp_path / "dplus"
    _write_sequence(root / "SN001" / "A1_AU1_TrailNo_1", 0, 3, 5)
    monkeypatch.setattr(frames_run, "get_adapter", lambda name: FakeDisfaPlus())
    out = tmp_path / "shards"
    assert align_mod.main(["--dataset", "disfa+", "--root", str(root), "--out", str(out),
                           "--alignment", "jaa", "--size", "48"]) == 0
    r = ShardReader(out / "SN001_frontal.h5")
    assert (r.dataset, len(r), r.occurrence, int(r.attrs["threshold"])) == ("disfa+", 3, None, 2)
    assert r.labels[0].tolist() == [int(v >= 2) for v in np.arange(12) % 6]


def test_disfa_shards_name_their_landmark_source_and_alignment_rule(tmp_path):
    from _disfa_fixtures import write_release

    rel = write_release(tmp_path / "disfa", {"SN001": 6}, width=96, height=72)
    out = tmp_path / "shards"
    assert align_mod.main(["--root", str(rel.root), "--out", str(out), "--size", "32"]) == 0
    with h5py.File(out / "SN001_left.h5") as f:
        assert (f.attrs["dataset"], f.attrs["landmark_source"], f.attrs["alignment_rule"]) == (
            "disfa", "release", "nose-chin")

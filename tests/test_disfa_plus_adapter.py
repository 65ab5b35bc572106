"""DISFA+ as shipped (issue #26 item 4): the adapter reads a small copy of the release's layout
made here, with its quirks, and the DISFA -> DISFA+ manifests follow from the facts."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from pipeline.datasets.base import label_matrix
from pipeline.datasets.disfa import facts as disfa
from pipeline.datasets.disfa.layout import ReleaseError
from pipeline.datasets.disfa_plus import facts
from pipeline.datasets.disfa_plus.adapter import DisfaPlusAdapter
from pipeline.datasets.disfa_plus.labels import DROP_NOT_IN_ALL, read_au_file
from pipeline.datasets.disfa_plus.landmarks import read_crop_landmarks

TRIAL = "A1_AU1_TrailNo_1"


def _label_text(values: dict[int, int]) -> str:
    # Two header lines whose content is not known (the facts: UNVERIFIED), then frame lines.
    body = "".join(f"{f:03d}.jpg     {v}\n" for f, v in sorted(values.items()))
    return "Subject SN001 trial\nFrame  Intensity\n" + body


def _write_trial(top: Path, subject: str, trial: str, n: int, nested: bool = False,
                 skip_frame: dict[int, int] | None = None, no_image: tuple[int, ...] = (),
                 aus: tuple[int, ...] = facts.AUS) -> dict[int, np.ndarray]:
    """One trial; AU k's intensity at frame f is (f + k) % 6, distinct per AU, so a column
    mapped by listing order instead of AU number shows. Returns AU -> intensities."""
    sub = f"{subject}/{subject}" if nested else subject
    images = top / "Images" / subject / trial
    images.mkdir(parents=True)
    (images / "TimeStamp.txt").write_text("0.000\n0.033\n")
    for f in range(n):
        if f not in no_image:
            cv2.imwrite(str(images / f"{f:03d}.jpg"), np.full((8, 8, 3), 10 * f % 250, np.uint8))
    labels = top / "Labels" / sub / trial
    labels.mkdir(parents=True)
    truth = {}
    for au in aus:
        values = {f: (f + au) % 6 for f in range(n)}
        if skip_frame and au in skip_frame:
            values.pop(skip_frame[au])
        truth[au] = np.array([(f + au) % 6 for f in range(n)])
        (labels / f"AU{au}.txt").write_text(_label_text(values))
    return truth


def _write_mat(top: Path, subject: str, trial: str, n: int, positional: bool = False) -> None:
    """Structs with named fields, or (one source's reading) 3-cells in field order."""
    folder = top / "FaceLandmarks" / subject
    folder.mkdir(parents=True, exist_ok=True)
    cells = np.empty((1, n), dtype=object)
    for f in range(n):
        fields = {"imgID": f"{f:03d}.jpg", "ImgCropped": np.zeros((20, 20, 3), np.uint8),
                  "LndPntCropped": np.full((49, 2), f + 1.0)}
        cells[0, f] = fields
        if positional:
            cells[0, f] = np.empty((1, 3), dtype=object)
            for k, value in enumerate(fields.values()):
                cells[0, f][0, k] = value
    scipy.io.savemat(folder / f"{trial}_FaceCropped.mat", {"FaceImg_CropResize": cells})


@pytest.fixture()
def release(tmp_path: Path) -> tuple[Path, dict]:
    top = tmp_path / "DISFAPlusDataset"  # the archive's folder, one below the root given
    truth = {
        ("SN001", TRIAL): _write_trial(top, "SN001", TRIAL, 12, skip_frame={17: 4},
                                       no_image=(9,)),
        ("SN001", "Z_SupriseText_TrailNo_2"): _write_trial(top, "SN001",
                                                           "Z_SupriseText_TrailNo_2", 5),
        ("SN003", "B2_AU6_TrailNo_2"): _write_trial(top, "SN003", "B2_AU6_TrailNo_2", 6,
                                                    nested=True),
    }
    _write_trial(top, "SN003", "A2_AU2_TrailNo_2", 4, aus=facts.AUS[:-1])  # AU26.txt missing
    _write_mat(top, "SN001", TRIAL, 12)
    return tmp_path, truth


def test_sequences_are_the_trials_with_12_au_files_nested_or_not(release):
    root, _ = release
    adapter = DisfaPlusAdapter()
    refs = adapter.sequences(root)
    assert [(r.subject, r.name) for r in refs] == [
        ("SN001", TRIAL), ("SN001", "Z_SupriseText_TrailNo_2"), ("SN003", "B2_AU6_TrailNo_2")]
    assert refs[0].frames_dir == root / "DISFAPlusDataset" / "Images" / "SN001" / TRIAL
    assert list(adapter.skipped) == [("SN003", "A2_AU2_TrailNo_2")]
    assert "AU26.txt missing" in adapter.skipped[("SN003", "A2_AU2_TrailNo_2")]


def test_labels_map_by_au_number_and_frames_need_all_12_files_and_an_image(release):
    root, truth = release
    adapter = DisfaPlusAdapter()
    by_name = {r.name: r for r in adapter.sequences(root)}
    data = adapter.read_sequence(root, by_name[TRIAL])
    # Frame 4 is missing from AU17.txt, frame 9 has no image: both dropped and counted.
    kept = [f for f in range(12) if f not in (4, 9)]
    assert data.frame_numbers.tolist() == kept
    assert data.dropped == {DROP_NOT_IN_ALL: 1, "no image file": 1}
    assert [p.name for p in data.images] == [f"{f:03d}.jpg" for f in kept]  # 0-based names
    for col, au in enumerate(facts.AUS):
        assert data.intensity[:, col].tolist() == truth[("SN001", TRIAL)][au][kept].tolist()
    assert data.occurrence.shape == (10, 0) and data.intensity.dtype == np.uint8
    assert data.landmarks.shape == (10, 49, 2) and np.isnan(data.landmarks).all()
    # The contract's label rule: positive at intensity >= 2 by default, raw values kept.
    labels = label_matrix(adapter.info, data.intensity, data.occurrence, facts.AUS,
                          adapter.info.default_threshold)
    assert np.array_equal(labels, (data.intensity >= 2).astype(np.float32))
    nested = adapter.read_sequence(root, by_name["B2_AU6_TrailNo_2"])
    assert len(nested) == 6 and nested.dropped == {DROP_NOT_IN_ALL: 0, "no image file": 0}


def test_the_face_cropped_mat_is_read_and_recorded_not_used(release):
    root, _ = release
    adapter = DisfaPlusAdapter()
    for ref in adapter.sequences(root):
        adapter.read_sequence(root, ref)
    seen = adapter.crop_landmarks[("SN001", TRIAL)]
    assert seen["frames"] == 12 and seen["points"] == [49] and seen["problem"] is None
    assert seen["crop_shape"] == [20, 20, 3]
    assert adapter.crop_landmarks[("SN001", "Z_SupriseText_TrailNo_2")]["problem"] == "absent"


@pytest.mark.parametrize("n", [1, 4])
def test_a_mat_of_3_cells_reads_as_well(tmp_path, n):
    _write_mat(tmp_path, "SN009", TRIAL, n, positional=True)
    seen = read_crop_landmarks(tmp_path / "FaceLandmarks" / "SN009" / f"{TRIAL}_FaceCropped.mat")
    assert seen.problem is None and sorted(seen.points) == list(range(n))
    assert seen.points[n - 1][0, 0] == n and seen.crop_shape == (20, 20, 3)


def test_an_unreadable_mat_is_reported_not_raised(release):
    root, _ = release
    mat = root / "DISFAPlusDataset" / "FaceLandmarks" / "SN001" / f"{TRIAL}_FaceCropped.mat"
    mat.write_bytes(b"HDF5 or garbage")
    adapter = DisfaPlusAdapter()
    ref = adapter.sequences(root)[0]
    assert len(adapter.read_sequence(root, ref)) == 10
    assert adapter.crop_landmarks[("SN001", TRIAL)]["problem"].startswith("cannot read")


@pytest.mark.parametrize("line, message", [
    ("000.jpg 7", "intensity 7 is not 0-5"),
    ("frame 3 = 2", "expected '<NNN>.jpg <intensity>'"),
    ("001.jpg 2", "listed twice"),
])
def test_a_bad_label_line_is_one_error_naming_file_and_line(tmp_path, line, message):
    path = tmp_path / "AU1.txt"
    path.write_text(_label_text({0: 1, 1: 2}) + line + "\n")
    with pytest.raises(ReleaseError, match=message) as err:
        read_au_file(path)
    assert str(err.value).startswith(f"{path} line 5:")


def test_a_label_file_without_headers_keeps_its_first_frames(tmp_path):
    path = tmp_path / "AU2.txt"
    path.write_text("000.jpg 3\n001.jpg 0\n\n002.jpg 5\n")
    assert read_au_file(path) == {0: 3, 1: 0, 2: 5}


def test_disfa_plus_offers_no_drop_list():
    adapter = DisfaPlusAdapter()
    assert adapter.drop_lists == ()
    with pytest.raises(ValueError, match="--drop-list jaa: DISFA\\+ has no drop lists"):
        adapter.dropped_frames("jaa")


def test_a_folder_that_is_not_the_release_fails_clearly(tmp_path):
    with pytest.raises(ReleaseError, match="not a DISFA\\+ release"):
        DisfaPlusAdapter().sequences(tmp_path)


def test_an_au_file_of_another_au_is_named(release):
    root, _ = release
    (root / "DISFAPlusDataset" / "Labels" / "SN001" / TRIAL / "AU7.txt").write_text("x\n")
    with pytest.raises(ReleaseError, match="AU7.txt: AU7 is not one of DISFA\\+'s 12 AUs"):
        DisfaPlusAdapter().sequences(root)


# --------------------------------------------------------------------------- manifests


def test_the_training_manifest_is_disfa_less_the_9_disfa_plus_subjects():
    train = json.loads(facts.TRAIN_JSON.read_text())
    assert len(disfa.SUBJECTS) - len(facts.SUBJECTS) == 18 == len(facts.DISFA_WITHOUT_DISFA_PLUS)
    assert set(facts.SUBJECTS) <= set(disfa.SUBJECTS)
    (fold,) = train["folds"]
    used = fold["train"] + fold["val"]
    assert sorted(used) == sorted(train["parts"][0]) == sorted(facts.DISFA_WITHOUT_DISFA_PLUS)
    assert not set(used) & set(facts.SUBJECTS) and fold["test"] == []
    assert train["validation_subjects_per_fold"] == [fold["val"]]
    assert train["dataset"] == "disfa" and train["test_manifest"] == facts.TEST_JSON.name


def test_the_test_manifest_is_the_9_disfa_plus_subjects_and_its_rule():
    test = json.loads(facts.TEST_JSON.read_text())
    assert test["dataset"] == "disfa+" and test["folds"][0]["test"] == list(facts.SUBJECTS)
    assert test["folds"][0]["train"] == [] == test["folds"][0]["val"]
    assert test["threshold"] == facts.DEFAULT_THRESHOLD == 2
    assert test["au_ids"] == list(facts.AUS) and test["also_report_aus"] == list(facts.DISFA_EIGHT)
    parts = disfa.standard_folds()["parts"]
    assert test["disfa_part_of_subject"] == {s: k + 1 for k, p in enumerate(parts) for s in p
                                             if s in facts.SUBJECTS}
    assert DisfaPlusAdapter().standard_folds() == test

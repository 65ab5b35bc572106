"""Shard schema 2: any supported dataset's AU columns, "not coded" kept apart from 0 and 1,
49 or 66 landmarks, and the dataset recorded (schema-1 shards read as DISFA's)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.datasets.base import NOT_CODED
from pipeline.datasets.registry import DATASETS, KNOWN_AUS, dataset_info, is_known_subject
from pipeline.shards import ShardError, ShardReader, ShardWriter, label_stats


def _write(path, dataset, n=6, occurrence=None, intensity=None, subject=None):
    info = dataset_info(dataset)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
    if intensity is None:
        intensity = rng.integers(0, 6, (n, len(info.intensity_aus))).astype(np.uint8)
    landmarks = rng.random((n, info.n_landmarks, 2)).astype(np.float32)
    with ShardWriter(path, 16, encoding="raw", dataset=dataset) as w:
        w.append_many(images, range(n), intensity, landmarks, occurrence=occurrence)
        w.commit(subject=subject or ("F001" if dataset == "bp4d" else "SN001"), camera="frontal",
                 threshold=3, nose_target=(0.5, 0.5), chin_target=(0.5, 0.875),
                 n_source_frames=n)
    return path


def test_a_bp4d_shard_keeps_not_coded_apart_from_zero_and_one(tmp_path):
    occ = np.zeros((6, 12), np.uint8)
    occ[0, 0], occ[1, 0], occ[2, 0] = 1, NOT_CODED, 0
    intensity = np.full((6, 5), NOT_CODED, np.uint8)
    intensity[:, 0] = [0, 1, 2, 3, 4, 5]  # AU6
    path = _write(tmp_path / "F001_frontal.h5", "bp4d", occurrence=occ, intensity=intensity)
    r = ShardReader(path)
    assert r.dataset == "bp4d" and r.au_ids == dataset_info("bp4d").eval_aus
    assert r.landmarks.shape == (6, 49, 2) and r.attrs["n_landmarks"] == 49
    labels = r.label_matrix((1, 6, 9), threshold=3)
    assert labels[0, 0] == 1 and np.isnan(labels[1, 0]) and labels[2, 0] == 0
    assert np.isnan(labels[:, 2]).all()  # AU9: not coded in BP4D at all
    assert list(r.labels[:3, 0]) == [1, NOT_CODED, 0]
    assert list(r.intensity_matrix((6, 10))[:, 0]) == [0, 1, 2, 3, 4, 5]
    assert np.isnan(r.intensity_matrix((10,))).all()
    assert r.attrs["pos_count"][0] == 1  # the not-coded frame is no positive and no negative
    r.close()


def test_label_stats_count_only_coded_frames():
    labels = np.array([[1, NOT_CODED], [0, NOT_CODED], [1, 1]], np.uint8)
    pos, ratio = label_stats(labels)
    assert list(pos) == [2, 1] and ratio[0] == pytest.approx(0.5) and ratio[1] == 0


def test_a_disfa_shard_written_today_reads_as_before(tmp_path):
    path = _write(tmp_path / "SN001_left.h5", "disfa")
    r = ShardReader(path)
    assert r.dataset == "disfa" and r.occurrence is None and r.landmarks.shape[1] == 66
    expected = (r.intensity[:, [0, 1]] >= 3).astype(np.float32)
    assert np.array_equal(r.label_matrix((1, 2), 3), expected)
    r.close()


def test_a_schema_1_shard_without_dataset_reads_as_disfa(tmp_path):
    path = _write(tmp_path / "SN001_left.h5", "disfa")
    with h5py.File(path, "a") as f:
        for key in ("dataset", "intensity_au_ids", "occurrence_au_ids", "n_landmarks",
                    "label_rule"):
            del f.attrs[key]
        f.attrs["schema_version"] = 1
    assert ShardReader(path).dataset == "disfa"


@pytest.mark.parametrize("change, words", [
    ({"dataset": "casme"}, "unknown dataset 'casme'"),
    ({"dataset": "bp4d"}, "not a subject name of BP4D"),
    ({"dataset": "bp4d", "subject": "F001"}, "needs dataset 'occurrence'"),
    ({"dataset": "disfa+"}, "'landmarks' has 66 columns; a DISFA\\+ shard has 49"),
])
def test_a_shard_claiming_another_scheme_is_refused(tmp_path, change, words):
    path = _write(tmp_path / "SN001_left.h5", "disfa")
    with h5py.File(path, "a") as f:
        f.attrs.update(change)
    with pytest.raises(ShardError, match=words):
        ShardReader(path)


def test_a_bp4d_writer_refuses_frames_without_occurrence(tmp_path):
    with pytest.raises(ShardError, match="occurrence codes"):
        _write(tmp_path / "F001_frontal.h5", "bp4d")


def test_the_registry_knows_each_dataset_and_its_subjects():
    assert set(DATASETS) == {"disfa", "disfa+", "bp4d"}
    assert {7, 10, 14, 23, 24, 5, 9, 20, 25, 26} <= set(KNOWN_AUS)
    assert is_known_subject("F023") and is_known_subject("SN001")
    assert not is_known_subject("F0231") and not is_known_subject("../SN001")
    assert dataset_info("bp4d").label_source(6) == "occurrence"
    assert dataset_info("disfa+").label_source(6) == "intensity"
    with pytest.raises(ValueError, match="choose from disfa, disfa\\+, bp4d"):
        dataset_info("ck+")

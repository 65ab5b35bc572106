"""Folds, validation hold-outs and per-AU weights from shard metadata."""
import json
import logging

import numpy as np
import pytest

from pipeline.build_folds import (FoldConfig, FoldError, build_folds, load_folds, main,
                                  peer_au_weights, write_folds)
from pipeline.datasets.disfa.facts import ALL_AUS, SUBJECTS, standard_folds
from pipeline.shards import ShardWriter

AUS4 = (1, 2, 4, 6)


def make_shard(folder, subject, positives, n, au_ids=AUS4, threshold=3, size=8,
               camera="left"):
    """A shard of ``n`` frames in which AU ``au_ids[i]`` is positive in ``positives[i]``."""
    intensity = np.zeros((n, len(ALL_AUS)), np.uint8)
    for au, k in zip(au_ids, positives):
        intensity[:k, ALL_AUS.index(au)] = 4
    with ShardWriter(folder / f"{subject}_{camera}.h5", size, encoding="raw") as w:
        w.append_many(np.zeros((n, size, size, 3), np.uint8), range(n), intensity,
                      np.zeros((n, 66, 2), np.float32))
        w.commit(subject=subject, camera=camera, threshold=threshold, au_ids=au_ids,
                 nose_target=(4, 4), chin_target=(4, 7), n_source_frames=n)


@pytest.fixture(scope="module")
def disfa_shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    for k, subject in enumerate(SUBJECTS):
        make_shard(folder, subject, [k % 3, 1 + k % 5, 2, k % 7], n=10 + k)
    return folder


def test_peer_weights_by_hand():
    # r = [2, 4, 8, 1] / 8 = [.25, .5, 1, .125]; 1/r = [4, 2, 1, 8] (sum 15); times K = 4 / 15.
    w, zero = peer_au_weights(np.array([2, 4, 8, 1]), 8)
    np.testing.assert_allclose(w, [16 / 15, 8 / 15, 4 / 15, 32 / 15])
    assert zero == [] and w.sum() == pytest.approx(4)
    # No positives: r = 1/N as if one positive -> 1/r = 8, the largest weight.
    w, zero = peer_au_weights(np.array([2, 0, 8, 1]), 8)
    np.testing.assert_allclose(w, np.array([4, 8, 1, 8]) / 21 * 4)
    assert zero == [1]


def test_disfa3_folds(disfa_shards):
    manifest = build_folds(disfa_shards, FoldConfig())
    parts = standard_folds()["parts"]
    val_rule = standard_folds()["validation_subjects_per_fold"]
    frames = {s: 10 + k for k, s in enumerate(SUBJECTS)}
    assert manifest["scheme"] == "disfa3" and manifest["au_ids"] == list(AUS4)
    assert manifest["threshold"] == 3 and manifest["image_size"] == 8
    assert [f["fold"] for f in manifest["folds"]] == [1, 2, 3]
    tested = []
    for k, fold in enumerate(manifest["folds"]):
        train, val, test = set(fold["train"]), set(fold["val"]), set(fold["test"])
        assert test == set(parts[k]) and fold["val"] == val_rule[k]
        assert not (train & val) and not (train & test) and not (val & test)
        assert train | val | test == set(SUBJECTS) and len(train) == 16
        # Validation comes from the training parts: the first-listed subject of each.
        assert fold["val"] == [p[0] for j, p in enumerate(parts) if j != k]
        for role in ("train", "val", "test"):
            assert fold["frames"][role] == sum(frames[s] for s in fold[role])
        pos = np.zeros(4)
        for s in fold["train"]:
            j = SUBJECTS.index(s)
            pos += [j % 3, 1 + j % 5, 2, j % 7]
        n = fold["frames"]["train"]
        np.testing.assert_allclose(fold["pos_rate"]["train"], pos / n)
        w = (n / pos) / (n / pos).sum() * 4
        np.testing.assert_allclose(fold["au_weights"], w)
        assert fold["sampler"]["au_weights"] == fold["au_weights"]
        assert sum(fold["sampler"]["train_frames_per_subject"].values()) == n
        tested += fold["test"]
    assert sorted(tested) == sorted(SUBJECTS)


def test_missing_subject_is_named_unless_allowed(tmp_path, disfa_shards, caplog):
    for p in disfa_shards.glob("*.h5"):
        if "SN013" not in p.name and "SN004" not in p.name:
            (tmp_path / p.name).symlink_to(p)
    with pytest.raises(FoldError, match=r"\['SN004', 'SN013'\].*--allow-missing"):
        build_folds(tmp_path, FoldConfig())
    with caplog.at_level(logging.WARNING):
        manifest = build_folds(tmp_path, FoldConfig(allow_missing=True))
    assert manifest["missing_subjects"] == ["SN004", "SN013"]
    everyone = [s for f in manifest["folds"] for r in ("train", "val", "test") for s in f[r]]
    assert "SN013" not in everyone and "SN004" not in everyone
    assert manifest["folds"][1]["val"] == ["SN002", "SN003"]
    assert manifest["folds"][0]["val"] == ["SN003"]  # SN013 missing: one validation subject
    assert "SN013" in caplog.text


def test_mixed_shard_settings_are_an_error(tmp_path):
    make_shard(tmp_path, "SN001", [1, 1, 1, 1], 5)
    make_shard(tmp_path, "SN002", [1, 1, 1, 1], 5, threshold=2)
    with pytest.raises(FoldError, match="SN002_left.h5 .*threshold 2 vs 3"):
        build_folds(tmp_path, FoldConfig(scheme="kfold", k=2, val_subjects=0))
    (tmp_path / "SN002_left.h5").unlink()
    make_shard(tmp_path, "SN002", [1, 1, 1, 1], 5, size=16)
    with pytest.raises(FoldError, match="image_size 16 vs 8"):
        build_folds(tmp_path, FoldConfig(scheme="kfold", k=2, val_subjects=0))
    (tmp_path / "SN002_left.h5").unlink()
    make_shard(tmp_path, "SN002", [1, 1, 1, 1], 5, au_ids=(1, 2, 4, 9))
    with pytest.raises(FoldError, match="au_ids"):
        build_folds(tmp_path, FoldConfig(scheme="kfold", k=2, val_subjects=0))
    with pytest.raises(FoldError, match="no right-camera shards"):
        build_folds(tmp_path, FoldConfig(camera="right"))


def test_kfold_is_subject_independent_and_deterministic(tmp_path, caplog):
    subjects = ["SN001", "SN002", "SN003", "SN004", "SN005", "SN006", "SN007"]
    for k, s in enumerate(subjects):
        make_shard(tmp_path, s, [k, 1, 0, 2], 8)
    cfg = FoldConfig(scheme="kfold", k=3, seed=5, val_subjects=2)
    with caplog.at_level(logging.WARNING):
        a = build_folds(tmp_path, cfg)
    assert "AU [4] have no positive training frame" in caplog.text
    assert build_folds(tmp_path, cfg)["folds"] == a["folds"]
    other = build_folds(tmp_path, FoldConfig(scheme="kfold", k=3, seed=6, val_subjects=2))
    assert [f["test"] for f in other["folds"]] != [f["test"] for f in a["folds"]]
    tested = []
    for fold in a["folds"]:
        train, val, test = set(fold["train"]), set(fold["val"]), set(fold["test"])
        assert len(val) == 2 and not (train & val or train & test or val & test)
        assert train | val | test == set(subjects)
        assert fold["zero_positive_aus"] == [4]
        tested += fold["test"]
    assert sorted(tested) == subjects
    # Validation: the first subjects of the lowest-numbered training part (the comment's rule).
    parts = [f["test"] for f in a["folds"]]
    assert [f["val"] for f in a["folds"]] == [parts[1][:2], parts[0][:2], parts[0][:2]]
    with pytest.raises(FoldError, match="cannot make 8 folds"):
        build_folds(tmp_path, FoldConfig(scheme="kfold", k=8))


def test_cli_writes_and_load_folds_reads(tmp_path, disfa_shards, capsys):
    out = tmp_path / "folds"
    assert main(["--shards", str(disfa_shards), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fold 3" in printed and "weight" in printed
    manifest = load_folds(out / "folds.json")
    assert manifest == json.loads((out / "folds.json").read_text())
    assert load_folds(out)["folds"][0]["test"] == standard_folds()["parts"][0]
    assert main(["--shards", str(tmp_path / "none"), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (out / "folds.json").write_text('{"scheme": "kfold"}')
    with pytest.raises(FoldError, match="'au_ids' missing"):
        load_folds(out)
    write_folds(manifest, out)
    assert load_folds(out) == manifest

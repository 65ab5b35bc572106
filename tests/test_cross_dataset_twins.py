"""#26 items 4 and 7 on the twins: DISFA -> DISFA+ is one training command with the shipped
``data_manifests/disfa_train_without_disfa_plus.json`` and one evaluation with
``disfa_plus_test.json``, and no DISFA+ subject trains although the DISFA twin holds all of
them under the same names; the BP4D-twin -> DISFA-twin and DISFA-twin -> DISFA+-twin tables name
the shared AUs, the frames each was scored on, both label rules and the AUs skipped and why.
Checkpoints come from the session's chains (tests/twin_chains.py): no extra training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset_shards import make_dataset_folds
from model.engine.data import DataError
from model.train import TrainConfig, main as run_train, train
from pipeline.build_folds import load_folds
from pipeline.datasets.base import NOT_CODED
from pipeline.shards import ShardReader
from twin_chains import DPLUS_SUBJECTS, EVALUATE, run_ok

MANIFESTS = Path(__file__).resolve().parent.parent / "data_manifests"
SHARED_WITH_BP4D = [1, 2, 4, 6, 12, 15, 17]


def _evaluate(checkpoint: Path, shards: Path, manifest: Path, out: Path) -> dict:
    run_ok("model.evaluate", ["--checkpoint", checkpoint, "--shards", shards, "--manifest",
                              manifest, "--fold", "1", "--out", out, *EVALUATE])
    return json.loads((out / "evaluation_test.json").read_text())["results"][0]


def _coded(readers, au: int, threshold: int) -> tuple[int, int]:
    """(frames coded for ``au``, positives at ``threshold``) over ``readers``' intensities."""
    coded = positives = 0
    for r in readers:
        column = np.asarray(r.intensity)[:, list(r.info.intensity_aus).index(au)]
        coded += int((column != NOT_CODED).sum())
        positives += int(((column >= threshold) & (column != NOT_CODED)).sum())
    return coded, positives


def test_disfa_to_disfa_plus_trains_with_the_shipped_manifest_and_no_disfa_plus_subject(
        disfa18_chain):
    chain = disfa18_chain
    # the DISFA twin holds the nine DISFA+ subjects' shards too: only the manifest keeps them out
    assert {p.name.split("_")[0] for p in chain.shards.glob("*.h5")} >= set(DPLUS_SUBJECTS)
    state = torch.load(chain.run / "best.pt", map_location="cpu", weights_only=False)
    subjects = state["data"]["subjects"]
    shipped = json.loads((MANIFESTS / "disfa_train_without_disfa_plus.json").read_text())
    assert subjects["train"] == shipped["folds"][0]["train"] and subjects["test"] == []
    assert subjects["val"] == shipped["folds"][0]["val"]
    used = set(subjects["train"]) | set(subjects["val"])
    assert len(used) == 18 and not used & set(DPLUS_SUBJECTS)
    assert state["data"]["dataset"] == "disfa" and state["data"]["threshold"] == 3
    results = json.loads((chain.run / "results.json").read_text())
    assert results["training_only"] and results["test_manifest"] == "disfa_plus_test.json"


def test_the_disfa_twin_to_disfa_plus_twin_table(disfa18_chain, dplus_shards, tmp_path):
    result = _evaluate(disfa18_chain.run / "best.pt", dplus_shards.shards,
                       MANIFESTS / "disfa_plus_test.json", tmp_path)
    assert result["subjects"] == DPLUS_SUBJECTS and result["seen_subjects"] == []
    cross = result["cross_dataset"]
    eight = [1, 2, 4, 6, 9, 12, 25, 26]
    assert cross["train_datasets"] == ["disfa"] and cross["test_dataset"] == "disfa+"
    assert cross["shared_aus"] == result["metrics"]["au_ids"] == eight and cross["skipped"] == {}
    assert cross["train_label_rules"] == ["DISFA: positive at FACS intensity >= 3"]
    assert cross["test_label_rule"].startswith("DISFA+: ") and "here threshold 2" in \
        cross["test_label_rule"]
    readers = [ShardReader(dplus_shards.shards / f"{s}_frontal.h5") for s in DPLUS_SUBJECTS]
    expected = [_coded(readers, au, 2) for au in eight]
    metrics = result["metrics"]
    assert metrics["n_scored"] == [c for c, _ in expected]
    assert [c[0] + c[3] for c in metrics["counts"]] == [p for _, p in expected]  # >= 2, not 3
    text = (tmp_path / "evaluation_test.md").read_text()
    assert "trained on DISFA, tested on DISFA+" in text and "Skipped AUs: none" in text
    assert "Frames scored per AU (fold 1): " + ", ".join(
        f"AU{a} {c}" for a, (c, _) in zip(eight, expected)) in text


def test_the_bp4d_twin_to_disfa_twin_table(bp4d_chain, disfa18_chain, tmp_path):
    folds = json.loads(disfa18_chain.folds.read_text())
    assert folds["dataset"] == "disfa" and folds["scheme"] == "disfa3"
    result = _evaluate(bp4d_chain.run / "best.pt", disfa18_chain.shards, disfa18_chain.folds,
                       tmp_path)
    cross = result["cross_dataset"]
    assert cross["train_datasets"] == ["bp4d"] and cross["test_dataset"] == "disfa"
    assert result["metrics"]["au_ids"] == cross["shared_aus"] == SHARED_WITH_BP4D
    assert cross["skipped"] == {a: "not coded in DISFA" for a in ("7", "10", "14", "23", "24")}
    assert "9 = not coded" in cross["train_label_rules"][0] or \
        "not coded: masked" in cross["train_label_rules"][0]
    assert cross["test_label_rule"].startswith("DISFA: ") and "here threshold 3" in \
        cross["test_label_rule"]
    test = folds["folds"][0]["test"]
    readers = [ShardReader(disfa18_chain.shards / f"{s}_left.h5") for s in test]
    # AU15 and AU17 come from DISFA's 12 coded AUs, outside its evaluated 8 and the folds' AUs
    expected = [_coded(readers, au, 3) for au in SHARED_WITH_BP4D]
    assert result["metrics"]["n_scored"] == [c for c, _ in expected]
    assert [c[0] + c[3] for c in result["metrics"]["counts"]] == [p for _, p in expected]
    text = (tmp_path / "evaluation_test.md").read_text()
    assert "trained on BP4D, tested on DISFA" in text
    assert "Skipped AUs: " in text and "AU7 (not coded in DISFA)" in text


def test_the_shipped_manifests_read_as_folds_manifests():
    """Keys a folds.json has and the shipped manifests lack come from the dataset: its
    evaluated AUs and rule where the manifest names none, the image size from the shards."""
    train = load_folds(MANIFESTS / "disfa_train_without_disfa_plus.json")
    assert (train["au_ids"], train["threshold"], train["image_size"]) == \
        ([1, 2, 4, 6, 9, 12, 25, 26], 3, None)
    assert train["folds"][0]["au_weights"] is None  # the trainer derives them from the shards
    test = load_folds(MANIFESTS / "disfa_plus_test.json")
    assert (test["au_ids"], test["threshold"]) == ([1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26], 2)


def test_a_shipped_style_manifest_of_an_unknown_dataset_is_one_line(tmp_path, capsys):
    manifest = tmp_path / "other.json"
    manifest.write_text(json.dumps({"dataset": "ck+", "folds": [
        {"fold": 1, "train": ["SN002"], "val": [], "test": ["SN005"]}]}))
    assert run_train([f"--shards={tmp_path}", f"--manifest={manifest}", "--fold=1",
                      f"--out={tmp_path / 'run'}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(manifest) in err[0] and "ck+" in err[0]


def test_a_fold_without_test_subjects_still_needs_a_test_manifest(tmp_path):
    """Only a manifest naming its test set elsewhere may leave a fold's test split empty."""
    shards, manifest = make_dataset_folds(tmp_path, "disfa", ["SN002", "SN005", "SN006"], n=8)
    payload = json.loads(manifest.read_text())
    payload["folds"][0]["test"] = []
    manifest.write_text(json.dumps(payload))
    config = TrainConfig(shards=str(shards), manifest=str(manifest), fold=1,
                         out=str(tmp_path / "run"), preset="small", epochs=1, workers=0,
                         quiet=True)
    with pytest.raises(DataError, match="no test subjects"):
        train(config)

"""#26 item 7: model.evaluate on another dataset's shards scores the AUs both code, names the
AUs skipped and why, the (coded) frames each AU was scored on, and both sides' label rules.
Tiny trained checkpoints on tiny shards (tests/dataset_shards.py); the twin-based test comes
once the twins exist."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dataset_shards import make_dataset_folds, write_dataset_manifest, write_dataset_shard
from model.engine.evaluator import evaluate_checkpoint
from model.evaluate import main as evaluate_main
from model.train import TrainConfig, train
from pipeline.datasets.base import NOT_CODED
from pipeline.shards import ShardReader

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train(data, out):
    shards, manifest = data
    train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(out),
                      preset="small", epochs=1, batches_per_epoch=2, batch_size=8, workers=0,
                      quiet=True, lr=0.05, eval_batch_size=32))
    return out / "best.pt"


@pytest.fixture(scope="module")
def bp4d_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("bp4d_model")
    data = make_dataset_folds(root, "bp4d", ["F001", "F002", "M001", "M002"], uncoded=0.1)
    return _train(data, root / "run")


@pytest.fixture(scope="module")
def disfa_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("disfa_model")
    data = make_dataset_folds(root, "disfa", ["SN002", "SN005", "SN006", "SN008"])
    return _train(data, root / "run")


def test_a_bp4d_model_on_disfa_shards_scores_the_aus_both_code(bp4d_model, tmp_path):
    shards = tmp_path / "disfa"
    for j, subject in enumerate(["SN011", "SN012"]):
        write_dataset_shard(shards, "disfa", subject, n=20, seed=40 + j)
    manifest = write_dataset_manifest(tmp_path / "disfa.json", "disfa", ["SN011"], [],
                                      ["SN011", "SN012"])
    result = evaluate_checkpoint(bp4d_model, shards, manifest, 1, workers=0)
    cross = result["cross_dataset"]
    assert cross["train_datasets"] == ["bp4d"] and cross["test_dataset"] == "disfa"
    # BP4D's 12 AUs against DISFA's 12 coded ones: 1, 2, 4, 6, 12, 15, 17 are shared
    assert result["metrics"]["au_ids"] == [1, 2, 4, 6, 12, 15, 17]
    assert cross["skipped"] == {a: "not coded in DISFA" for a in ("7", "10", "14", "23", "24")}
    assert result["metrics"]["n_scored"] == [40] * 7  # DISFA codes every frame
    assert "occurrence codes" in cross["train_label_rules"][0]
    assert cross["test_label_rule"].startswith("DISFA: ") and "here threshold 3" in \
        cross["test_label_rule"]
    assert result["protocol"].startswith("labels: DISFA: ")
    assert len(result["metrics"]["f1"]) == 7


def test_a_disfa_model_on_disfa_plus_shards_counts_the_coded_frames(disfa_model, tmp_path):
    shards = tmp_path / "disfa_plus"
    subjects = ["SN001", "SN003"]
    for j, subject in enumerate(subjects):
        write_dataset_shard(shards, "disfa+", subject, n=20, seed=50 + j, uncoded=0.25)
    manifest = write_dataset_manifest(tmp_path / "disfa_plus.json", "disfa+", [], [], subjects)
    out = tmp_path / "eval"
    assert evaluate_main(["--checkpoint", str(disfa_model), "--shards", str(shards),
                          "--manifest", str(manifest), "--fold", "1", "--workers", "0",
                          "--bootstrap", "0", "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "evaluation_test.json").read_text())
    metrics = summary["results"][0]["metrics"]
    eight = [1, 2, 4, 6, 9, 12, 25, 26]
    assert metrics["au_ids"] == eight  # DISFA+ codes all of the model's AUs: none skipped
    # each AU is scored on the frames whose DISFA+ code is not "not coded"
    readers = [ShardReader(shards / f"{s}_frontal.h5") for s in subjects]
    coded = sum((np.asarray(r.intensity) != NOT_CODED).sum(axis=0) for r in readers)
    columns = [readers[0].info.intensity_aus.index(a) for a in eight]
    expected = [int(coded[c]) for c in columns]
    assert metrics["n_scored"] == expected and min(expected) < 40
    # positives by DISFA+'s rule at the test manifest's threshold (2), not the model's 3
    positives = [c[0] + c[3] for c in metrics["counts"]]
    want = [int(sum(((np.asarray(r.intensity)[:, c] >= 2)
                     & (np.asarray(r.intensity)[:, c] != NOT_CODED)).sum() for r in readers))
            for c in columns]
    assert positives == want
    text = (out / "evaluation_test.md").read_text()
    assert "trained on DISFA, tested on DISFA+" in text
    assert "Test labels: DISFA+: " in text and "here threshold 2" in text
    assert "Train labels: DISFA: positive at FACS intensity >= 3" in text
    assert "Skipped AUs: none" in text
    assert "frames scored" in text
    assert f"AU1 {expected[0]}" in text


def test_no_shared_au_is_one_clear_error(bp4d_model, tmp_path):
    """A model of BP4D-only AUs has nothing DISFA could score: refused, naming the checkpoint."""
    from model.engine.checkpoint import load_checkpoint, save_checkpoint
    from model.engine.data import DataError

    state = load_checkpoint(bp4d_model)
    state["data"]["au_ids"] = [7, 10, 14, 23, 24]
    save_checkpoint(tmp_path / "only_bp4d.pt", state)
    shards = tmp_path / "disfa"
    write_dataset_shard(shards, "disfa", "SN011", n=8, seed=3)
    manifest = write_dataset_manifest(tmp_path / "disfa.json", "disfa", [], [], ["SN011"])
    with pytest.raises(DataError, match=r"only_bp4d.pt predicts AUs \[7, 10, 14, 23, 24\], none "
                                        "of which disfa codes"):
        evaluate_checkpoint(tmp_path / "only_bp4d.pt", shards, manifest, 1, workers=0)

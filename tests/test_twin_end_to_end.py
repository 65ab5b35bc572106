"""#26 item 5: the BP4D and DISFA+ twins each run synth -> align -> build_folds -> train ->
evaluate (the DISFA twin's chain is tests/test_demo.py's), checking what each stage hands to the
next: the shards' dataset, label rule, landmark source and alignment rule; the folds' dataset;
the checkpoint's dataset; the evaluation's AUs and frames scored. The chains are built once a
session (tests/twin_chains.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.datasets.registry import dataset_info
from pipeline.shards import ShardReader
from twin_chains import run_ok


def _shards(chain) -> dict[str, ShardReader]:
    return {p.name.split("_")[0]: ShardReader(p) for p in sorted(chain.shards.glob("*.h5"))}


def _check_folds_checkpoint_evaluation(chain, dataset: str) -> None:
    """The stages after alignment: folds, checkpoint and evaluation all of ``dataset``, the
    evaluation scoring each of its AUs on exactly the test frames coded for it."""
    info = dataset_info(dataset)
    folds = json.loads(chain.folds.read_text())
    assert folds["dataset"] == dataset and folds["au_ids"] == list(info.eval_aus)
    assert folds["camera"] == "frontal" and folds["threshold"] == info.default_threshold
    fold = folds["folds"][0]
    shards = _shards(chain)
    assert sorted(fold["train"] + fold["val"] + fold["test"]) == sorted(shards)
    assert fold["frames_per_subject"] == {s: len(r) for s, r in shards.items()
                                          if s in fold["frames_per_subject"]}
    state = torch.load(chain.run / "best.pt", map_location="cpu", weights_only=False)
    data = state["data"]
    assert data["dataset"] == dataset and data["datasets"] == [dataset]
    assert data["au_ids"] == list(info.eval_aus) and data["subjects"]["test"] == fold["test"]
    assert list(data["label_rules"]) == [dataset]
    result = chain.evaluation_result()
    assert "cross_dataset" not in result and result["subjects"] == fold["test"]
    # the protocol line states this dataset's label rule, as training's did
    assert result["protocol"].startswith(f"labels: {info.title}: ")
    assert json.loads((chain.run / "results.json").read_text())["protocol"].startswith(
        f"labels: {info.title}: ")
    metrics = result["metrics"]
    assert metrics["au_ids"] == list(info.eval_aus)
    test = [shards[s] for s in fold["test"]]
    labels = np.concatenate([r.label_matrix(info.eval_aus, folds["threshold"]) for r in test])
    assert metrics["n_frames"] == sum(len(r) for r in test) == len(labels)
    assert metrics["n_scored"] == (~np.isnan(labels)).sum(axis=0).tolist()
    assert len(metrics["f1"]) == len(info.eval_aus)


def test_the_bp4d_twin_runs_align_folds_train_evaluate(bp4d_chain, tmp_path):
    chain = bp4d_chain
    shards = _shards(chain)
    assert len(shards) == 4
    summary = json.loads((chain.shards / "align_summary.json").read_text())
    for reader in shards.values():
        attrs = reader.attrs
        assert attrs["dataset"] == "bp4d" and attrs["camera"] == "frontal"
        assert attrs["alignment_rule"] == "nose-chin"
        # the chin is dlib's (the 49 points have none), and frames without landmarks fall back
        assert "dlib-68 chin" in attrs["landmark_source"]
        assert "9 = not coded" in attrs["label_rule"]
        assert list(attrs["au_ids"]) == list(dataset_info("bp4d").eval_aus)
    assert summary["totals"]["kept"] == sum(len(r) for r in shards.values())
    # frames whose 49 points are missing took the detector's, counted in the shards and summary
    from_detector = sum(int(r.attrs["landmarks_from_detector"]) for r in shards.values())
    assert summary["totals"]["from_detector"] == from_detector > 0
    _check_folds_checkpoint_evaluation(chain, "bp4d")
    # JAA's rule on the same twin: recorded as such, the same frames kept
    jaa = tmp_path / "jaa"
    run_ok("pipeline.align", ["--dataset", "bp4d", "--root", chain.twin, "--out", jaa,
                              "--alignment", "jaa", "--size", "32", "--jobs", "1"])
    for subject, reader in shards.items():
        other = ShardReader(jaa / reader.path.name)
        assert other.attrs["alignment_rule"] == "jaa" and len(other) == len(reader), subject


def test_the_disfa_plus_twin_runs_align_folds_train_evaluate(dplus_chain):
    chain = dplus_chain
    shards = _shards(chain)
    truth = json.loads((chain.twin / "synth_truth.json").read_text())
    assert sorted(shards) == sorted(truth["subjects"])
    summary = json.loads((chain.shards / "align_summary.json").read_text())
    # every frame listed in all 12 AU files is found by dlib at 320x240 and kept
    assert summary["totals"]["kept"] == truth["expected"]["labelled_frames"] == \
        sum(len(r) for r in shards.values())
    for reader in shards.values():
        attrs = reader.attrs
        assert attrs["dataset"] == "disfa+" and attrs["alignment_rule"] == "nose-chin"
        assert "dlib-68" in attrs["landmark_source"] and int(attrs["threshold"]) == 2
        assert "default 2" in attrs["label_rule"]
    _check_folds_checkpoint_evaluation(chain, "disfa+")


@pytest.mark.parametrize("name", ["bp4d_chain", "dplus_chain"])
def test_each_twin_trained_something(name, request):
    """One epoch of three batches: the loss is finite and every AU got a score."""
    chain = request.getfixturevalue(name)
    history = json.loads((chain.run / "metrics.json").read_text())["epochs"]
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])
    f1 = chain.evaluation_result()["metrics"]["f1"]
    assert all(0.0 <= v <= 1.0 for v in f1)

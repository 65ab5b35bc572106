"""Comparable runs: the protocol facts of a run and what differs between two sets of runs
(model/evaluation/protocol.py), and Table 2 refusing a variant scored another way."""
import json

import pytest

from model.engine.crossval_reports import table2_protocol
from model.engine.data import DataError
from model.evaluation.protocol import protocol_differences, protocol_facts, recipe_differences


def record(fold=1, threshold=3, test=("SN003",), landmarks="release", **train):
    tc = {"threshold": None, "cameras": ["left"], "task": "occurrence", "image_size": None,
          "select_on": "val", "lr": 0.001, "epochs": 100, "seed": 0, "fold": fold,
          "out": f"runs/fold{fold}", "device": "auto", **train}
    return {"train_config": tc, "model_config": {"variant": "tranet", "backbone": "senet50"},
            "data": {"threshold": threshold, "au_ids": [1, 2, 4], "image_size": 176,
                     "subjects": {"train": ["SN001"], "val": ["SN002"], "test": list(test)},
                     "alignment": {"config": {"landmark_source": landmarks}}}}


def runs(*records):
    return [(r, {"fold": r["train_config"]["fold"]}) for r in records]


def test_same_protocol_other_recipe_lists_what_differs():
    a = runs(record(1), record(2, test=("SN004",)))
    b = runs(record(1, lr=0.01, epochs=20), record(2, test=("SN004",), lr=0.01, epochs=20))
    differences, unverified = protocol_differences("A", a, "B", b)
    assert differences == [] and unverified == []
    recipe = recipe_differences("A", [r for r, _ in a], "B", [r for r, _ in b],
                                ignore=("out", "device", "fold"))
    assert recipe == ["lr: 0.001 in A, 0.01 in B", "epochs: 100 in A, 20 in B"]
    moved = runs(record(1, manifest="copy/folds.json"))
    assert protocol_differences("A", a[:1], "B", moved) == ([], [])    # same subjects: same
    assert recipe_differences("A", [a[0][0]], "B", [moved[0][0]], ignore=("out",)) == [
        "manifest: None in A, copy/folds.json in B"]


@pytest.mark.parametrize("change, named", [
    (dict(threshold=2), "label threshold: 3 in A, 2 in B"),
    (dict(test=("SN005",)), "test subjects (fold 1): SN003 in A, SN005 in B"),
    (dict(landmarks="dlib"), "landmark source: release in A, dlib in B"),
    (dict(task="both"), "task: occurrence in A, both in B"),
    (dict(cameras=["right"]), "camera: left in A, right in B"),
    (dict(select_on="test"), "model selection: val in A, test in B"),
])
def test_each_protocol_difference_is_named(change, named):
    differences, _ = protocol_differences("A", runs(record()), "B", runs(record(**change)))
    assert differences == [named]


def test_runs_of_one_side_must_agree_and_unrecorded_facts_are_unverified():
    differences, _ = protocol_differences("A", runs(record(seed=0), record(threshold=2, seed=1)),
                                          "B", runs(record()))
    assert differences == ["label threshold: 2 / 3 within A", "label threshold: 2 / 3 in A, 3 in B"]
    old = {"train_config": {"fold": 1}}                    # a run that recorded nothing
    differences, unverified = protocol_differences("A", runs(old), "B", runs(record()))
    assert differences == [] and "label threshold" in unverified and "landmark source" in unverified
    assert protocol_facts(old, {"test": {"au_ids": [1, 2]}})["AUs"] == (1, 2)


def test_table2_refuses_a_variant_scored_at_another_threshold(tmp_path):
    per_variant = {}
    for variant, threshold in (("tranet", 3), ("senet50", 2)):
        run_dir = tmp_path / variant
        run_dir.mkdir()
        (run_dir / "config.json").write_text(json.dumps(record(threshold=threshold)))
        per_variant[variant] = [{"fold": 1, "run_dir": str(run_dir)}]
    with pytest.raises(DataError, match="Table 2: senet50 vs tranet: .*label threshold: 2 in "
                                        "senet50, 3 in tranet.*"
                                        "--allow-protocol-mismatch"):
        table2_protocol(per_variant)
    lines, mismatched = table2_protocol(per_variant, allow_mismatch=True)
    assert mismatched == {"senet50"} and "PROTOCOL MISMATCH (senet50 vs tranet)" in lines[0]
    per_variant["senet50"][0]["run_dir"] = str(tmp_path / "tranet")     # same record: fine
    assert table2_protocol(per_variant) == ([], set())

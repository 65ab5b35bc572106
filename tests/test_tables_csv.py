"""Result tables other programs read (issue 23, item 6): one header line, numeric columns, notes
in a leading ``#`` block, degenerate intervals flagged, p at its floor said as a bound."""
import json
import pickle

import numpy as np
import pandas as pd
import pytest

from model.engine.config import TrainConfig, recipe_differences
from model.engine.crossval_reports import compare_rows
from model.evaluation.cells import Num, p_text
from model.evaluation.provenance import recipe_line
from model.evaluation.records import write_csv
from model.evaluation.run_report import result_log_line
from model.evaluation.tables import metric_rows, summary


def metrics(subjects: int, seed: int, better: int = 0) -> dict:
    """One fold's metric dict (``AUMetrics.as_dict`` shape) of ``subjects`` test subjects with
    random counts; ``better`` true positives moved from false negatives for every subject."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(5, 40, size=(subjects, 2, 4))
    counts[:, :, 0] += better
    counts[:, :, 3] = np.maximum(counts[:, :, 3] - better, 0)
    pooled = counts.sum(0)
    tp, fp, tn, fn = pooled.T
    return {"au_ids": [1, 2], "f1": (2 * tp / (2 * tp + fp + fn)).tolist(),
            "accuracy": ((tp + tn) / pooled.sum(1)).tolist(),
            "mean_f1": float(np.mean(2 * tp / (2 * tp + fp + fn))),
            "mean_accuracy": float(np.mean((tp + tn) / pooled.sum(1))),
            "per_subject": {"subjects": [f"SN{i:03d}" for i in range(subjects)],
                            "counts": counts.tolist()}}


def read(path):
    return pd.read_csv(path, comment="#")


def test_notes_go_in_a_comment_block_pandas_skips_even_with_a_hash_inside(tmp_path):
    rows = metric_rows(1, summary([metrics(4, 0)], 50, 0))
    rows[0][0] = "fold #1"       # a '#' in a data cell would cut the row for comment="#"
    path = tmp_path / "t.csv"
    write_csv(path, ["fold", "metric", "AU1", "AU2", "Avg"], rows,
              notes=["Recipe: a note with a # in the middle", "two\nlines"], units="percent")
    lines = path.read_text().splitlines()
    assert lines[:3] == ["# Recipe: a note with a # in the middle", "# two", "# lines"]
    table = read(path)
    assert len(table) == len(rows) and list(table["metric"][:2]) == ["f1", "accuracy"]
    for column in ("au1", "au1_ci_low", "au1_ci_high", "avg", "avg_ci_low", "avg_ci_high"):
        assert pd.api.types.is_float_dtype(table[column]), column
    f1 = table[table["metric"] == "f1"].iloc[0]
    assert f1["au1_ci_low"] <= f1["au1"] <= f1["au1_ci_high"]
    assert f1["au1"] == pytest.approx(100 * summary([metrics(4, 0)], 50, 0)["f1"][0], abs=1e-3)
    assert table["ci_degenerate"].dtype == bool and not table["ci_degenerate"].any()
    assert "# Units: percent" in path.read_text()


def test_one_test_subject_flags_the_interval_as_degenerate(tmp_path):
    s = summary([metrics(1, 0)], 50, 0)
    assert s["ci_degenerate"] and s["ci"]["mean_f1"][0] == s["ci"]["mean_f1"][1]   # zero width
    path = tmp_path / "one.csv"
    write_csv(path, ["fold", "metric", "AU1", "AU2", "Avg"], metric_rows(1, s))
    assert read(path)["ci_degenerate"].all()
    assert not summary([metrics(3, 0)], 50, 0)["ci_degenerate"]


def test_p_at_the_floor_of_the_resamples_is_printed_as_a_bound(tmp_path):
    assert p_text(1 / 1000, 999) == "p < 0.001" and p_text(1 / 201, 200) == "p < 0.005"
    assert p_text(0.0342, 999) == "p=0.034"
    a = [{**metrics(16, 1, better=30), "_fold": 1}]
    b = [{**metrics(16, 1), "_fold": 1}]
    header, rows, detail = compare_rows("a", [[{"fold": 1, "test": a[0]}]], "b",
                                        [[{"fold": 1, "test": b[0]}]], 99, 0)
    assert detail["difference"]["mean_f1_p"] == pytest.approx(1 / 100)   # every swap smaller
    assert rows[-1][-1] == "< 0.01" and isinstance(rows[-1][-1], Num)
    assert pickle.loads(pickle.dumps(rows[-1][-1])).fields == rows[-1][-1].fields
    path = tmp_path / "compare.csv"
    write_csv(path, header, rows, columns=["au", "f1_a", "f1_b", "difference", "p"])
    table = read(path)
    assert table["p"].dtype == float and table["p_at_floor"].dtype == bool
    assert table["p_at_floor"].iloc[-1] and table["p"].iloc[-1] == pytest.approx(0.01)
    assert "difference_ci_low" in table and (table["difference"] > 0).all()
    assert "floor" in " ".join(detail["difference"]["method"])


def test_the_recipe_line_names_the_folds_the_run_recorded(tmp_path):
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"scheme": "disfa3", "missing_subjects": ["SN011"]}))
    line = recipe_line({"train_config": {"manifest": str(folds)}})
    assert "folds standard 3-fold (disfa3), missing subjects SN011" in line
    gone = recipe_line({"train_config": {"manifest": str(tmp_path / "gone.json")}})
    assert "folds from gone.json (not readable now)" in gone
    assert recipe_line({"train_config": {}}).endswith("folds: not recorded")


def test_a_recorded_threshold_of_none_reads_as_the_manifests():
    cfg = TrainConfig(shards="", manifest="", fold=1, out="", threshold=2)
    assert "--threshold 2 (run has the manifest's threshold)" in recipe_differences(
        cfg, {"threshold": None})


def test_the_result_log_line_gives_f1_in_percent_like_the_tables():
    line = result_log_line({"test": {"mean_f1": 0.5904, "mean_accuracy": 0.959}})
    assert "mean F1 59.0%" in line and "mean accuracy 95.9%" in line

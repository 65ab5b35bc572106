"""Intervals, per-subject results, recipe lines, tuned thresholds, --compare and --test-camera
on tiny runs (fixture shards, and a tiny twin with both cameras)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from model.crossval import main as crossval_main
from model.engine.checkpoint import load_for_inference
from model.engine.data import ShardFrames, fold_spec, open_shards
from model.evaluate import evaluate_checkpoint, main as evaluate_main
from model.inference.predictor import decision_thresholds
from model.nets.transforms import to_model_input
from model.train import TrainConfig, train
from pipeline.shards import ShardReader, ShardWriter, shard_name
from trainer_fixtures import make_dataset, write_manifest

TRAIN = dict(preset="small", epochs=1, batches_per_epoch=2, batch_size=8, workers=0, quiet=True,
             lr=0.05, eval_batch_size=32, plot_every=100, threads=1)
CV = ["--preset", "small", "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8",
      "--workers", "0", "--eval-batch-size", "32", "--quiet", "--lr", "0.05", "--plot-every",
      "100", "--threads", "1", "--bootstrap", "200"]
SUBJECTS = ("SN001", "SN002", "SN003", "SN004", "SN005", "SN006")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def poison(shards, subject):
    """Rewrite ``subject``'s shard with every label inverted and the same images."""
    path = shards / shard_name(subject, "left")
    r = ShardReader(path)
    images = [r.image(i) for i in range(len(r))]
    with ShardWriter(path, r.image_size, encoding="raw") as w:
        for i, image in enumerate(images):
            w.append(image, int(r.frame_index[i]), 5 - r.intensity[i], r.landmarks[i])
        w.commit(subject=subject, camera="left", threshold=int(r.attrs["threshold"]),
                 au_ids=r.au_ids, nose_target=r.attrs["nose_target"],
                 chin_target=r.attrs["chin_target"], n_source_frames=len(r), config={})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("unc")
    shards, _ = make_dataset(root, subjects=SUBJECTS, frames=24, size=32)
    manifest = write_manifest(root / "folds.json", shards, [
        (["SN001", "SN002"], ["SN003"], ["SN004", "SN005", "SN006"]),
        (["SN004", "SN005"], ["SN006"], ["SN001", "SN002", "SN003"])], 32)
    return root, shards, manifest


def test_tuned_thresholds_never_read_the_test_labels(data, tmp_path):
    root, shards, manifest = data
    clean = train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=1,
                              out=str(tmp_path / "clean"), tune_threshold="val", **TRAIN))
    poisoned_shards = tmp_path / "shards"
    shutil.copytree(shards, poisoned_shards)
    for subject in ("SN004", "SN005", "SN006"):                   # fold 1's test subjects
        poison(poisoned_shards, subject)
    dirty = train(TrainConfig(shards=str(poisoned_shards), manifest=str(manifest), fold=1,
                              out=str(tmp_path / "dirty"), tune_threshold="val", **TRAIN))
    assert clean["decision_thresholds"]["values"] == dirty["decision_thresholds"]["values"]
    assert clean["test"]["f1"] != dirty["test"]["f1"]             # the poison did reach the test
    assert "validation subjects" in clean["decision_thresholds"]["note"]
    # stored in best.pt, used by model.predict unless --decision-threshold overrides
    _, meta = load_for_inference(tmp_path / "clean" / "best.pt")
    assert meta["decision_thresholds"]["values"] == clean["decision_thresholds"]["values"]
    per_au = decision_thresholds(None, meta, "best.pt")
    np.testing.assert_allclose(per_au, clean["decision_thresholds"]["values"], rtol=1e-6)
    assert decision_thresholds(0.3, meta, "best.pt") == 0.3
    # F1 at the tuned thresholds is reported beside the 0.5 numbers
    assert clean["test_tuned"]["probability_threshold"] == clean["decision_thresholds"]["values"]
    # tuning on the test subjects is refused unless the model is selected there, and labelled
    with pytest.raises(ValueError, match="only allowed with --select-on test"):
        TrainConfig(shards="", manifest="", fold=1, out="", tune_threshold="test")
    leaky = train(TrainConfig(shards=str(poisoned_shards), manifest=str(manifest), fold=1,
                              out=str(tmp_path / "leaky"), tune_threshold="test",
                              select_on="test", **TRAIN))
    assert "TEST subjects (leakage" in leaky["decision_thresholds"]["note"]


@pytest.fixture(scope="module")
def cv(data, tmp_path_factory):
    root, shards, manifest = data
    out = tmp_path_factory.mktemp("cv") / "cv"
    assert crossval_main(["--shards", str(shards), "--manifest", str(manifest), "--out", str(out),
                          "--compare", "senet50", "tranet", *CV]) == 0
    return out


def test_crossval_tables_carry_intervals_recipe_and_difference_to_tranet(cv):
    t1 = (cv / "table1.md").read_text()
    assert "F1 ours [95% CI]" in t1 and "subject-level bootstrap, 200 resamples" in t1
    assert "preset small" in t1 and "from scratch" in t1 and "epochs run 1 of 1 max" in t1
    assert "folds k-fold" in t1 and "selection on val" in t1
    comments = [line[2:] for line in (cv / "table1.csv").read_text().splitlines()
                if line.startswith("# ")]
    md_lines = [line for line in t1.splitlines()[1:] if line and not line.startswith("|")]
    assert comments[:len(md_lines)] == md_lines   # the CSV's comment block = the Markdown lines
    t2 = (cv / "table2.md").read_text()
    assert "difference to TRA-Net [95% CI], p" in t2 and "0 (reference)" in t2
    for text in (t1, t2):       # what was resampled, how many, and what is not covered
        assert "unit resampled: the subject (6 test subjects in all)" in text
        assert "not covered: training-seed variance" in text
    assert "Holm-corrected over the 1 variant(s) compared with TRA-Net" in t2
    report = json.loads((cv / "crossval.json").read_text())
    diff = report["table2"]["differences_to_tranet"]["senet50"]
    lo, hi = diff["mean_f1_ci"]
    assert lo <= diff["mean_f1"] <= hi and 0 < diff["mean_f1_p"] <= 1
    means = report["mean_over_folds"]
    assert diff["mean_f1"] == pytest.approx(means["senet50"]["mean_f1"] - means["tranet"]["mean_f1"])
    # per-subject F1 in the JSON and as a heat map
    entries = report["per_subject"]["tranet"]
    assert sorted(e["subject"] for e in entries) == sorted(SUBJECTS[:6])
    assert (cv / "per_subject_tranet.png").stat().st_size > 1000
    compare = (cv / "compare.md").read_text()
    assert "senet50 - tranet [95% CI]" in compare and "| Avg |" in compare


def test_crossval_csvs_have_one_header_and_numeric_columns(cv):
    import pandas as pd

    report = json.loads((cv / "crossval.json").read_text())
    for name in ("table1.csv", "table2.csv", "compare.csv"):
        text = (cv / name).read_text()
        body = [line for line in text.splitlines() if not line.startswith("#")]
        assert "#" not in "\n".join(body) and "[" not in body[0], name   # one plain header
        assert "in percent (0-100)" in text and "Paper: paper:" not in text
    t1 = pd.read_csv(cv / "table1.csv", comment="#")
    assert list(t1.columns[:5]) == ["au", "f1_ours", "f1_ours_ci_low", "f1_ours_ci_high",
                                    "f1_paper"]
    for column in t1.columns[1:]:
        assert pd.api.types.is_numeric_dtype(t1[column]) or t1[column].dtype == bool, column
    avg = t1[t1["au"] == "Avg"].iloc[0]
    assert avg["f1_ours"] == pytest.approx(100 * report["mean_over_folds"]["tranet"]["mean_f1"],
                                           abs=1e-3)
    assert avg["f1_paper"] == 59.0 and avg["f1_ours_ci_low"] <= avg["f1_ours"]
    t2 = pd.read_csv(cv / "table2.csv", comment="#")
    for column in ("avg", "avg_ci_low", "difference_to_tranet", "difference_to_tranet_p"):
        assert pd.api.types.is_float_dtype(t2[column]), column
    assert t2["difference_to_tranet_p_at_floor"].dropna().isin([True, False]).all()
    compare = pd.read_csv(cv / "compare.csv", comment="#")
    assert list(compare.columns) == ["au", "f1_a", "f1_a_ci_low", "f1_a_ci_high", "f1_b",
                                     "f1_b_ci_low", "f1_b_ci_high", "difference",
                                     "difference_ci_low", "difference_ci_high", "p", "p_at_floor",
                                     "ci_degenerate"]
    assert compare["p"].between(0, 1).all() and compare["p_at_floor"].dtype == bool
    assert "# Columns: f1_a = F1 senet50 [95% CI]; f1_b = F1 tranet [95% CI]" in \
        (cv / "compare.csv").read_text()


def test_compare_two_run_folders_without_training(cv, tmp_path):
    out = tmp_path / "cmp"
    assert crossval_main(["--out", str(out), "--compare", str(cv), str(cv), "--bootstrap", "300"]) == 0
    payload = json.loads((out / "compare.json").read_text())
    assert payload["difference"]["mean_f1"] == 0.0
    assert payload["difference"]["mean_f1_ci"] == [0.0, 0.0]
    assert payload["difference"]["mean_f1_p"] == 1.0
    text = (out / "compare.md").read_text()
    assert "Recipe (cv:tranet): variant tranet" in text
    assert "Recipe differences: none recorded" in text and "Protocol of cv:tranet and" in text
    assert "sign-flip permutation test over subjects" in text
    assert "unit resampled: the subject, 6 test subjects in 2 fold(s)" in text
    assert "not covered: training-seed variance" in text
    assert payload["difference"]["f1_p_raw"] and not payload["protocol_mismatch"]
    assert not (out / "tranet").exists()                       # nothing trained


def _relabel_threshold(cv, copy, threshold):
    """A copy of the run folder ``cv`` whose runs say they were scored at ``threshold``."""
    shutil.copytree(cv, copy)
    report = json.loads((copy / "crossval.json").read_text())
    for results in report["results"].values():
        for r in results:
            r["run_dir"] = str(copy / Path(r["run_dir"]).relative_to(cv))
            config = json.loads((Path(r["run_dir"]) / "config.json").read_text())
            config["data"]["threshold"] = threshold
            (Path(r["run_dir"]) / "config.json").write_text(json.dumps(config))
    (copy / "crossval.json").write_text(json.dumps(report))


def test_compare_refuses_runs_scored_at_another_label_threshold(cv, tmp_path, caplog):
    other = tmp_path / "cv_t2"
    _relabel_threshold(cv, other, 2)
    out = tmp_path / "cmp"
    assert crossval_main(["--out", str(out), "--compare", str(cv), str(other),
                          "--bootstrap", "100"]) == 1
    assert "--compare: cv:tranet vs cv_t2:tranet: not the same protocol" in caplog.text
    assert "label threshold: 3 in cv:tranet, 2 in cv_t2:tranet" in caplog.text
    assert "--allow-protocol-mismatch" in caplog.text and not (out / "compare.md").exists()
    assert crossval_main(["--out", str(out), "--compare", str(cv), str(other), "--bootstrap",
                          "100", "--allow-protocol-mismatch"]) == 0
    assert "PROTOCOL MISMATCH" in (out / "compare.md").read_text()
    assert json.loads((out / "compare.json").read_text())["protocol_mismatch"] == [
        "label threshold: 3 in cv:tranet, 2 in cv_t2:tranet"]


def test_compare_several_seeds_a_side(data, cv, tmp_path):
    root, shards, manifest = data
    seed1 = tmp_path / "cv_s1"
    assert crossval_main(["--shards", str(shards), "--manifest", str(manifest), "--out",
                          str(seed1), "--seed", "1", "--folds", "1", *CV]) == 0
    out = tmp_path / "cmp"
    assert crossval_main(["--out", str(out), "--compare", str(cv), str(seed1),
                          "--bootstrap", "100"]) == 0
    assert "Recipe differences: seed: 0 in cv:tranet, 1 in cv_s1:tranet" in (
        out / "compare.md").read_text()
    assert crossval_main(["--out", str(out), "--compare", f"{cv},{seed1}", f"{seed1},{cv}",
                          "--bootstrap", "100"]) == 0
    payload = json.loads((out / "compare.json").read_text())
    diff = payload["difference"]
    assert diff["runs"] == [2, 2] and diff["seed_variance"] == {
        "included": True, "df": 2, "standard_error": diff["seed_variance"]["standard_error"]}
    assert diff["mean_f1"] == pytest.approx(0, abs=1e-12)
    text = (out / "compare.md").read_text()
    assert "training seeds: included (2 and 2 runs a side" in text
    assert "mean of 2 runs [lowest, highest run]" in text
    assert "[95% CI]: subject-level bootstrap" not in text     # no column is an interval now
    assert all(-1 <= v <= 1 for lo_hi in diff["f1_ci"] for v in lo_hi)


def test_evaluate_reports_intervals_per_subject_results_and_tuned_rows(data, tmp_path):
    root, shards, manifest = data
    run = tmp_path / "run"
    train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=2, out=str(run),
                      tune_threshold="val", **TRAIN))
    result = evaluate_checkpoint(run / "best.pt", shards, manifest, 2)
    model, meta = load_for_inference(run / "best.pt")
    spec = fold_spec(manifest, 2)
    per = result["metrics"]["per_subject"]
    assert per["subjects"] == spec.subjects["test"]
    for s, subject in enumerate(per["subjects"]):                # per-subject F1 = sklearn's
        frames = ShardFrames(open_shards(shards, [subject], ["left"], "t"), spec.au_ids, 3)
        images = torch.stack([torch.from_numpy(frames.image(i)) for i in range(len(frames))])
        with torch.no_grad():
            pred = (torch.sigmoid(model(to_model_input(images))) >= 0.5).numpy()
        for k in range(len(spec.au_ids)):
            assert per["f1"][s][k] == pytest.approx(
                f1_score(frames.labels[:, k], pred[:, k], zero_division=0))
    assert evaluate_main(["--checkpoint", str(run / "best.pt"), "--shards", str(shards),
                          "--manifest", str(manifest), "--out", str(tmp_path / "ev"),
                          "--bootstrap", "200"]) == 0
    text = (tmp_path / "ev" / "evaluation_test.md").read_text()
    for needle in ("F1 [95% CI]", "ROC-AUC", "| AP |", "F1 at tuned thresholds [95% CI]",
                   "Recipe: variant tranet; preset small", "tuned on the held-out validation",
                   "unit resampled: the subject (3 test subjects in all)",
                   "not covered: training-seed variance"):
        assert needle in text
    csv_text = (tmp_path / "ev" / "evaluation_test.csv").read_text()
    assert "# Recipe: variant tranet" in csv_text and "subject-level bootstrap" in csv_text
    assert (tmp_path / "ev" / "evaluation_test_subjects.png").stat().st_size > 1000


def test_cross_camera_on_a_tiny_twin_with_both_cameras(tmp_path):
    from pipeline.align import main as align_main
    from pipeline.twin import SynthConfig, synthesize

    synthesize(tmp_path / "release", SynthConfig.tiny(n_subjects=4, width=320, height=240))
    assert align_main(["--disfa-root", str(tmp_path / "release"), "--out", str(tmp_path / "sh"),
                       "--camera", "both", "--size", "48"]) == 0
    for subject in ("SN001", "SN002", "SN003", "SN004"):
        assert ShardReader(tmp_path / "sh" / shard_name(subject, "right")).attrs["config"][
            "landmark_source"] == "dlib"
    manifest = write_manifest(tmp_path / "folds.json", tmp_path / "sh",
                              [(["SN001"], ["SN002"], ["SN003", "SN004"])], 48)
    args = ["--shards", str(tmp_path / "sh"), "--manifest", str(manifest),
            "--out", str(tmp_path / "cv"), "--test-camera", "right", *CV]
    assert crossval_main(args) == 0
    table = (tmp_path / "cv" / "cameras_tranet.md").read_text()
    assert "F1 right [95% CI]" in table and "F1 left [95% CI]" in table
    assert "right - left [95% CI]" in table and "trained on the left camera" in table
    assert "sign-flip permutation test" in table and "2 test subjects in 1 fold(s)" in table
    assert (tmp_path / "cv" / "per_subject_tranet_right.png").is_file()
    report = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    for r in report["results"]["tranet"]:
        left, right = r["test"]["per_subject"], r["test_camera"]["per_subject"]
        assert left["subjects"] == right["subjects"]               # the same held-out people
        assert r["test_camera"]["camera"] == "right"
    assert crossval_main([*args, "--cameras", "left", "right"]) == 1   # trains on right too


def test_predict_decides_each_au_at_its_own_tuned_threshold():
    import pandas as pd

    from model.inference.postprocess import postprocess

    table = pd.DataFrame({"face_found": [1, 1, 0], "face_id": [0, 0, -1],
                          "AU01_p": [0.2, 0.5, np.nan], "AU02_p": [0.7, 0.5, np.nan]})
    decided = postprocess(table, [1, 2], np.array([0.3, 0.6]))
    assert decided["AU01_c"].tolist()[:2] == [0, 1] and decided["AU02_c"].tolist()[:2] == [1, 0]
    assert decided["AU01_c"].isna().tolist() == [False, False, True]

"""``model.demo --dataset bp4d`` (#26 item 9): the BP4D twin end to end (twin -> JAA alignment ->
kfold folds -> occurrence training -> evaluation on held-out twin subjects), at a tiny size. The
F1 target (>= 0.85) is for the full-size run (docs/bp4d.md, "Demo"), not checked here."""
from __future__ import annotations

import json

import h5py
import pytest
import torch

from model.demo import build_parser, main, run_demo
from pipeline.datasets.bp4d import facts as bp4d

TINY = ["--dataset", "bp4d", "--n-subjects", "4", "--frames", "48", "--k", "2",
        "--val-subjects", "1", "--epochs", "2", "--batches-per-epoch", "3", "--batch-size", "16",
        "--jobs", "1", "--threads", "1", "--train-jobs", "1", "--quiet"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_bp4d") / "demo"
    old = torch.get_num_threads()
    try:
        report = run_demo(build_parser().parse_args(["--out", str(out), *TINY]))
    finally:
        torch.set_num_threads(old)
    return out, report


def test_the_twin_has_both_release_variants(demo):
    out, report = demo
    truth = json.loads((out / "bp4d_twin" / "synth_truth.json").read_text())
    assert truth["layout"] == "bp4d" and truth["stand_ins"] == {}
    assert sorted(truth["subjects"]) == sorted(report["twin"]["subjects"]) and len(
        truth["subjects"]) == 4
    variants = {seq["variant"] for tasks in truth["subjects"].values() for seq in tasks.values()}
    assert variants == {"fera", "full"}
    assert list((out / "bp4d_twin" / "AUCoding").glob("*.csv"))
    assert list((out / "bp4d_twin" / "AUCoding" / "AU_OCC").glob("*.csv"))


def test_the_shards_are_bp4d_frontal_and_aligned_with_jaas_rule(demo):
    out, report = demo
    shards = sorted((out / "shards").glob("*.h5"))
    assert [p.name for p in shards] == sorted(f"{s}_frontal.h5" for s in report["twin"]["subjects"])
    with h5py.File(shards[0]) as f:
        assert f.attrs["dataset"] == "bp4d"
        config = json.loads(f.attrs["config"])
    assert config["alignment_rule"] == "jaa" and config["size"] == 64
    assert report["alignment_rule"] == "jaa" and report["dataset"] == "bp4d"
    # every CSV row with an image is kept: frames without landmarks fall back to the detector
    totals = report["alignment"]
    assert totals["frames_read"] == 4 * 48 and totals["dropped"] == {"no image file": 4}
    assert totals["kept"] == 4 * 48 - 4 and totals["from_detector"] > 0


def test_each_fold_is_trained_and_scored_on_its_held_out_subjects(demo):
    out, report = demo
    manifest = json.loads((out / "folds.json").read_text())
    assert manifest["scheme"] == "kfold" and len(manifest["folds"]) == 2
    for fold, result in zip(report["folds"], report["results"]):
        assert fold["val"] and not set(fold["test"]) & (set(fold["train"]) | set(fold["val"]))
        assert sorted(result["subjects"]) == sorted(fold["test"])
        assert (out / "runs" / f"fold{fold['fold']}" / "best.pt").is_file()
        metrics = result["metrics"]
        assert metrics["au_ids"] == list(bp4d.OCCURRENCE_AUS) and len(metrics["f1"]) == 12
        # the twin's 9 codes are masked: some AU scores fewer frames than the split has
        assert min(metrics["n_scored"]) < metrics["n_frames"] == fold["frames"]["test"]
    recorded = json.loads((out / "runs" / "fold1" / "config.json").read_text())
    assert recorded["train_config"]["task"] == "occurrence"
    assert report["task"] == "occurrence" and report["predict"] == []
    assert len(report["mean_over_folds"]["f1"]) == 12


def test_the_summary_and_demo_md_name_bp4d_and_its_12_aus(demo):
    out, report = demo
    saved = json.loads((out / "demo_summary.json").read_text())
    assert saved["settings"]["dataset"] == "bp4d" and saved["au_ids"] == list(bp4d.OCCURRENCE_AUS)
    assert set(saved["wall_seconds"]) >= {"synthesize", "align", "folds", "total"}
    text = (out / "demo.md").read_text()
    assert text.startswith("# Demo on the synthetic BP4D twin") and "Alignment: jaa" in text
    header = next(line for line in text.splitlines() if line.startswith("| fold |"))
    assert all(f"| AU{au} |" in header for au in bp4d.OCCURRENCE_AUS)
    settings = json.loads((out / "demo_settings.json").read_text())
    assert settings["dataset"] == "bp4d" and settings["frame_height"] > settings["frame_width"]


def test_the_folder_of_a_bp4d_demo_is_not_reused_for_disfa(demo):
    out, _ = demo
    before = (out / "demo_summary.json").read_text()
    args = build_parser().parse_args(["--out", str(out), "--n-subjects", "4", "--frames", "48",
                                      "--k", "2", "--val-subjects", "1", "--quiet"])
    with pytest.raises(ValueError, match=r"--dataset 'disfa' \(it has 'bp4d'\).*--fresh"):
        run_demo(args)
    assert (out / "demo_summary.json").read_text() == before


@pytest.mark.parametrize("extra,named", [
    (["--predict-subjects", "2"], "--predict-subjects"),
    (["--task", "both"], "--task both"),
    (["--task", "intensity"], "--task intensity"),
    (["--n-subjects", "42"], "--n-subjects 42"),
    (["--frames", "10"], "--frames"),
])
def test_options_that_do_not_apply_to_bp4d_are_refused_in_one_line(tmp_path, capsys, extra,
                                                                   named):
    out = tmp_path / "demo"
    assert main(["--dataset", "bp4d", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_the_disfa_demo_keeps_its_defaults():
    from model.demo_datasets import resolve_dataset_options

    args = build_parser().parse_args(["--out", "x"])
    resolve_dataset_options(args)
    assert args.dataset == "disfa"
    assert (args.n_subjects, args.frames, args.frame_width, args.frame_height) == (27, 200, 320,
                                                                                 240)
    assert (args.task, args.predict_subjects) == ("both", 3)
    from model.engine.recipes import load_recipe

    recipe = load_recipe("cpu-demo").settings  # the DISFA demo trains by its recipe
    assert (args.epochs, args.patience) == (recipe["epochs"], recipe["patience"])
    bp4d_args = build_parser().parse_args(["--out", "x", "--dataset", "bp4d"])
    resolve_dataset_options(bp4d_args)
    assert (bp4d_args.epochs, bp4d_args.patience) == (64, 16)

"""What is reported follows the task: a --task intensity run (its occurrence head never trains)
shows no F1, Table 1 or AUxx_c/AUxx_p; every report names the task and its heads; the paper's
protocol is stated as the paper states it."""
import json
import logging

import pandas as pd
import pytest

from model.engine.checkpoint import load_checkpoint, save_checkpoint
from model.engine.config import protocol_note
from model.evaluate import main as evaluate_main
from model.train import train
from trainer_fixtures import intensity_config, make_intensity_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One tiny run per task on the same four subjects (2 train, 1 val, 1 test)."""
    root = tmp_path_factory.mktemp("tasks")
    data = make_intensity_dataset(root, frames=24, size=32)
    summaries = {}
    for task in ("intensity", "occurrence"):
        handler, logger = _Lines(), logging.getLogger("model.train")
        level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        try:
            summaries[task] = train(intensity_config(data, root / task, task=task, epochs=1,
                                                     batches_per_epoch=2, plot_every=100))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
        EPOCH_LINES[task] = [m for m in handler.messages if m.startswith("epoch ")]
    return data, summaries


EPOCH_LINES: dict[str, list[str]] = {}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_epoch_lines_show_only_the_trained_heads_scores(runs):
    assert EPOCH_LINES["intensity"] and EPOCH_LINES["occurrence"]
    assert all("ICC" in line and "F1" not in line for line in EPOCH_LINES["intensity"])
    assert all("F1" in line and "ICC" not in line for line in EPOCH_LINES["occurrence"])


def test_intensity_run_writes_no_occurrence_numbers(runs):
    _, summaries = runs
    summary = summaries["intensity"]
    run_dir = summary["run_dir"]
    recorded = json.loads(open(f"{run_dir}/results.json").read())
    assert recorded["task"] == "intensity" and recorded["trained_heads"] == ["intensity"]
    assert "test" not in recorded and "test_intensity" in recorded
    text = open(f"{run_dir}/results.md").read()
    assert "Task: intensity; trained heads: intensity" in text
    assert "ICC(3,1)" in text and "| F1 |" not in text
    header = open(f"{run_dir}/metrics.csv").readline().strip().split(",")
    assert "task" in header and "mean_icc" in header
    assert not any(c.startswith(("f1_", "acc_", "mean_f1")) for c in header), header
    assert json.loads(open(f"{run_dir}/metrics.json").read())["task"] == "intensity"
    import os
    assert os.path.isfile(f"{run_dir}/loss.png") and not os.path.exists(f"{run_dir}/mean_f1.png")
    occurrence = json.loads(open(f"{summaries['occurrence']['run_dir']}/results.json").read())
    assert occurrence["trained_heads"] == ["occurrence"] and "test_intensity" not in occurrence
    assert "| F1 |" in open(f"{summaries['occurrence']['run_dir']}/results.md").read()


def test_evaluate_reports_only_the_trained_heads(runs, tmp_path, capsys):
    (shards, manifest), summaries = runs
    out = tmp_path / "intensity"
    assert evaluate_main(["--checkpoint", f"{summaries['intensity']['run_dir']}/best.pt",
                          "--shards", str(shards), "--manifest", str(manifest), "--out", str(out),
                          "--bootstrap", "20"]) == 0
    printed = capsys.readouterr().out
    assert "Task: intensity" in printed and "F1 [95% CI]" not in printed
    assert not (out / "evaluation_test.md").exists() and not (out / "evaluation_test.csv").exists()
    report = json.loads((out / "evaluation_test.json").read_text())
    assert report["task"] == "intensity" and report["trained_heads"] == ["intensity"]
    assert "metrics" not in report["results"][0] and "intensity" in report["results"][0]
    assert "mean_f1" not in json.dumps(report)
    assert "Task: intensity" in (out / "evaluation_test_intensity.md").read_text()
    assert "Task: intensity" in (out / "evaluation_test_intensity.csv").read_text()
    table = pd.read_csv(out / "evaluation_test_intensity.csv", comment="#")   # numbers, flagged
    assert list(table["metric"]) == ["icc", "pearson", "mae"] and table["ci_degenerate"].all()
    assert all(pd.api.types.is_float_dtype(table[c]) for c in table.columns[2:-1])
    assert "CI DEGENERATE: fewer than 3 test subjects (fold 1: 1)" in \
        (out / "evaluation_test_intensity.csv").read_text()   # one test subject

    out = tmp_path / "occurrence"
    assert evaluate_main(["--checkpoint", f"{summaries['occurrence']['run_dir']}/best.pt",
                          "--shards", str(shards), "--manifest", str(manifest), "--out", str(out),
                          "--bootstrap", "0"]) == 0
    assert "Task: occurrence" in (out / "evaluation_test.md").read_text()
    assert "Task: occurrence" in (out / "evaluation_test.csv").read_text()
    assert not (out / "evaluation_test_intensity.md").exists()
    assert json.loads((out / "evaluation_test.json").read_text())["task"] == "occurrence"


def test_evaluate_refuses_to_mix_tasks(runs, tmp_path, capsys):
    (shards, manifest), summaries = runs
    code = evaluate_main(["--checkpoint", *[f"{s['run_dir']}/best.pt" for s in
                                            summaries.values()], "--fold", "1", "1",
                          "--shards", str(shards), "--manifest", str(manifest),
                          "--out", str(tmp_path / "mixed"), "--bootstrap", "0"])
    assert code != 0 and "different tasks" in capsys.readouterr().err


def test_crossval_of_an_intensity_run_has_no_table1(runs, tmp_path):
    from argparse import Namespace

    from model.engine.config import TrainConfig
    from model.engine.cross_validation import write_reports

    (shards, manifest), summaries = runs
    base = TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(tmp_path),
                       task="intensity")
    report = write_reports(tmp_path, {"tranet": [summaries["intensity"]]}, [], base,
                           Namespace(ablations=False), 0, 0)
    assert not (tmp_path / "table1.md").exists() and not (tmp_path / "table1.csv").exists()
    assert "mean_over_folds" not in report and not list(tmp_path.glob("per_subject_*.png"))
    assert report["task"] == "intensity" and report["trained_heads"] == ["intensity"]
    assert json.loads((tmp_path / "crossval.json").read_text())["task"] == "intensity"
    for name in ("intensity.md", "intensity.csv"):
        assert "Task: intensity; trained heads: intensity" in (tmp_path / name).read_text()

    occurrence = tmp_path / "occ"
    occurrence.mkdir()
    base = TrainConfig(**{**base.__dict__, "task": "occurrence", "out": str(occurrence)})
    report = write_reports(occurrence, {"tranet": [summaries["occurrence"]]}, [], base,
                           Namespace(ablations=False), 0, 0)
    assert (occurrence / "table1.md").exists() and not (occurrence / "intensity.md").exists()
    assert "Task: occurrence" in (occurrence / "table1.csv").read_text()


def test_predict_writes_no_occurrence_columns_for_an_intensity_checkpoint(tmp_path):
    from model.predict import main
    from model.benchmarks.synthetic import make_face_video

    torch_ckpt = _intensity_only_checkpoint(tmp_path)
    video = make_face_video(tmp_path / "clip.avi", 3, size=(480, 320), fps=20.0,
                            face_present=[True, False, True])
    out = tmp_path / "out"
    assert main(["--checkpoint", str(torch_ckpt), "--video", str(video), "--out", str(out),
                 "--plot", "--no-progress"]) == 0
    columns = list(pd.read_csv(out / "clip.csv").columns)
    assert any(c.endswith("_r") for c in columns)
    assert not any(c.endswith(("_c", "_p")) for c in columns), columns
    side = json.loads(next(out.glob("clip*.json")).read_text())
    assert side["task"] == "intensity" and side["trained_heads"] == ["intensity"]
    assert (out / "clip_timeline.png").is_file()


def _intensity_only_checkpoint(tmp_path):
    """test_predict_intensity's tiny model with both heads, recorded as a --task intensity run."""
    import torch

    from model.nets.regions import ALL_AUS
    from model.nets.tranet import TRANetConfig, build_model
    from test_predict import AUS, NOSE, SIZE, _save_tiny

    torch.manual_seed(1)
    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE), intensity_aus=ALL_AUS)
    path = _save_tiny(tmp_path / "both.pt", build_model(config).eval(), config, None)
    state = load_checkpoint(path)
    state["train_config"] = {**state.get("train_config", {}), "task": "intensity"}
    return save_checkpoint(tmp_path / "intensity.pt", state)


def test_demo_report_of_an_intensity_run_has_no_f1(runs, capsys):
    from model.demo import demo_markdown, print_occurrence_summary

    _, summaries = runs
    intensity = summaries["intensity"]["test_intensity"]
    report = {"task": "intensity", "trained_heads": ["intensity"],
              "au_ids": summaries["intensity"]["au_ids"],
              "protocol": protocol_note("val", 3), "mean_over_folds": None, "predict": [],
              "results": [{"fold": 1, "recipe": "r", "intensity": intensity}],
              "wall_seconds": {"total": 1.0}, "threads": 1, "runs": []}
    text = demo_markdown(report)
    assert "Task: intensity; trained heads: intensity" in text and "ICC(3,1)" in text
    assert "F1 [95% CI]" not in text and "| F1" not in text
    print_occurrence_summary(report)
    assert "mean F1" not in capsys.readouterr().out


def test_the_paper_protocol_is_stated_as_the_paper_states_it():
    from model.engine.recipes import load_recipe
    from model.evaluation.paper_tables import PAPER_PROTOCOL, PAPER_THRESHOLD

    note = protocol_note("test", 3)
    assert "C-level (the paper does not give C)" in note and "FACS intensity >= 3" in note
    assert "C-level (the paper does not give C)" in PAPER_PROTOCOL
    # the paper recipe trains at the threshold of the Table 1 numbers it is compared with
    assert load_recipe("paper").settings["threshold"] == PAPER_THRESHOLD == 2


def test_tuning_thresholds_of_an_untrained_head_is_refused(runs, tmp_path):
    with pytest.raises(ValueError, match="--task intensity trains no occurrence head"):
        intensity_config(runs[0], tmp_path, task="intensity", tune_threshold="val")


def test_compare_of_intensity_runs_names_the_missing_occurrence_head(runs, tmp_path):
    from model.engine.cross_validation import write_comparison

    _, summaries = runs
    per_variant = {"tranet": [summaries["intensity"]], "senet50": [summaries["intensity"]]}
    with pytest.raises(ValueError, match="no trained occurrence head \\(task intensity\\)"):
        write_comparison(tmp_path, ["tranet", "senet50"], per_variant, 20, 0)
    assert not (tmp_path / "compare.md").exists()

"""model.evaluate and model.crossval on tiny shards: numbers, tables, protocol labels, refusals."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from model.engine.checkpoint import CheckpointError, load_for_inference
from model.crossval import main as crossval_main
from model.engine.data import DataError, ShardFrames, fold_spec, open_shards
from model.evaluate import evaluate_checkpoint, main as evaluate_main
from model.train import TrainConfig, train
from model.nets.transforms import to_model_input
from trainer_fixtures import make_dataset, write_manifest

TRAIN = dict(preset="small", epochs=1, batches_per_epoch=2, batch_size=8, workers=0, quiet=True,
             lr=0.05, eval_batch_size=32, plot_every=100)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    shards, _ = make_dataset(root, subjects=("SN001", "SN002", "SN003", "SN004", "SN005"),
                             frames=24, size=32)
    manifest = write_manifest(root / "folds.json", shards, [
        (["SN001", "SN002"], ["SN003"], ["SN004", "SN005"]),
        (["SN004", "SN005"], ["SN003"], ["SN001", "SN002"])], 32)
    ckpts = []
    for fold in (1, 2):
        out = root / f"fold{fold}"
        train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=fold, out=str(out), **TRAIN))
        ckpts.append(out / "best.pt")
    return root, shards, manifest, ckpts


def test_checkpoint_metrics_match_sklearn_on_all_test_frames(runs):
    root, shards, manifest, ckpts = runs
    result = evaluate_checkpoint(ckpts[0], shards, manifest, 1)
    model, meta = load_for_inference(ckpts[0])
    spec = fold_spec(manifest, 1)
    frames = ShardFrames(open_shards(shards, spec.subjects["test"], ["left"], "t"), spec.au_ids,
                         meta["threshold"])
    images = torch.stack([torch.from_numpy(frames.image(i)) for i in range(len(frames))])
    with torch.no_grad():
        pred = (torch.sigmoid(model(to_model_input(images))) >= 0.5).numpy().astype(int)
    m = result["metrics"]
    assert m["n_frames"] == len(frames) == 48
    for k in range(len(spec.au_ids)):
        assert m["f1"][k] == pytest.approx(f1_score(frames.labels[:, k], pred[:, k], zero_division=0))
        assert m["accuracy"][k] == pytest.approx(accuracy_score(frames.labels[:, k], pred[:, k]))
    assert result["threshold"] == 3 and "validation subjects" in result["protocol"]
    # the training run's own final test evaluation agrees
    assert json.loads((root / "fold1" / "results.json").read_text())["test"]["f1"] == pytest.approx(m["f1"])


def test_cli_averages_folds_and_labels_the_protocol(runs, tmp_path, capsys):
    root, shards, manifest, ckpts = runs
    assert evaluate_main(["--checkpoint", *map(str, ckpts), "--shards", str(shards), "--manifest",
                          str(manifest), "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "evaluation_test.json").read_text())
    f1s = [r["metrics"]["mean_f1"] for r in summary["results"]]
    assert [r["fold"] for r in summary["results"]] == [1, 2]
    assert summary["mean_over_folds"]["mean_f1"] == pytest.approx(np.mean(f1s))
    text = (tmp_path / "evaluation_test.md").read_text()
    assert "intensity >= 3" in text and "sigmoid >= 0.5" in text and "| mean | F1 [95% CI] |" in text
    assert "validation subjects" in (tmp_path / "evaluation_test.csv").read_text()
    assert "| mean | F1 [95% CI] |" in capsys.readouterr().out


def test_a_multi_fold_evaluation_goes_beside_the_fold_folders_with_degenerate_cis(runs, capsys):
    import pandas as pd

    root, shards, manifest, ckpts = runs
    args = ["--checkpoint", *map(str, ckpts), "--shards", str(shards), "--manifest",
            str(manifest), "--bootstrap", "50"]
    assert evaluate_main(args) == 0
    assert (root / "evaluation_test.csv").exists()             # the folder of both folds' runs
    assert not (ckpts[0].parent / "evaluation_test.json").exists()
    table = pd.read_csv(root / "evaluation_test.csv", comment="#")
    assert list(table.columns[:4]) == ["fold", "metric", "au1", "au1_ci_low"]
    assert {"f1", "accuracy", "roc_auc", "ap"} <= set(table["metric"])
    for column in [c for c in table.columns if c.startswith(("au", "avg"))]:
        assert pd.api.types.is_float_dtype(table[column]), column
    f1 = table[table["metric"] == "f1"]
    assert f1["ci_degenerate"].all()                           # two test subjects a fold
    assert "CI DEGENERATE: fewer than 3 test subjects (fold 1: 2, fold 2: 2)" in \
        (root / "evaluation_test.md").read_text()
    assert evaluate_main(args) == 0                            # the same checkpoints: replaced
    one = ["--checkpoint", str(ckpts[0]), "--fold", "1", "--out", str(root), *args[3:]]
    assert evaluate_main(one) == 2                             # others: refused, not overwritten
    assert "holds an evaluation of other checkpoints" in capsys.readouterr().err


def test_evaluate_refuses_mismatches(runs, tmp_path, capsys):
    root, shards, manifest, ckpts = runs
    with pytest.raises(CheckpointError, match="variant 'tranet', not 'senet50'"):
        evaluate_checkpoint(ckpts[0], shards, manifest, 1, variant="senet50")
    other = write_manifest(tmp_path / "aus.json", shards, [(["SN001"], [], ["SN004"])], 32, au_ids=[1, 2])
    with pytest.raises(CheckpointError, match="predicts AUs"):
        evaluate_checkpoint(ckpts[0], shards, other, 1)
    missing = write_manifest(tmp_path / "m.json", shards, [(["SN001"], [], ["SN011"])], 32)
    with pytest.raises(DataError, match="SN011_left.h5 does not exist"):
        evaluate_checkpoint(ckpts[0], shards, missing, 1)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpts[0].read_bytes()[:1000])
    assert evaluate_main(["--checkpoint", str(broken), "--shards", str(shards), "--manifest",
                          str(manifest), "--fold", "1", "--out", str(tmp_path)]) == 2
    assert "broken.pt: not a readable checkpoint" in capsys.readouterr().err


def test_crossval_tables_beside_the_paper_and_reruns_resume(runs, tmp_path, capsys, caplog):
    root, shards, manifest, _ = runs
    args = ["--shards", str(shards), "--manifest", str(manifest), "--out", str(tmp_path / "cv"),
            "--variants", "senet50", "tranet", "--select-on", "test", "--preset", "small",
            "--epochs", "1", "--batches-per-epoch", "2", "--batch-size", "8", "--workers", "0",
            "--eval-batch-size", "32", "--quiet", "--lr", "0.05", "--plot-every", "100"]
    assert crossval_main(args) == 0
    t1 = (tmp_path / "cv" / "table1.md").read_text()
    assert "56.9" in t1 and "95.9" in t1                        # the paper's TRA column
    assert "TEST subjects, trained on every other subject (the paper's protocol" in t1
    assert "intensity >= 2" in t1                                 # the paper's label threshold
    assert "C-level (the paper does not give C)" in t1 and "FACS intensity >= 3" in t1
    assert "NOT like for like" in t1 and "F1 paper (>= 2, other labels)" in t1  # ours at >= 3
    assert "Task: occurrence; trained heads: occurrence" in t1
    t2 = (tmp_path / "cv" / "table2.csv").read_text()
    assert "SENet-50,ours" in t2 and "SENet-50,paper" in t2 and "47.0" in t2
    report = json.loads((tmp_path / "cv" / "crossval.json").read_text())
    assert set(report["mean_over_folds"]) == {"senet50", "tranet"}
    mtime = (tmp_path / "cv" / "tranet" / "fold1" / "best.pt").stat().st_mtime_ns
    assert crossval_main(args) == 0                               # finished runs are reused
    assert (tmp_path / "cv" / "tranet" / "fold1" / "best.pt").stat().st_mtime_ns == mtime
    assert "Table 1" in capsys.readouterr().out

    # other settings: refused, naming them, before anything trains or a table is rewritten
    assert crossval_main(args + ["--threshold", "2", "--lr", "0.01"]) == 1
    err = caplog.text
    assert "--threshold 2 (run has the manifest's threshold)" in err and "--lr 0.01 (run has 0.05)" in err
    assert "--fresh" in err
    assert (tmp_path / "cv" / "table1.md").read_text() == t1
    assert (tmp_path / "cv" / "tranet" / "fold1" / "best.pt").stat().st_mtime_ns == mtime
    # --fresh redoes them
    assert crossval_main(args + ["--threshold", "2", "--variants", "tranet", "--fresh"]) == 0
    redone = json.loads((tmp_path / "cv" / "tranet" / "fold1" / "config.json").read_text())
    assert redone["train_config"]["threshold"] == 2
    like = (tmp_path / "cv" / "table1.md").read_text()
    assert "here FACS intensity >= 2" in like and "(like for like on labels)" in like
    assert "NOT like for like" not in like and "| F1 paper (>= 2) |" in like

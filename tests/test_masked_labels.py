"""#26, the model side: "not coded" labels (NaN) are masked in the loss, the per-AU weights and
every metric; any dataset's shards train (one dataset a run unless --mix-datasets); BP4D's AUs
have face regions; checkpoints and cards record the dataset, its label rule and the regions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset_shards import make_dataset_folds, write_dataset_shard
from model.engine.checkpoint import CheckpointError, load_checkpoint, load_for_inference
from model.engine.data import DataError
from model.engine.losses import branch_bce_loss
from model.engine.sampler import au_weights_from_labels, frame_weights
from model.evaluation.metrics import MetricAccumulator
from model.evaluation.ranking import roc_auc
from model.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAN = float("nan")


def _config(data, out, **kw) -> TrainConfig:
    shards, manifest = data
    base = dict(shards=str(shards), manifest=str(manifest), fold=1, out=str(out), preset="small",
                epochs=1, batches_per_epoch=2, batch_size=8, workers=0, quiet=True, lr=0.05,
                eval_batch_size=32)
    base.update(kw)
    return TrainConfig(**base)


# -- the loss, the weights, the metrics ---------------------------------------------------------

def test_the_loss_is_the_mean_over_coded_entries_of_each_group():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    targets = torch.tensor([[1, 0, NAN], [0, NAN, 1], [NAN, 1, 0], [1, 1, 1], [0, 0, NAN],
                            [1, NAN, NAN]])
    groups = [[0, 1], [2]]
    loss = branch_bce_loss(logits, targets, groups, masked=True)
    expected = 0.0
    for group in groups:
        coded = ~torch.isnan(targets[:, group])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits[:, group][coded], targets[:, group][coded])
        expected += float(bce)
    assert torch.isfinite(loss)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    # fully coded labels: the masked loss is the unmasked one
    full = torch.nan_to_num(targets, nan=0.0)
    assert float(branch_bce_loss(logits, full, groups, masked=True)) == pytest.approx(
        float(branch_bce_loss(logits, full, groups)), rel=1e-6)


def test_per_au_weights_count_only_the_coded_frames():
    labels = np.array([[1, 0], [0, NAN], [0, NAN], [NAN, 1], [0, 0], [1, NAN]], np.float32)
    weights = au_weights_from_labels(labels)
    # AU a: 2 positives in 5 coded frames; AU b: 1 in 3
    raw = np.array([5 / 2, 3 / 1])
    np.testing.assert_allclose(weights, raw / raw.sum() * 2)
    # a not-coded label is no positive when drawing frames
    np.testing.assert_allclose(frame_weights(labels, weights),
                               np.maximum(1.0, np.nan_to_num(labels) @ weights))


def test_metrics_pool_only_coded_frames_and_say_how_many():
    logits = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    targets = torch.tensor([[1.0, NAN], [0.0, NAN], [NAN, 0.0], [0.0, 1.0]])
    acc = MetricAccumulator([1, 7], keep_scores=True)
    acc.update(logits, targets)
    m = acc.compute()
    assert m.n_scored == [3, 2]
    assert m.counts[0] == [1, 0, 2, 0]   # AU1: TP, FP, TN, FN over its 3 coded frames
    assert m.counts[1] == [0, 0, 1, 1]   # AU7: a TN and a FN over its 2 coded frames
    assert m.f1[0] == 1.0 and m.accuracy[0] == 1.0
    assert m.auc[0] == 1.0  # ranking metrics skip the uncoded frame too
    assert m.as_dict()["n_scored"] == [3, 2]


def test_ranking_metrics_skip_uncoded_frames():
    from model.evaluation.ranking import per_au

    # read as negatives, the two uncoded frames would outrank the positive (AUC 1/3)
    scores = np.array([[0.9], [0.1], [0.95], [0.97]])
    labels = np.array([[1.0], [0.0], [NAN], [NAN]], np.float32)
    assert per_au(roc_auc, scores, labels) == [1.0]


# -- any dataset's shards ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bp4d_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bp4d")
    data = make_dataset_folds(root, "bp4d", ["F001", "F002", "M001", "F003", "M002"],
                              uncoded=0.2)
    train(_config(data, root / "run"))
    return data, root / "run"


def test_bp4d_shards_train_with_their_uncoded_labels_masked(bp4d_run):
    (shards, manifest), run = bp4d_run
    state = load_checkpoint(run / "best.pt")
    assert state["data"]["au_ids"] == [1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24]
    assert all(np.isfinite(h["train_loss"]) for h in state["history"])
    assert state["data"]["dataset"] == "bp4d" and state["data"]["datasets"] == ["bp4d"]
    assert "occurrence codes" in state["data"]["label_rules"]["bp4d"]
    assert state["protocol"].startswith("labels: BP4D: the release's occurrence codes")
    assert state["data"]["regions"]["7"] == "upper" and state["data"]["regions"]["10"] == "middle"
    assert state["data"]["regions"]["14"] == "lower" and state["data"]["regions"]["24"] == "lower"
    card = state["model_card"]["data"]
    assert card["dataset"] == "BP4D" and "BP4D" in card["labels"]
    assert (run / "MODEL_CARD.md").read_text().count("BP4D") >= 1
    # the test metrics scored each AU on its coded frames only (20 % of entries are 9s)
    summary = __import__("json").loads((run / "results.json").read_text())
    scored = summary["test"]["n_scored"]
    assert len(scored) == 12 and max(scored) <= 24 and min(scored) < 24
    assert "| Frames scored | " + " | ".join(map(str, scored)) in (run / "results.md").read_text()


def test_a_checkpoint_whose_regions_moved_is_refused(bp4d_run, tmp_path):
    _, run = bp4d_run
    state = load_checkpoint(run / "best.pt")
    load_for_inference(run / "best.pt", state=state)  # as recorded: loads
    state["data"]["regions"]["10"] = "lower"
    with pytest.raises(CheckpointError, match="AU10 lower -> middle"):
        load_for_inference(run / "best.pt", state=state)


def test_shards_of_two_datasets_are_refused_unless_asked(tmp_path):
    data = make_dataset_folds(tmp_path, "disfa", ["SN001", "SN002", "SN003", "SN004"])
    shards, _ = data
    # SN005 is a DISFA+ shard in the DISFA folder (same camera name, same threshold)
    write_dataset_shard(shards, "disfa+", "SN005", seed=9, camera="left", threshold=3)
    from dataset_shards import write_dataset_manifest
    manifest = write_dataset_manifest(tmp_path / "mixed.json", "disfa", ["SN001", "SN005"],
                                      ["SN003"], ["SN004"])
    with pytest.raises(DataError, match="2 datasets.*--mix-datasets"):
        train(_config((shards, manifest), tmp_path / "run"))
    summary = train(_config((shards, manifest), tmp_path / "mixed", mix_datasets=True))
    assert summary["test"]["n_frames"] == 24
    state = load_checkpoint(tmp_path / "mixed" / "best.pt")
    assert state["data"]["dataset"] == "mixed"
    assert state["data"]["datasets"] == ["disfa", "disfa+"]


def test_a_manifest_of_another_dataset_than_its_shards_is_refused(tmp_path):
    shards, _ = make_dataset_folds(tmp_path, "disfa+", ["SN001", "SN002", "SN003", "SN004"])
    from dataset_shards import write_dataset_manifest
    manifest = write_dataset_manifest(tmp_path / "wrong.json", "disfa", ["SN001", "SN002"],
                                      ["SN003"], ["SN004"], threshold=2)
    with pytest.raises(DataError, match="manifest .* is of disfa"):
        train(_config((shards, manifest), tmp_path / "run", cameras=["frontal"]))


def test_bp4d_aus_have_regions_by_facs_anatomy():
    from model.nets.regions import KNOWN_AUS
    from model.nets.tranet import TRANetConfig, build_model
    from pipeline.datasets.registry import KNOWN_AUS as REGISTRY_AUS

    assert KNOWN_AUS == REGISTRY_AUS
    bp4d = (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
    model = build_model(TRANetConfig(preset="small", au_ids=bp4d, image_size=32))
    assert [[bp4d[i] for i in g] for g in model.branch_groups] == [
        [1, 2, 4, 7], [6, 10], [12, 14, 15, 17, 23, 24]]


def test_intensity_metrics_drop_uncoded_frames():
    from model.evaluation.intensity import IntensityAccumulator

    predicted = torch.tensor([[1.0, 2.0], [3.0, 4.0], [2.0, 2.0], [0.0, 5.0]])
    coded = torch.tensor([[1.0, NAN], [3.0, 3.0], [NAN, 2.0], [1.0, 5.0]])
    acc = IntensityAccumulator([6, 10])
    acc.update(predicted, coded)
    m = acc.compute()
    assert acc.sums[:, 0].tolist() == [3, 3]  # frames per AU: its coded ones
    assert m.mae == pytest.approx([1 / 3, 1 / 3])  # AU6: |0|,|0|,|1|; AU10: |1|,|0|,|0|


def test_predict_writes_the_columns_of_the_checkpoints_au_set(bp4d_run):
    from model.benchmarks.synthetic import astronaut_head
    from model.inference.api import AUDetector

    _, run = bp4d_run
    detector = AUDetector(run / "best.pt")
    table = detector.predict_frame(astronaut_head())
    names = ["AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU14", "AU15", "AU17",
             "AU23", "AU24"]
    assert detector.au_ids == [int(n[2:]) for n in names]
    assert [c for c in table.columns if c.endswith("_p")] == [f"{n}_p" for n in names]


def test_a_manifest_names_its_dataset_and_only_that_datasets_aus(tmp_path):
    import json

    from model.engine.data import fold_spec
    from dataset_shards import write_dataset_manifest

    path = write_dataset_manifest(tmp_path / "bp4d.json", "bp4d", ["F001"], [], ["M001"])
    spec = fold_spec(path, 1)
    assert spec.dataset == "bp4d" and spec.au_ids == (1, 2, 4, 6, 7, 10, 12, 14, 15, 17, 23, 24)
    manifest = json.loads(path.read_text())
    (tmp_path / "unknown.json").write_text(json.dumps({**manifest, "dataset": "ck+"}))
    with pytest.raises(DataError, match="unknown.json: unknown dataset 'ck\\+'"):
        fold_spec(tmp_path / "unknown.json", 1)
    (tmp_path / "disfa_aus.json").write_text(json.dumps({**manifest, "au_ids": [1, 9, 25]}))
    with pytest.raises(DataError, match=r"AUs \[9, 25\] are not BP4D AUs"):
        fold_spec(tmp_path / "disfa_aus.json", 1)


def test_image_folder_datasets_read_their_frontal_shards_and_mix_is_an_option():
    from model.engine.dataset_checks import dataset_cameras
    from model.train import build_parser

    assert dataset_cameras(["left"], "bp4d", "ctx") == ["frontal"]
    assert dataset_cameras(["left", "right"], "disfa", "ctx") == ["left", "right"]
    with pytest.raises(DataError, match="BP4D has one camera"):
        dataset_cameras(["right"], "bp4d", "ctx")
    args = build_parser().parse_args(["--shards", "s", "--manifest", "m", "--fold", "1",
                                      "--out", "o", "--mix-datasets", "--cameras", "frontal"])
    assert args.mix_datasets and args.cameras == ["frontal"]


@pytest.mark.parametrize("dataset", ["disfa", "bp4d"])
def test_crossval_tables_show_the_papers_disfa_numbers_only_beside_disfa_runs(tmp_path, dataset):
    import json

    from model.engine.crossval_reports import header_lines, table1_rows, table2_rows
    from model.evaluation.metrics import metrics_from_counts

    aus = [1, 2, 4, 6]
    (tmp_path / "config.json").write_text(json.dumps({"data": {"dataset": dataset,
                                                               "threshold": 3}}))
    counts = np.tile([[5, 2, 20, 3]], (len(aus), 1))
    results = [{"run_dir": str(tmp_path), "fold": 1, "variant": "tranet",
                "test": metrics_from_counts(counts, aus).as_dict()}]
    header, rows, _ = table1_rows(results, 0, 0)
    lines = header_lines({"tranet": results}, "ours", None, 0, 0)
    _, rows2, _ = table2_rows({"tranet": results}, 0, 0)
    paper = any("paper" in h for h in header)
    assert paper == (dataset == "disfa")
    assert any(r[1] == "paper" for r in rows2) == (dataset == "disfa")
    assert any(line.startswith("Paper: not shown") for line in lines) == (dataset != "disfa")

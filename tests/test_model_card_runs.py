"""Model cards written by training: the shards' data source reaches every checkpoint's card,
best.pt's card takes the held-out test, MODEL_CARD.md lies beside it, and --all-subjects says
where its metrics come from (a crossval of the same recipe, or none)."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from _disfa_fixtures import write_release
from model.cards import CARD_KEY, TWIN_WARNING, card_of
from model.engine.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from model.engine.config import TrainConfig
from model.engine.data import open_shards, shard_origin
from model.train import main, train
from pipeline.align import AlignConfig, run_align
from pipeline.origin import data_origin
from pipeline.shards import ShardReader
from pipeline.twin import TRUTH_JSON
from trainer_fixtures import write_manifest, write_subject

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread

SUBJECTS = ["SN001", "SN002", "SN003", "SN004"]
TINY = dict(preset="small", epochs=1, batches_per_epoch=2, batch_size=4, workers=0, quiet=True,
            eval_batch_size=32, plot_every=100)
TINY_ARGS = ["--preset", "small", "--batches-per-epoch", "2", "--batch-size", "4", "--workers",
             "0", "--quiet", "--eval-batch-size", "32"]


def _aligned(base, twin: bool):
    """Shards aligned by pipeline.align from a fake release root; ``twin``: the root holds the
    synthetic twin's marker file, as pipeline.synth writes it."""
    rel = write_release(base / "root", {s: 10 for s in SUBJECTS}, width=64, height=48)
    if twin:
        (rel.root / TRUTH_JSON).write_text("{}")
    shards = base / "shards"
    run_align(AlignConfig(disfa_root=str(rel.root), out=str(shards), size=32, encoding="raw"))
    manifest = write_manifest(base / "folds.json", shards,
                              [(SUBJECTS[:2], SUBJECTS[2:3], SUBJECTS[3:])], 32)
    return shards, manifest


@pytest.fixture(scope="module")
def twin_data(tmp_path_factory):
    return _aligned(tmp_path_factory.mktemp("twin"), twin=True)


@pytest.fixture(scope="module")
def release_data(tmp_path_factory):
    return _aligned(tmp_path_factory.mktemp("release"), twin=False)


@pytest.fixture(scope="module")
def twin_run(twin_data, tmp_path_factory):
    """One short run on the twin shards, laid out as fold 1 of a crossval folder."""
    cv = tmp_path_factory.mktemp("cv")
    out = cv / "tranet" / "fold1"
    return out, train(_config(twin_data, out, epochs=2, seed=3))


def _config(data, out, **kw) -> TrainConfig:
    shards, manifest = data
    return TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(out),
                       **{**TINY, **kw})


def test_align_records_where_the_frames_came_from(twin_data, release_data, tmp_path):
    assert data_origin(tmp_path)["data_source"] == "release"
    (tmp_path / TRUTH_JSON).write_text("{}")
    assert data_origin(tmp_path) == {"data_source": "twin", "release_root": tmp_path.name}
    assert ShardReader(twin_data[0] / "SN001_left.h5").attrs["data_source"] == "twin"
    assert ShardReader(release_data[0] / "SN001_left.h5").attrs["data_source"] == "release"
    # shards from before the attr (written without it) are "unknown"; sources mixed say so
    old = write_subject(tmp_path / "old" / "SN009_left.h5", "SN009", 4, 32, 0)
    assert shard_origin([ShardReader(old)])["data_source"] == "unknown"
    readers = open_shards(twin_data[0], ["SN001"], ["left"], "t") + \
        open_shards(release_data[0], ["SN002"], ["left"], "t")
    origin = shard_origin(readers)
    assert origin["data_source"] == "mixed" and origin["data_sources"] == ["release", "twin"]


@pytest.mark.parametrize("kind", ["twin", "release"])
def test_every_checkpoint_carries_the_card_of_its_data(kind, request, release_data, tmp_path):
    if kind == "twin":
        out, summary = request.getfixturevalue("twin_run")
    else:
        out = tmp_path / "run"
        summary = train(_config(release_data, out))
    best = card_of(load_checkpoint(out / "best.pt"))
    last = card_of(load_checkpoint(out / "last.pt"))
    assert best.data["source"] == kind and last.data["source"] == kind
    assert best.data["subjects"] == ["SN001", "SN002"]
    assert best.protocol["test_subjects"] == ["SN004"]
    assert best.trained_on_twin == (kind == "twin")
    # best.pt was tested: its card holds the held-out fold's numbers; last.pt was not
    assert best.metrics["source"] == "held-out fold"
    assert best.metrics["values"]["mean_f1"] == pytest.approx(summary["test"]["mean_f1"])
    assert last.metrics["source"] == "none"
    text = (out / "MODEL_CARD.md").read_text()
    assert "SN001, SN002" in text and best.summary_line() in text
    assert (TWIN_WARNING in text) == (kind == "twin")
    assert ("DISFA licence" in text) == (kind == "release")


def test_a_checkpoint_from_before_cards_still_loads(twin_run, tmp_path):
    out = twin_run[0]
    old = {k: v for k, v in load_checkpoint(out / "best.pt").items() if k != CARD_KEY}
    save_checkpoint(tmp_path / "old.pt", old)
    state = load_checkpoint(tmp_path / "old.pt")
    assert card_of(state) is None
    model, meta = load_for_inference(tmp_path / "old.pt")
    assert meta["au_ids"] == old["data"]["au_ids"]
    assert torch.load(out / "best.pt", weights_only=True)[CARD_KEY]["task"] == "occurrence"


def test_all_subjects_without_crossval_says_no_held_out_estimate(twin_data, tmp_path, caplog):
    shards, manifest = twin_data
    out = tmp_path / "deploy"
    with caplog.at_level(logging.WARNING):
        assert main(["--shards", str(shards), "--manifest", str(manifest), "--all-subjects",
                     "--out", str(out), "--epochs", "2", "--plot-every", "100", *TINY_ARGS]) == 0
    assert "no held-out estimate" in caplog.text
    best = load_checkpoint(out / "best.pt")
    card = card_of(best)
    assert card.data["subjects"] == SUBJECTS and best["epoch"] == 2  # the last epoch is kept
    assert card.metrics["source"] == "none" and "no held-out estimate" in card.metrics["detail"]
    assert "all subjects train" in card.protocol["test_subjects"]
    results = json.loads((out / "results.json").read_text())
    assert results["all_subjects"] and "test" not in results
    assert "no held-out estimate" in (out / "MODEL_CARD.md").read_text()


def test_all_subjects_from_crossval_takes_its_recipe_and_metrics(twin_data, twin_run, tmp_path):
    shards, manifest = twin_data
    fold, summary = twin_run
    cv = fold.parent.parent
    (cv / "crossval.json").write_text(json.dumps(
        {"results": {"tranet": [summary]}, "bootstrap": {"resamples": 200, "seed": 0}}))
    out = tmp_path / "deploy"
    assert main(["--shards", str(shards), "--manifest", str(manifest), "--all-subjects",
                 "--from-crossval", str(cv), "--out", str(out), "--workers", "0",
                 "--quiet"]) == 0
    best = load_checkpoint(out / "best.pt")
    card = card_of(best)
    assert best["train_config"]["seed"] == 3 and best["train_config"]["preset"] == "small"
    assert best["epoch"] == summary["best_epoch"]  # the folds' (median) best epoch count
    assert card.metrics["source"] == "crossval" and "not of this model" in card.metrics["detail"]
    assert str(cv) in card.metrics["detail"]
    assert card.metrics["values"]["mean_f1"] == pytest.approx(summary["test"]["mean_f1"])
    assert "crossval of the same recipe" in card.summary_line()


def test_all_subjects_refuses_a_fold_and_a_changed_recipe(twin_data, tmp_path, capsys):
    shards, manifest = twin_data
    base = ["--shards", str(shards), "--manifest", str(manifest), "--all-subjects", "--out",
            str(tmp_path / "x"), *TINY_ARGS]
    assert main([*base, "--fold", "1"]) == 2
    assert "drop --fold" in capsys.readouterr().err
    assert main([*base, "--from-crossval", str(tmp_path / "nothing")]) == 2
    assert "crossval.json" in capsys.readouterr().err
    assert not (tmp_path / "x" / "best.pt").exists()

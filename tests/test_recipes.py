"""Named recipes (model/recipes/*.json): loaded by name or file, overridden by explicit options,
recorded in config.json; the paper's needs pretrained weights."""
import json

import pytest
import torch

from model.engine.config import TrainConfig
from model.engine.recipes import RECIPE_DIR, load_recipe, recipe_names
from model.train import build_parser, explicit_options, main
from model.engine.options import config_from_args
from trainer_fixtures import make_dataset


def _config(argv):
    parser = build_parser()
    args = parser.parse_args(argv)
    return config_from_args(args, explicit_options(parser, argv))


BASE = ["--shards", "s", "--manifest", "m.json", "--fold", "1", "--out", "o"]


def test_recipes_ship_with_the_package_and_name_real_options():
    assert {"paper", "cpu-demo"} <= set(recipe_names())
    setup = (RECIPE_DIR.parent.parent / "setup.cfg").read_text()
    assert "recipes/*.json" in setup                     # package data: installed with model/
    paper = load_recipe("paper")
    assert paper.requires_pretrained and paper.settings["preset"] == "full"
    assert paper.settings["select_on"] == "test"          # the paper's protocol
    defaults = TrainConfig(shards="", manifest="", fold=1, out="")
    for key in ("lr", "momentum", "weight_decay", "batch_size", "batches_per_epoch", "patience"):
        assert paper.settings[key] == getattr(defaults, key), key
    demo = load_recipe("cpu-demo")
    assert demo.settings["preset"] == "small" and demo.settings["lr_schedule"] == "cosine"
    assert demo.settings["jitter_scale"] > 0 and not demo.requires_pretrained


def test_explicit_options_override_a_recipe_and_the_recipe_is_recorded():
    cfg = _config(BASE + ["--recipe", "cpu-demo", "--lr", "0.01", "--no-flip"])
    assert cfg.preset == "small" and cfg.lr_schedule == "cosine" and cfg.jitter_degrees == 5.0
    assert cfg.lr == 0.01 and cfg.flip is False            # given on the command line
    assert cfg.recipe["name"] == "cpu-demo" and cfg.recipe["settings"]["lr"] == 0.05
    # an explicit value equal to the default still wins over the recipe
    assert _config(BASE + ["--recipe", "cpu-demo", "--lr", "0.001"]).lr == 0.001
    assert _config(BASE).recipe is None and _config(BASE).preset == "full"


def test_paper_recipe_requires_pretrained_weights(tmp_path):
    with pytest.raises(ValueError, match="--recipe paper .*--pretrained"):
        _config(BASE + ["--recipe", "paper"])
    cfg = _config(BASE + ["--recipe", "paper", "--pretrained", "w.pkl", "--threshold", "2"])
    assert cfg.threshold == 2 and cfg.select_on == "test" and cfg.preset == "full"


def test_an_edited_copy_is_a_recipe_and_bad_ones_are_named(tmp_path):
    mine = json.loads((RECIPE_DIR / "cpu-demo.json").read_text())
    mine["name"], mine["settings"]["epochs"] = "mine", 3
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(mine))
    cfg = _config(BASE + ["--recipe", str(path)])
    assert cfg.epochs == 3 and cfg.recipe["name"] == "mine" and cfg.recipe["source"] == str(path)
    mine["settings"]["learning_rate"] = 1
    path.write_text(json.dumps(mine))
    with pytest.raises(ValueError, match=r"mine.json: unknown options \['learning_rate'\]"):
        _config(BASE + ["--recipe", str(path)])
    with pytest.raises(ValueError, match="no such recipe.*cpu-demo"):
        _config(BASE + ["--recipe", "fast"])


def test_recipe_lands_in_config_json(tmp_path, caplog):
    shards, manifest = make_dataset(tmp_path / "d", frames=16, size=32)
    out = tmp_path / "run"
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                     "--out", str(out), "--recipe", "cpu-demo", "--image-size", "32",
                     "--epochs", "1", "--batches-per-epoch", "1", "--batch-size", "8",
                     "--workers", "0", "--quiet"])
    finally:
        torch.set_num_threads(old)
    assert code == 0
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["recipe"]["name"] == "cpu-demo"
    assert recorded["recipe"]["settings"] == load_recipe("cpu-demo").settings
    assert recorded["train_config"]["lr"] == 0.05 and recorded["train_config"]["epochs"] == 1
    assert recorded["model_config"]["channels_last"] is True
    assert recorded["frozen"]["frozen_blocks"] == 0
    assert main(BASE + ["--recipe", "paper"]) == 1
    assert "--pretrained" in caplog.text


def test_a_recipes_batch_is_global_and_an_explicit_batch_size_per_process():
    """Issue 21 item 7: under torchrun --recipe paper trains the paper's global batch of 64
    (64 / world per process), refused when the processes do not divide it; an explicit
    --batch-size stays per process. config.json's "batch" says which it was."""
    from model.engine.config import batch_record, effective_lr, hold_global_batch

    paper = _config(BASE + ["--recipe", "cpu-demo"])
    assert paper.batch_size == 64 and paper.recipe["global_batch"] == 64
    for world in (1, 2, 4):
        held = hold_global_batch(paper, world)
        record = batch_record(held, world)
        assert (record["per_process"], record["global"]) == (64 // world, 64)
        assert "recipe cpu-demo" in record["set_by"]
    with pytest.raises(ValueError, match=r"--recipe cpu-demo: .*64 does not divide over 3 .*1, 2, "
                                         r"4, 8 or 16"):
        hold_global_batch(paper, 3)
    linear = _config(BASE + ["--recipe", "cpu-demo", "--lr-scaling", "linear"])
    assert effective_lr(hold_global_batch(linear, 4), 4) == linear.lr  # the batch did not grow
    mine = _config(BASE + ["--recipe", "cpu-demo", "--batch-size", "24"])
    assert "global_batch" not in mine.recipe and hold_global_batch(mine, 4).batch_size == 24
    assert batch_record(mine, 4)["global"] == 96
    assert batch_record(mine, 4)["set_by"] == "--batch-size (per process)"
    plain = TrainConfig(shards="", manifest="", fold=1, out="", batch_size=8)
    assert hold_global_batch(plain, 3).batch_size == 8


def test_a_recipe_global_batch_run_resumes_only_on_its_process_count():
    """Issue 21 item 7: last.pt stores the per-process share of a recipe's global batch, so
    resuming on another process count would train another global batch: refused, like
    --lr-scaling linear; a per-process --batch-size run may change count (warned)."""
    from model.engine.checkpoint import CheckpointError
    from model.engine.config import hold_global_batch
    from model.engine.distributed import DistInfo
    from model.engine.trainer import check_resume_world

    state = {"world_size": 2, "progress": {"accumulator": {"batches": 0}}}
    recipe = hold_global_batch(_config(BASE + ["--recipe", "cpu-demo"]), 2)
    check_resume_world(state, recipe, DistInfo(rank=0, world=2))
    with pytest.raises(CheckpointError, match="recipe cpu-demo's global batch of 64"):
        check_resume_world(state, recipe, DistInfo(rank=0, world=4))
    check_resume_world(state, _config(BASE + ["--batch-size", "8"]), DistInfo(rank=0, world=4))
    with pytest.raises(CheckpointError, match="lr-scaling linear"):
        check_resume_world(state, _config(BASE + ["--lr-scaling", "linear"]),
                           DistInfo(rank=0, world=4))


def test_a_torchrun_run_of_a_recipe_is_the_same_recipe_for_reuse():
    """A run of --recipe cpu-demo on 4 processes records batch_size 16 (its share of 64): the
    same recipe on one process is the same training for crossval's reuse; a run whose 16 was a
    per-process --batch-size is not."""
    from dataclasses import asdict

    from model.engine.config import hold_global_batch, recipe_differences

    cfg = _config(BASE + ["--recipe", "cpu-demo"])
    recorded = asdict(hold_global_batch(cfg, 4))
    assert recorded["batch_size"] == 16 and recipe_differences(cfg, recorded) == []
    other = _config(BASE + ["--recipe", "cpu-demo", "--batch-size", "16"])
    assert recipe_differences(other, asdict(cfg)) == ["--batch-size 16 (run has 64)"]
    assert recipe_differences(hold_global_batch(cfg, 2), asdict(other)) == [
        "--batch-size 32 (run has 16)"]

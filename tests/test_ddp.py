"""The DDP path: two CPU processes (gloo) launched by torchrun train one tiny run together.

Each rank gets its own run folder, as on two machines without a shared filesystem: rank 1 never
sees rank 0's best.pt, so the final test must receive best.pt's weights from rank 0.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from model.engine.checkpoint import load_checkpoint
from trainer_fixtures import make_dataset

REPO = Path(__file__).resolve().parent.parent

#: model.train, with every rank but 0 writing to (and reading from) its own run folder.
SEPARATE_DISKS = """
import os, sys
from model.train import main
argv = sys.argv[1:]
rank = int(os.environ["RANK"])
if rank:
    argv[argv.index("--out") + 1] += f"_rank{rank}"
raise SystemExit(main(argv))
"""


def test_two_process_gloo_run(tmp_path):
    shards, manifest = make_dataset(tmp_path / "d", frames=32, size=32)
    out = tmp_path / "run"
    script = tmp_path / "train_on_separate_disks.py"
    script.write_text(SEPARATE_DISKS)
    recipe = tmp_path / "two.json"  # a recipe's batch is global: 16 = 8 per process x 2
    recipe.write_text(json.dumps({"name": "two", "settings": {"batch_size": 16}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), "--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
           "--out", str(out), "--preset", "small", "--epochs", "2", "--batches-per-epoch", "2",
           "--recipe", str(recipe), "--workers", "0", "--threads", "1", "--device", "cpu", "--quiet",
           "--lr", "0.05", "--task", "both"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2
    # the recipe's batch of 16 is the global one: each rank draws 8 frames a step
    assert config["batch"] == {"per_process": 8, "processes": 2, "global": 16, "lr_rule": "none",
                               "base_lr": 0.05, "lr": 0.05,
                               "set_by": "recipe two (global batch, split over the processes)"}
    assert config["train_config"]["batch_size"] == 8 and config["recipe"]["global_batch"] == 16
    assert "global batch 16" in proc.stderr
    # SyncBatchNorm is on by default under DDP; torch runs it on CUDA only, which is recorded
    assert config["train_config"]["sync_bn"] is True
    assert config["sync_batchnorm"]["enabled"] is False and "CUDA" in config["sync_batchnorm"]["note"]
    assert not (tmp_path / "run_rank1" / "best.pt").exists()
    state = load_checkpoint(out / "last.pt")
    assert state["world_size"] == 2 and len(state["sampler"]) == 2 and len(state["rng"]) == 2
    # each rank has its own sampler stream
    assert not torch.equal(state["sampler"][0]["generator"], state["sampler"][1]["generator"])
    assert [sampler["num_samples"] for sampler in state["sampler"]] == [8 * 2, 8 * 2]
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    assert [row["epoch"] for row in history] == [1, 2]
    # evaluation counts were summed over both ranks: every validation frame counted once
    assert history[-1]["eval"]["n_frames"] == 32
    results = json.loads((out / "results.json").read_text())
    assert results["test"]["n_frames"] == 32
    # the intensity sums too, per test subject: ranks agree on their shape and add up to the whole
    intensity = results["test_intensity"]
    assert intensity["n_frames"] == 32
    sums = np.asarray(intensity["per_subject"]["sums"])
    assert sums.shape == (len(intensity["per_subject"]["subjects"]), 12, 7)
    assert sums[:, :, 0].sum(axis=0).tolist() == [32.0] * 12
    # only rank 0 printed the final table
    assert proc.stdout.count("| F1 |") == 1

"""The demo chain (twin -> align -> folds -> train -> evaluate) at a much smaller size."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model.demo import build_parser, run_demo


def test_small_demo_chain_learns(small_demo):
    out, report, argv = small_demo
    old = torch.get_num_threads()
    try:
        summary = (out / "demo_summary.json").read_text()
        # a rerun with other training settings is refused, not answered with the old run
        shorter = argv[:argv.index("--epochs") + 1] + ["3"] + argv[argv.index("--epochs") + 2:]
        with pytest.raises(ValueError, match=r"--epochs 3 \(run has 20\).*--fresh"):
            run_demo(build_parser().parse_args(shorter))
        assert (out / "demo_summary.json").read_text() == summary
        fewer = argv[:argv.index("--frames") + 1] + ["100"] + argv[argv.index("--frames") + 2:]
        with pytest.raises(ValueError, match=r"--frames 100 \(it has 120\).*--fresh"):
            run_demo(build_parser().parse_args(fewer))
    finally:
        torch.set_num_threads(old)
    recorded = json.loads((out / "runs" / "fold1" / "config.json").read_text())
    assert recorded["recipe"]["name"] == "cpu-demo"       # the demo trains with the recipe
    assert recorded["train_config"]["lr_schedule"] == "cosine"
    for name in ("disfa_twin/Error_LOG_Sheet.csv", "shards/SN001_left.h5", "folds.json",
                 "demo_summary.json", "demo.md", "runs/fold1/best.pt", "runs/fold1/per_au_f1.png"):
        assert (out / name).is_file(), name
    # the twin's Error_LOG frames were dropped by the alignment
    assert json.loads((out / "shards" / "align_summary.json").read_text())
    history = json.loads((out / "runs" / "fold1" / "metrics.json").read_text())["epochs"]
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    test = report["results"][0]["metrics"]
    rates = np.array(test["positive_rate"])
    present = rates > 0
    chance = np.mean(2 * rates[present] / (1 + rates[present]))  # always answering "present"
    # --seed 0-2 (2-core EPYC, torch 2.13), F1 over chance / shards' ICC: 12 epochs +0.06-0.20 /
    # 0.35-0.60, 20 epochs +0.10-0.33 / 0.32-0.70; train loss falls to 0.09-0.11 of epoch 1's.
    assert np.mean(np.array(test["f1"])[present]) > chance, (test["f1"], chance)
    fold = report["folds"][0]
    assert not set(fold["test"]) & (set(fold["train"]) | set(fold["val"]))
    assert "validation subjects" in report["protocol"]
    assert "Wall time" in (out / "demo.md").read_text()
    # model.predict ran on the raw video of a held-out subject (dlib landmarks) and was scored
    predicted = report["predict"][0]
    assert predicted["subjects"] == report["results"][0]["subjects"][:1]
    assert predicted["frames"] == 120 and predicted["faces_found"] >= 114
    assert predicted["metrics"]["n_frames"] == 120 and len(predicted["metrics"]["f1"]) == 8
    assert (out / "predictions" / "fold1" / "predict_summary.json").is_file()
    assert len(list((out / "predictions" / "fold1").glob("*_timeline.png"))) == 1
    assert "model.predict" in (out / "demo.md").read_text()
    # the calibration/smoothing benchmark rescoring the demo's CSVs: "none" is the demo's score
    from model.benchmarks.predict_bench import postprocess_effect

    effect = {r["variant"]: r for r in postprocess_effect(out)}
    assert effect["none"]["mean_f1"] == pytest.approx(predicted["metrics"]["mean_f1"], abs=2e-3)
    assert set(effect) == {"none", "calibrate", "smooth 5", "smooth 9", "calibrate + smooth 5"}
    # --task both (the demo's default): intensity tables for the shards and for model.predict
    shards_icc = report["results"][0]["intensity"]
    assert len(shards_icc["icc"]) == 12 and shards_icc["mean_over"] == test["au_ids"]
    assert shards_icc["mean_icc"] > 0.2, shards_icc
    assert len(predicted["intensity"]["icc"]) == 8 and predicted["intensity"]["n_frames"] == 120
    csv_header = next((out / "predictions" / "fold1").glob("*.csv")).read_text().splitlines()[0]
    assert "AU01_r" in csv_header and "AU26_r" in csv_header
    text = (out / "demo.md").read_text()
    assert "Intensity (0-5) on the held-out test shards" in text and "ICC(3,1)" in text
    assert "model.predict" in text.split("Intensity (AUxx_r)")[1]


def test_folds_trained_side_by_side_equal_folds_trained_in_turn(tmp_path):
    """--train-jobs 2 trains two folds in spawned processes; with one thread each, every run is
    the run the same fold gets alone (same seed, same operations): the same best.pt weights."""
    old = torch.get_num_threads()
    base = ["--n-subjects", "6", "--frames", "40", "--frame-width", "320", "--frame-height",
            "240", "--size", "64", "--k", "2", "--val-subjects", "1", "--epochs", "2",
            "--batches-per-epoch", "3", "--batch-size", "16", "--jobs", "1", "--threads", "2",
            "--predict-subjects", "0", "--quiet"]
    try:
        side = run_demo(build_parser().parse_args(["--out", str(tmp_path / "a"), *base,
                                                   "--train-jobs", "2"]))
        turn = run_demo(build_parser().parse_args(["--out", str(tmp_path / "b"), *base,
                                                   "--train-jobs", "1", "--threads", "1"]))
    finally:
        torch.set_num_threads(old)
    assert [r["fold"] for r in side["runs"]] == [1, 2]
    assert any("2 at once, 1 thread each" in stage for stage in side["wall_seconds"])
    for fold in (1, 2):
        a = torch.load(tmp_path / "a" / "runs" / f"fold{fold}" / "best.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / "runs" / f"fold{fold}" / "best.pt", weights_only=True)
        assert a["epoch"] == b["epoch"]
        for name, tensor in a["model"].items():
            torch.testing.assert_close(tensor, b["model"][name], rtol=0, atol=0, msg=name)
    assert [r["metrics"]["f1"] for r in side["results"]] == \
        [r["metrics"]["f1"] for r in turn["results"]]


def _children(pid: int) -> list[int]:
    found = []
    for task in (Path("/proc") / str(pid) / "task").glob("*"):
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_fold_workers_save_and_stop_when_the_demo_process_is_killed(tmp_path):
    """SIGKILL to the demo leaves no fold worker training on: each gets SIGTERM from its watcher,
    saves last.pt and ends."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "demo"
    argv = [sys.executable, "-m", "model.demo", "--out", str(out), "--n-subjects", "6",
            "--frames", "40", "--size", "64", "--k", "2", "--val-subjects", "1", "--epochs", "50",
            "--batches-per-epoch", "40", "--batch-size", "16", "--jobs", "1", "--threads", "2",
            "--predict-subjects", "0", "--train-jobs", "2", "--quiet"]
    demo = subprocess.Popen(argv, cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        lasts = [out / "runs" / f"fold{f}" / "last.pt" for f in (1, 2)]
        while not all(p.is_file() for p in lasts):
            assert demo.poll() is None and time.monotonic() < deadline, "no fold got to epoch 1"
            time.sleep(0.5)
        workers = [c for c in _children(demo.pid) if "spawn_main" in
                   (Path("/proc") / str(c) / "cmdline").read_text()]
        assert len(workers) == 2
        demo.send_signal(signal.SIGKILL)
        demo.wait()
        deadline = time.monotonic() + 30  # the watcher polls every second; saving is quick
        while any(Path(f"/proc/{w}").exists() and "Z" not in
                  (Path(f"/proc/{w}/stat").read_text().split()[2]) for w in workers):
            assert time.monotonic() < deadline, "fold workers kept running without the demo"
            time.sleep(0.5)
    finally:
        if demo.poll() is None:
            demo.kill()
        for w in locals().get("workers", []):
            if Path(f"/proc/{w}/cmdline").is_file() and \
                    "spawn_main" in Path(f"/proc/{w}/cmdline").read_text():
                os.kill(w, signal.SIGKILL)  # still our worker: the test failed
    for last in lasts:
        state = torch.load(last, weights_only=True)
        assert state["progress"]["epoch"] < 50


def test_a_failing_fold_stops_the_folds_training_beside_it(tmp_path):
    """Fold 2 refuses its run folder at once (made with other settings); fold 1, which would
    train on for a minute, gets SIGTERM (saving last.pt if it got that far) and the error is
    reported at once instead of after fold 1 finishes."""
    import time

    base = ["--out", str(tmp_path / "demo"), "--n-subjects", "6", "--frames", "40", "--size", "64",
            "--k", "2", "--val-subjects", "1", "--batches-per-epoch", "40", "--batch-size", "16",
            "--jobs", "1", "--threads", "2", "--predict-subjects", "0", "--quiet"]
    old = torch.get_num_threads()
    try:
        run_demo(build_parser().parse_args(base + ["--folds", "2", "--epochs", "1"]))
        start = time.monotonic()
        with pytest.raises(ValueError, match=r"--epochs 50 \(run has 1\)"):
            run_demo(build_parser().parse_args(base + ["--epochs", "50", "--train-jobs", "2"]))
    finally:
        torch.set_num_threads(old)
    assert time.monotonic() - start < 45  # fold 1 alone trains on for about a minute
    fold1 = tmp_path / "demo" / "runs" / "fold1"
    assert not (fold1 / "results.json").exists()  # stopped, not finished
    if (fold1 / "last.pt").exists():  # stopped after its first epoch: resumable
        assert torch.load(fold1 / "last.pt", weights_only=True)["progress"]["epoch"] < 50

"""Every command fails cleanly (issue 11): one line and an exit code for the user's mistakes and
the machine's state, no lost run, no ghost writer, bounded input, honest evaluation."""
import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch

from _disfa_fixtures import write_release
from trainer_fixtures import make_dataset, write_subject
from model import (bench as model_bench, crossval, demo, evaluate, predict, predict_bench,
                   train as train_cmd)
from model.engine.checkpoint import load_checkpoint, save_checkpoint
from model.inference.video_io import InputError, read_image_rgb
from pipeline import align, bench as pipeline_bench, build_folds
from pipeline import twin as synth
from pipeline.cli import EXIT_INTERRUPTED, handle_errors
from pipeline.folder_lock import FolderLock
from pipeline.datasets.disfa import ReleaseError, read_landmark_mat
from pipeline.shards import ShardReader, shard_name

#: Every test here proves a guarantee of docs/reliability.md (pytest -m reliability).
pytestmark = pytest.mark.reliability

REPO = Path(__file__).resolve().parents[1]
TINY_TRAIN = ["--preset", "small", "--epochs", "1", "--batches-per-epoch", "2", "--batch-size",
              "8", "--workers", "0", "--device", "cpu", "--quiet", "--eval-batch-size", "16"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory, one_torch_thread):
    shards, manifest = dataset
    run = tmp_path_factory.mktemp("run") / "fold1"
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(run), *TINY_TRAIN]) == 0
    return run


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


# --------------------------------------------------------------------------- the handler


def test_handler_maps_known_errors_and_keeps_tracebacks_for_bugs(capsys):
    @handle_errors("demo.cmd")
    def interrupted(argv=None):
        raise KeyboardInterrupt

    @handle_errors("demo.cmd")
    def disk_full(argv=None):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out/x.h5")

    @handle_errors("demo.cmd")
    def bug(argv=None):
        raise OSError(errno.EIO, "I/O error")  # not a user's or machine's known state

    assert interrupted() == EXIT_INTERRUPTED
    assert _error_line(capsys).startswith("demo.cmd: error: interrupted")
    assert disk_full() == 1
    assert _error_line(capsys) == "demo.cmd: error: disk full: /data/out/x.h5"
    with pytest.raises(OSError):
        bug()


# --------------------------------------------------------------------------- 1. no lost run


def test_train_refuses_an_out_that_holds_a_run(trained, dataset, capsys):
    shards, manifest = dataset
    stamp = (trained / "last.pt").stat().st_mtime_ns
    argv = ["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
            "--out", str(trained), *TINY_TRAIN]
    assert train_cmd.main(argv) == 2
    line = _error_line(capsys)
    assert f"--resume {trained}" in line and "--fresh" in line
    assert (trained / "last.pt").stat().st_mtime_ns == stamp


def test_train_fresh_replaces_the_run(dataset, tmp_path, capsys):
    shards, manifest = dataset
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.csv").write_text("old run\n")
    argv = ["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
            "--out", str(out), *TINY_TRAIN]
    assert train_cmd.main(argv) == 2
    assert train_cmd.main([*argv, "--fresh"]) == 0
    assert "old run" not in (out / "metrics.csv").read_text()


# --------------------------------------------------------------------------- 2. no ghost writer


SLOW_WORKERS = """
import time, cv2
_warp = cv2.warpAffine
def _slow(*args, **kwargs):
    time.sleep(0.1)
    return _warp(*args, **kwargs)
cv2.warpAffine = _slow
"""


def test_killed_align_leaves_no_ghost_writer(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 40, "SN002": 40})
    out = tmp_path / "shards"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_WORKERS)  # every frame 0.1 s, workers too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.align", "--disfa-root", str(rel.root), "--out", str(out),
         "--size", "32", "--jobs", "2"], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob(".*.tmp-*")):  # the workers are writing
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The rerun (other settings) takes over the dead run's lock and finishes first.
        assert align.main(["--disfa-root", str(rel.root), "--out", str(out), "--size", "48",
                           "--encoding", "raw"]) == 0
        deadline = time.monotonic() + 60
        while list(out.glob(".*.tmp-*")):  # the orphaned workers finish (or give up) their jobs
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for subject in ("SN001", "SN002"):
        with ShardReader(out / shard_name(subject, "left")) as reader:
            assert reader.image_size == 48, "an orphaned worker overwrote the rerun's shard"


def test_align_refuses_a_folder_another_live_run_writes(tmp_path, capsys):
    rel = write_release(tmp_path / "disfa", {"SN001": 10})
    out = tmp_path / "shards"
    out.mkdir()
    (out / FolderLock.NAME).write_text(f"{os.getppid()} 1.0")  # a live process
    assert align.main(["--disfa-root", str(rel.root), "--out", str(out), "--size", "32"]) == 1
    assert f"pid {os.getppid()}" in _error_line(capsys)
    (out / FolderLock.NAME).write_text("999999999 1.0")  # a killed run: taken over
    assert align.main(["--disfa-root", str(rel.root), "--out", str(out), "--size", "32"]) == 0
    assert not (out / FolderLock.NAME).exists()


# --------------------------------------------------------------------------- 3. bounded input


def _mat_bomb(path: Path) -> Path:
    """A landmark file whose compressed variable inflates to ~300 MB (a few hundred KB)."""
    scipy.io.savemat(str(path), {"pts": np.ones((66, 2)), "junk": np.zeros((6000, 6000))},
                     do_compression=True)
    return path


def test_mat_bomb_is_refused_before_inflating(tmp_path):
    bomb = _mat_bomb(tmp_path / "SN001_0001_lm.mat")
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(ReleaseError, match="SN001_0001_lm.mat.*inflates beyond"):
            read_landmark_mat(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20
    huge = tmp_path / "huge.mat"
    huge.write_bytes(b"\0" * (2 * 2**20))  # larger than any landmark file: not even read
    with pytest.raises(ReleaseError, match="refused"):
        read_landmark_mat(huge)


def test_mat_bomb_in_a_release_fails_only_its_subject(tmp_path, capsys):
    rel = write_release(tmp_path / "disfa", {"SN001": 10, "SN002": 10})
    target = next((rel.root / "Landmark_Points" / "SN001").rglob("*_0003_lm.mat"))
    target.unlink()
    _mat_bomb(target)
    out = tmp_path / "shards"
    assert align.main(["--disfa-root", str(rel.root), "--out", str(out), "--size", "32"]) == 1
    summary = json.loads((out / "align_summary.json").read_text())["subjects"]
    assert summary["SN002_left"]["status"] == "ok"
    assert "inflates beyond" in summary["SN001_left"]["error"]
    assert target.name in summary["SN001_left"]["error"]


@pytest.mark.parametrize("command, argv, words", [
    (synth, ["--fps", "0"], "--fps: must be a finite number > 0"),
    (align, ["--disfa-root", ".", "--size", "2000000"], "--size: must be 32..1024"),
    (align, ["--disfa-root", ".", "--threshold", "0"], "--threshold: must be a FACS letter"),
    (align, ["--disfa-root", ".", "--nose-target", "1.5,0.4"], "--nose-target: must lie inside"),
    (align, ["--disfa-root", ".", "--chin-target", "0.5,-1"], "--chin-target: must lie inside"),
    (align, ["--disfa-root", ".", "--subjects", "../x"], "--subjects: must be a DISFA subject"),
    (train_cmd, ["--shards", "s", "--manifest", "m", "--fold", "1", "--device", "gpu0"],
     "--device: not a device torch knows"),
    (train_cmd, ["--shards", "s", "--manifest", "m", "--fold", "1", "--threshold", "F"],
     "--threshold"),
    (evaluate, ["--checkpoint", "c", "--shards", "s", "--manifest", "m", "--device", "cuda:99"],
     "--device"),
    (predict, ["--checkpoint", "c", "--upsample", "-1"], "--upsample: must be 0..4"),
    (predict, ["--checkpoint", "c", "--fps", "0"], "--fps: must be a finite number > 0"),
    (predict, ["--checkpoint", "c", "--device", "tpu"], "--device"),
])
def test_option_ranges_are_usage_errors(command, argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        command.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


# --------------------------------------------------------------------------- 4. no traceback


def _out_file_cases(tmp_path, dataset, trained):
    shards, manifest = dataset
    f = tmp_path / "a_file"
    f.write_text("not a folder")
    release = tmp_path / "disfa"
    return {
        "pipeline.align": (align, ["--disfa-root", str(write_release(release, {"SN001": 5}).root),
                                   "--out", str(f)]),
        "pipeline.build_folds": (build_folds, ["--shards", str(shards), "--out", str(f)]),
        "pipeline.synth": (synth, ["--out", str(f), "--n-subjects", "1", "--frames", "2"]),
        "pipeline.bench": (pipeline_bench, ["--workdir", str(f), "--frames", "2"]),
        "model.train": (train_cmd, ["--shards", str(shards), "--manifest", str(manifest),
                                    "--fold", "1", "--out", str(f), *TINY_TRAIN]),
        "model.evaluate": (evaluate, ["--checkpoint", str(trained / "best.pt"), "--shards",
                                      str(shards), "--manifest", str(manifest), "--out", str(f)]),
        "model.crossval": (crossval, ["--shards", str(shards), "--manifest", str(manifest),
                                      "--out", str(f)]),
        "model.predict": (predict, ["--checkpoint", str(trained / "best.pt"), "--images",
                                    str(tmp_path), "--out", str(f)]),
        "model.demo": (demo, ["--out", str(f)]),
        "model.bench": (model_bench, ["--out", str(tmp_path), "--device", "cpu"]),
        "model.predict_bench": (predict_bench, ["--json", str(tmp_path)]),
    }


@pytest.mark.parametrize("name", ["pipeline.align", "pipeline.build_folds", "pipeline.synth",
                                  "pipeline.bench", "model.train", "model.evaluate",
                                  "model.crossval", "model.predict", "model.demo", "model.bench",
                                  "model.predict_bench"])
def test_out_that_is_a_file_is_one_line(name, tmp_path, dataset, trained, capsys):
    command, argv = _out_file_cases(tmp_path, dataset, trained)[name]
    capsys.readouterr()
    assert command.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"{name}: error: --")
    assert str(tmp_path) in line and ("file" in line or "folder" in line)


def test_out_below_a_file_cannot_be_created(tmp_path, dataset, capsys):
    shards, manifest = dataset
    (tmp_path / "f").write_text("")
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(tmp_path / "f" / "run"), *TINY_TRAIN]) == 2
    assert "cannot create the folder" in _error_line(capsys)


def test_disk_full_names_the_file(dataset, tmp_path, monkeypatch, capsys):
    shards, manifest = dataset

    def full(obj, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", full)
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 1
    line = _error_line(capsys)
    assert line.startswith("model.train: error: disk full: ") and str(tmp_path / "run") in line


def test_disk_full_in_align_fails_the_subject_with_disk_full(tmp_path, monkeypatch):
    rel = write_release(tmp_path / "disfa", {"SN001": 10})
    out = tmp_path / "shards"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.tmp_path))

    monkeypatch.setattr(align.ShardWriter, "append_many", full)
    assert align.main(["--disfa-root", str(rel.root), "--out", str(out), "--size", "32"]) == 1
    row = json.loads((out / "align_summary.json").read_text())["subjects"]["SN001_left"]
    assert row["error"].startswith("disk full: ") and "SN001_left.h5" in row["error"]
    assert not list(out.glob(".*.tmp-*"))


def test_missing_and_refused_pretrained_are_one_line(dataset, tmp_path, capsys):
    shards, manifest = dataset
    base = ["--shards", str(shards), "--manifest", str(manifest), "--fold", "1", *TINY_TRAIN]
    assert train_cmd.main([*base, "--out", str(tmp_path / "a"), "--pretrained",
                           str(tmp_path / "nope.pkl")]) == 2
    assert "nope.pkl" in _error_line(capsys)
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would import os.system
    assert train_cmd.main([*base, "--out", str(tmp_path / "b"), "--pretrained", str(bad)]) == 2
    assert "evil.pkl" in _error_line(capsys)


def test_checkpoint_with_a_misshaped_tensor_names_it(trained, dataset, tmp_path, capsys):
    shards, manifest = dataset
    state = load_checkpoint(trained / "best.pt")
    name = next(k for k, v in state["model"].items() if v.ndim == 4)
    state["model"][name] = torch.zeros(3, 3, 3, 3)
    bad = save_checkpoint(tmp_path / "bad.pt", state)
    assert evaluate.main(["--checkpoint", str(bad), "--shards", str(shards), "--manifest",
                          str(manifest), "--out", str(tmp_path / "ev")]) == 2
    line = _error_line(capsys)
    assert f"tensor '{name}' has shape (3, 3, 3, 3)" in line and "bad.pt" in line


def _corrupt_frame(shard: Path, frame: int) -> None:
    with h5py.File(shard, "r+") as f:
        data = f["images"][frame]
        f["images"][frame] = data[: len(data) // 2]  # cut in half


def test_corrupt_jpeg_in_a_shard_is_named_and_redone_by_align(tmp_path, capsys):
    rel = write_release(tmp_path / "disfa", {"SN001": 12, "SN002": 12})
    out = tmp_path / "shards"
    argv = ["--disfa-root", str(rel.root), "--out", str(out), "--size", "32"]
    assert align.main(argv) == 0
    shard = out / shard_name("SN001", "left")
    _corrupt_frame(shard, 5)
    with ShardReader(shard) as reader, pytest.raises(Exception, match=r"SN001_left.h5, frame 5"):
        reader.image(5)
    assert align.main(argv) == 0
    rows = json.loads((out / "align_summary.json").read_text())["subjects"]
    assert rows["SN001_left"]["status"] == "ok" and rows["SN002_left"]["status"] == "skipped"
    with ShardReader(shard) as reader:
        assert reader.image(5).shape == (32, 32, 3)


def test_corrupt_jpeg_stops_training_with_one_line(tmp_path, capsys):
    shards, manifest = make_dataset(tmp_path, frames=24)
    for path in shards.glob("*.h5"):  # re-encode as JPEG, then cut frame 7 of SN001
        write_subject(path, path.stem.split("_")[0], 24, 32, 0, encoding="jpeg")
    _corrupt_frame(shards / "SN001_left.h5", 7)
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(tmp_path / "run"), *TINY_TRAIN,
                           "--no-flip"]) == 2
    line = _error_line(capsys)
    assert "SN001_left.h5, frame 7" in line


# --------------------------------------------------------------------------- 5. honest evaluation


def test_evaluate_refuses_subjects_the_checkpoint_saw(trained, dataset, tmp_path, capsys):
    shards, manifest = dataset
    argv = ["--checkpoint", str(trained / "best.pt"), "--shards", str(shards), "--manifest",
            str(manifest), "--out", str(tmp_path / "ev")]
    assert evaluate.main([*argv, "--split", "train"]) == 2
    line = _error_line(capsys)
    assert "trained or selected on" in line and "--allow-seen" in line
    assert evaluate.main([*argv, "--split", "val", "--allow-seen"]) == 0
    report = json.loads((tmp_path / "ev" / "evaluation_val.json").read_text())
    assert report["results"][0]["seen_subjects"] == ["SN003"]
    assert "SAW" in (tmp_path / "ev" / "evaluation_val.md").read_text()
    assert evaluate.main([*argv, "--split", "test"]) == 0  # unseen: no flag needed


def test_train_notices_shards_changed_since_the_folds(tmp_path, capsys):
    shards, _ = make_dataset(tmp_path, frames=24)
    assert build_folds.main(["--shards", str(shards), "--out", str(tmp_path), "--scheme", "kfold",
                             "--k", "2"]) == 0
    manifest = tmp_path / "folds.json"
    write_subject(shards / "SN002_left.h5", "SN002", 20, 32, 5)  # realigned: 20 frames now
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(tmp_path / "run"), *TINY_TRAIN]) == 2
    line = _error_line(capsys)
    assert "changed since the folds were built" in line and "SN002_left.h5 (24 -> 20" in line


# --------------------------------------------------------------------------- 6. small ones


def test_half_truncated_jpeg_is_a_bad_file(tmp_path):
    import cv2

    path = tmp_path / "face.jpg"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="face.jpg: truncated JPEG"):
        read_image_rgb(path)


def test_ctrl_c_in_align_is_one_line_and_130(tmp_path, monkeypatch, capsys):
    rel = write_release(tmp_path / "disfa", {"SN001": 5})

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(align, "align_subject", interrupted)
    assert align.main(["--disfa-root", str(rel.root), "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]
    assert not (tmp_path / "o" / FolderLock.NAME).exists()  # the lock went with the run


def test_ctrl_c_in_predict_is_one_line_and_130(trained, tmp_path, monkeypatch, capsys):
    def interrupted(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict, "run_predict", interrupted)
    assert predict.main(["--checkpoint", str(trained / "best.pt"), "--images", str(tmp_path),
                         "--out", str(tmp_path / "o")]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "interrupted" in err[0]


def test_stale_temp_files_of_killed_runs_are_removed(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 5})
    out = tmp_path / "shards"
    out.mkdir()
    stale = out / ".SN001_left.h5.tmp-999999999"  # no such process
    live = out / f".SN002_left.h5.tmp-{os.getppid()}"  # someone alive: left alone
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x")
    assert align.main(["--disfa-root", str(rel.root), "--out", str(out), "--size", "32"]) == 0
    assert not stale.exists() and live.exists()


def test_align_warnings_are_printed_once_and_no_progress_bar_in_a_log(tmp_path):
    rel = write_release(tmp_path / "disfa", {"SN001": 20, "SN002": 20},
                        missing_landmarks={"SN001": [7]})
    for jobs in ("1", "2"):
        done = subprocess.run(
            [sys.executable, "-m", "pipeline.align", "--disfa-root", str(rel.root), "--out",
             str(tmp_path / f"o{jobs}"), "--size", "32", "--jobs", jobs],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("filled from the neighbouring frame") == 1, done.stderr
        assert "\r" not in done.stderr and "subject/s" not in done.stderr


def test_training_progress_bars_stay_out_of_a_log(dataset, tmp_path, capsys):
    shards, manifest = dataset
    argv = [a for a in TINY_TRAIN if a != "--quiet"]
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(tmp_path / "run"), *argv]) == 0
    err = capsys.readouterr().err
    assert "it/s" not in err and "s/it" not in err and "\r" not in err


def _tmpfs(mount: Path, options: str):
    """Mount a tmpfs (root only; the test is skipped where mounting is not allowed)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_disk(tmp_path):
    yield from _tmpfs(tmp_path / "disk", "size=64k")


@pytest.fixture
def read_only_disk(tmp_path):
    yield from _tmpfs(tmp_path / "ro", "size=64k,ro")


def test_read_only_out_is_one_line(read_only_disk, dataset, capsys):
    shards, manifest = dataset
    for out in (read_only_disk, read_only_disk / "run"):
        assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold",
                               "1", "--out", str(out), *TINY_TRAIN]) == 2
        line = _error_line(capsys)
        assert str(out) in line and ("not writable" in line or "read-only file system" in line)


def test_a_really_full_disk_fails_cleanly(tiny_disk, tmp_path):
    """HDF5 reports ENOSPC at close as a RuntimeError and crashes (segfault) when the failed
    handle is freed; the writer keeps it and says 'disk full' with the shard's name instead."""
    rel = write_release(tmp_path / "disfa", {"SN001": 10, "SN002": 10}, width=320, height=240)
    done = subprocess.run(
        [sys.executable, "-m", "pipeline.align", "--disfa-root", str(rel.root), "--out",
         str(tiny_disk / "shards"), "--size", "224", "--encoding", "raw"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"disk full: {tiny_disk / 'shards' / 'SN001_left.h5'}" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("pipeline.align: error: disk full: ")
    assert not list((tiny_disk / "shards").glob(".*"))  # no temporary file, no lock left


# --------------------------------------------------------------------------- 7. export, ONNX, faults


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, one_torch_thread):
    from model.benchmarks.synthetic import make_untrained_checkpoint

    return make_untrained_checkpoint(tmp_path_factory.mktemp("ck") / "small.pt", "small", 64)


@pytest.fixture(scope="module")
def exported(small_checkpoint, tmp_path_factory):
    from model import export

    out = tmp_path_factory.mktemp("onnx") / "small.onnx"
    assert export.main(["--checkpoint", str(small_checkpoint), "--out", str(out)]) == 0
    return out


def _full_disk_at(path: Path) -> None:
    """Make the next write of ``path`` (through its ``.NAME.tmp-PID`` file) hit a full disk:
    the temporary name is a link to /dev/full, where every write fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    os.symlink("/dev/full", path.with_name(f".{path.name}.tmp-{os.getpid()}"))


def _export_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    (tmp_path / "a_file").write_text("")
    (tmp_path / "old.onnx").write_text("old")
    return {
        "below a file": (["--out", str(tmp_path / "a_file" / "m.onnx")],
                         f"--out {tmp_path / 'a_file' / 'm.onnx'}: cannot write there"),
        "a folder": (["--out", str(tmp_path)], f"--out {tmp_path}: is a folder"),
        "exists": (["--out", str(tmp_path / "old.onnx")], "exists; --force overwrites it"),
        "disk full": (["--out", str(tmp_path / "old.onnx"), "--force"],
                      f"disk full: {tmp_path / 'old.onnx'}"),
    }


@pytest.mark.parametrize("case", ["below a file", "a folder", "exists", "disk full"])
def test_export_faults_are_one_line(case, small_checkpoint, tmp_path, capsys):
    from model import export

    argv, words = _export_cases(tmp_path)[case]
    if case == "disk full":
        _full_disk_at(tmp_path / "old.onnx")
    code = export.main(["--checkpoint", str(small_checkpoint), *argv])
    line = _error_line(capsys)
    assert code == (1 if case == "disk full" else 2)
    assert line.startswith("model.export: error: ") and words in line, line
    assert (tmp_path / "old.onnx").read_text() == "old"  # a failed export replaces nothing
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name and p.exists()]


def test_export_to_a_read_only_folder_is_one_line(read_only_disk, small_checkpoint, capsys):
    from model import export

    out = read_only_disk / "m.onnx"
    assert export.main(["--checkpoint", str(small_checkpoint), "--out", str(out)]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"model.export: error: --out {out}: ") and "not writable" in line


def test_export_refuses_an_opset_outside_the_supported_range(small_checkpoint, tmp_path, capsys):
    from model import export
    from model.inference.onnx_export import ExportError, export_onnx

    for opset in ("5", "10", "21"):
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--checkpoint", str(small_checkpoint), "--out",
                         str(tmp_path / "m.onnx"), "--opset", opset])
        assert exit_info.value.code == 2
        assert f"--opset: must be 11..20, got {opset}" in capsys.readouterr().err
    with pytest.raises(ExportError, match="--opset 9: must be 11..20"):  # the library as well
        export_onnx(small_checkpoint, tmp_path / "m.onnx", opset=9)
    assert not list(tmp_path.iterdir())


def test_export_at_an_opset_the_model_needs_more_than_is_one_line(small_checkpoint, tmp_path,
                                                                  monkeypatch, capsys):
    from model import export

    def missing_operator(*args, **kwargs):  # what the exporter raises for a missing operator
        raise torch.onnx.errors.UnsupportedOperatorError("aten::flip", 12, 13)

    monkeypatch.setattr(torch.onnx, "export", missing_operator)
    out = tmp_path / "m.onnx"
    assert export.main(["--checkpoint", str(small_checkpoint), "--out", str(out),
                        "--opset", "12"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"model.export: error: {small_checkpoint}: cannot be exported at "
                           "--opset 12: ") and "aten::flip" in line
    assert not list(tmp_path.iterdir())


def _onnx_with_meta(src: Path, value: str, out: Path) -> Path:
    import onnx

    graph = onnx.load(str(src))
    graph.metadata_props[0].value = value
    onnx.save(graph, str(out))
    return out


def _foreign_graph(meta_of: Path, out: Path, dtype: int, shape: list) -> Path:
    """Another model's graph (Identity) carrying a copy of a real export's metadata."""
    import onnx
    from onnx import helper

    x = helper.make_tensor_value_info("x", dtype, shape)
    y = helper.make_tensor_value_info("y", dtype, shape)
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])],
                                                "other", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    entry = model.metadata_props.add()
    entry.key, entry.value = "tranet_meta", onnx.load(str(meta_of)).metadata_props[0].value
    onnx.save(model, str(out))
    return out


def _onnx_cases(exported: Path, small_checkpoint: Path, tmp_path: Path) -> dict:
    from onnx import TensorProto

    meta = json.loads(__import__("onnx").load(str(exported)).metadata_props[0].value)
    del meta["au_ids"]
    return {
        "a .pt": (small_checkpoint, "a PyTorch checkpoint, not an ONNX model; use --backend torch"),
        "bad JSON": (_onnx_with_meta(exported, "{not json", tmp_path / "j.onnx"),
                     "'tranet_meta' metadata is not JSON"),
        "a JSON list": (_onnx_with_meta(exported, "[1, 2]", tmp_path / "l.onnx"),
                        "metadata is a JSON list, not an object"),
        "no au_ids": (_onnx_with_meta(exported, json.dumps(meta), tmp_path / "k.onnx"),
                      "metadata lacks ['au_ids']"),
        "float graph": (_foreign_graph(exported, tmp_path / "f.onnx", TensorProto.FLOAT,
                                       ["b", 3, 64, 64]), "not a graph written by"),
        "uint8 graph": (_foreign_graph(exported, tmp_path / "u.onnx", TensorProto.UINT8,
                                       ["b", 64, 64, 3]), "not a graph written by"),
    }


@pytest.mark.parametrize("case", ["a .pt", "bad JSON", "a JSON list", "no au_ids",
                                  "float graph", "uint8 graph"])
def test_predict_onnx_refuses_what_is_not_an_export(case, exported, small_checkpoint, tmp_path,
                                                     caplog):
    path, words = _onnx_cases(exported, small_checkpoint, tmp_path)[case]
    (tmp_path / "imgs").mkdir()
    code = predict.main(["--checkpoint", str(path), "--backend", "onnx", "--images",
                         str(tmp_path / "imgs"), "--out", str(tmp_path / "out")])
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert code == 2 and len(errors) == 1, errors
    assert words in errors[0] and str(path) in errors[0] and "\n" not in errors[0]


def test_onnx_graph_that_fails_on_a_batch_is_one_line(exported):
    from model.engine.checkpoint import CheckpointError
    from model.inference.backends import OnnxBackend

    backend = OnnxBackend(exported)
    with pytest.raises(CheckpointError, match=r"small.onnx: the ONNX model failed on a batch"):
        backend([np.zeros((32, 32, 3), np.uint8)])  # crops of another size than the graph's


def test_unknown_variant_in_a_checkpoint_is_one_line(small_checkpoint, tmp_path, capsys, caplog):
    from model import export

    state = load_checkpoint(small_checkpoint)
    state["model_config"]["variant"] = "nonesuch"
    bad = save_checkpoint(tmp_path / "bad.pt", state)
    assert export.main(["--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")]) == 2
    line = _error_line(capsys)
    # the validation table refuses it when the checkpoint is read, before a model is built
    assert line.startswith(f"model.export: error: {bad}: ") and "variant must be one of" in line
    assert "got 'nonesuch'" in line
    (tmp_path / "imgs").mkdir()
    assert predict.main(["--checkpoint", str(bad), "--images", str(tmp_path / "imgs"), "--out",
                         str(tmp_path / "out")]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "got 'nonesuch'" in errors[0]


def test_full_disk_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "last.pt", {"model": {"w": torch.ones(3)}, "epoch": 1})
    _full_disk_at(path)

    @handle_errors("model.train")
    def save_epoch_2(argv=None):
        save_checkpoint(path, {"model": {"w": torch.zeros(10_000)}, "epoch": 2})
        return 0

    assert save_epoch_2() == 1
    assert _error_line(capsys) == f"model.train: error: disk full: {path}"
    assert torch.load(path, weights_only=True)["epoch"] == 1  # the previous one, intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_a_really_full_disk_while_saving_a_checkpoint(tiny_disk):
    path = save_checkpoint(tiny_disk / "last.pt", {"model": {"w": torch.ones(3)}, "epoch": 1})
    with pytest.raises(OSError) as info:
        save_checkpoint(path, {"model": {"w": torch.zeros(100_000)}, "epoch": 2})
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tiny_disk.iterdir()] == ["last.pt"]


def test_synth_refuses_a_rate_below_the_video_writers_minimum(tmp_path):
    # A subprocess with a timeout: at --fps 0.1 synth used to loop for ever.
    done = subprocess.run([sys.executable, "-m", "pipeline.synth", "--out", str(tmp_path / "s"),
                           "--n-subjects", "1", "--frames", "5", "--fps", "0.1"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith(
        f"argument --fps: must be >= {synth.MIN_FPS:g} (the lowest rate OpenCV's MJPG/AVI "
        "writer accepts), got 0.1")
    with pytest.raises(ValueError, match="fps must be a finite number >= 1"):
        synth.SynthConfig(fps=0.5)


# --------------------------------------------------------------------------- 9. the document


def _reliability_tests() -> set[str]:
    """``FILE::TEST`` of every test marked ``reliability`` (module ``pytestmark`` or decorator)."""
    import ast

    def marked(node) -> bool:
        return "mark.reliability" in ast.unparse(node)

    found = set()
    for path in sorted((REPO / "tests").glob("test_*.py")):
        tree = ast.parse(path.read_text())
        whole = any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "pytestmark"
                                                      for t in n.targets) and marked(n.value)
                    for n in tree.body)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.startswith(
                    ("test_", "Test")):
                if whole or any(marked(d) for d in node.decorator_list):
                    found.add(f"{path.name}::{node.name}")
    return found


def test_reliability_doc_names_every_reliability_test_and_only_real_ones():
    import re

    text = "\n".join((REPO / "docs" / name).read_text()
                     for name in ("reliability.md", "reliability-faults.md"))
    named = {f"{Path(f).name}::{t}" for f, t in
             re.findall(r"`(?:tests/)?(test_\w+\.py)::(\w+)(?:\[[^\]]*\])?`", text)}
    marked = _reliability_tests()
    assert len(named) >= 20 and "test_reliability.py::test_option_ranges_are_usage_errors" in marked
    assert sorted(named - marked) == [], "named in docs/reliability.md, no such reliability test"
    assert sorted(marked - named) == [], "reliability tests docs/reliability.md does not name"
    for heading in ("Data safety", "One writer", "named by input", "Every value is checked",
                    "Bounded memory", "self-contained", "No tracebacks", "Task-aware"):
        assert re.search(rf"^## .*{heading}", text, re.M | re.I), heading

"""Issue 22 items 1-2: a tool deletes only what it made, and every writer takes the one lock.

Two writers at once: a real second process holds ``OUT/.lock`` (or an output file's lock) and the
command's ``main(argv)`` runs in-process; one test races two real ``model.export`` processes.
"""
import json
import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from test_reliability import TINY_TRAIN, dataset, trained  # noqa: F401  (the same fixtures)
from model import crossval, demo, export, predict, train as train_cmd
from model.engine import cross_validation, trainer
from model.engine.config import TrainConfig
from pipeline.folder_lock import FolderLock

pytestmark = pytest.mark.reliability  # docs/reliability.md names every test here

REPO = Path(__file__).resolve().parents[1]
MARKER = ".tranet-run.json"
ENV = {**os.environ, "PYTHONPATH": str(REPO)}

#: A second writer: takes the lock of a folder (or of one output file) and keeps it.
HOLDER = """
import sys, time
from pipeline.folder_lock import FolderLock
target, kind = sys.argv[1], sys.argv[2]
lock = FolderLock(target) if kind == "folder" else FolderLock.for_file(target)
lock.acquire()
print("ready", flush=True)
time.sleep(120)
"""


@contextmanager
def held_lock(target: Path, kind: str = "folder"):
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target), kind], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read()
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def _refused_by(line: str, holder: subprocess.Popen) -> None:
    assert "another run is writing here" in line, line
    assert f"pid {holder.pid}" in line and "command " in line and "since " in line, line


def _image_folder(path: Path) -> Path:
    import cv2

    path.mkdir(parents=True)
    cv2.imwrite(str(path / "a.png"), np.full((64, 64, 3), 120, np.uint8))
    return path


# --------------------------------------------------------------------------- one writer


@pytest.mark.parametrize("command, folds, leftover", [
    (train_cmd, ["--fold", "1"], "config.json"), (crossval, ["--folds", "1"], "tranet")],
    ids=["train", "crossval"])
def test_a_folder_another_writer_holds_is_refused(command, folds, leftover, dataset, tmp_path,
                                                  capsys):
    shards, manifest = dataset
    out = tmp_path / "run"
    out.mkdir()
    with held_lock(out) as holder:
        code = command.main(["--shards", str(shards), "--manifest", str(manifest), *folds,
                             "--out", str(out), *TINY_TRAIN])
        assert code == 1
        _refused_by(_error_line(capsys), holder)
    assert not (out / leftover).exists()


def test_demo_refuses_a_folder_another_writer_holds(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "prepare_data", _must_not_run)
    out = tmp_path / "demo"
    out.mkdir()
    with held_lock(out) as holder:
        assert demo.main(["--out", str(out), "--n-subjects", "4", "--k", "2"]) == 1
        _refused_by(_error_line(capsys), holder)
    assert [p.name for p in out.iterdir()] == [FolderLock.NAME]  # the killed holder's only


def test_predict_refuses_a_folder_another_writer_holds(trained, tmp_path, capsys):
    images = _image_folder(tmp_path / "images")
    out = tmp_path / "pred"
    out.mkdir()
    with held_lock(out) as holder:
        code = predict.main(["--checkpoint", str(trained / "best.pt"), "--images", str(images),
                             "--out", str(out)])
        assert code == 1
        _refused_by(_error_line(capsys), holder)
    assert not list(out.glob("*.json")) and not list(out.glob("*.csv"))


def test_export_refuses_a_file_another_writer_holds(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    with held_lock(out, "file") as holder:
        assert export.main(["--checkpoint", str(trained / "best.pt"), "--out", str(out)]) == 1
    _refused_by(capsys.readouterr().err, holder)  # the shared handler's one line
    assert not out.exists()


SLOW_LOCK = """
import time
try:
    from pipeline import folder_lock
    _acquire = folder_lock.FolderLock.acquire
    def _slow(self):
        taken = _acquire(self)
        time.sleep(3)  # the winner keeps the lock while the other process gets there
        return taken
    folder_lock.FolderLock.acquire = _slow
except ImportError:
    pass
"""


def test_two_real_exports_into_one_file(trained, tmp_path):
    pytest.importorskip("onnx")
    out = tmp_path / "model.onnx"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_LOCK)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(hook), str(REPO)])}
    argv = [sys.executable, "-m", "model.export", "--checkpoint", str(trained / "best.pt"),
            "--out", str(out)]
    procs = [subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p, *p.communicate(timeout=120)) for p in procs]
    refused = [(p, err) for p, _, err in results if "another run is writing here" in err]
    assert len(refused) == 1, [err[-500:] for _, _, err in results]
    loser, err = refused[0]
    winner = next(p for p in procs if p is not loser)
    assert loser.returncode == 1 and f"pid {winner.pid}" in err and "Traceback" not in err
    assert winner.returncode == 0 and out.is_file()
    assert not (tmp_path / f".{out.name}.lock").exists()


def test_a_reused_pid_is_a_stale_lock_not_a_live_writer(tmp_path, caplog):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / FolderLock.NAME
        # A lock of a killed run whose pid now belongs to an unrelated, later process.
        lock.write_text(json.dumps({"pid": sleeper.pid, "start": "1", "command": "python -m x",
                                    "since": "yesterday", "token": "old"}))
        with caplog.at_level("WARNING"):
            with FolderLock(tmp_path) as taken:
                assert taken.held()
        assert "stale lock" in caplog.text and f"pid {sleeper.pid}" in caplog.text
        assert "belongs to another process" in caplog.text
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_lock_names_its_owner_by_pid_start_time_and_command(tmp_path):
    from pipeline.folder_lock import process_start_time

    with FolderLock(tmp_path):
        owner = json.loads((tmp_path / FolderLock.NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["command"] and owner["since"]
    if sys.platform.startswith("linux"):
        assert owner["start"] == process_start_time(os.getpid()) is not None


# --------------------------------------------------------------------------- --fresh


def _must_not_run(*args, **kwargs):
    raise RuntimeError("a stage ran")


def test_demo_fresh_refuses_a_folder_it_did_not_make(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(demo, "prepare_data", _must_not_run)
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("months of work")
    assert demo.main(["--out", str(mine), "--fresh", "--n-subjects", "4", "--k", "2"]) == 2
    line = _error_line(capsys)
    assert str(mine) in line and MARKER in line and "nothing was removed" in line
    assert (mine / "chapter1.tex").read_text() == "months of work"


def _earlier_demo(tmp_path, monkeypatch):
    """A folder an earlier model.demo made (its marker and demo.md); the demo's data step must
    not run."""
    monkeypatch.setattr(demo, "prepare_data", _must_not_run)
    out = tmp_path / "demo"
    out.mkdir()
    (out / MARKER).write_text(json.dumps({"tool": "model.demo", "version": "0"}))
    (out / "demo.md").write_text("old demo")
    return out


def test_demo_fresh_checks_options_before_removing(tmp_path, capsys, monkeypatch):
    out = _earlier_demo(tmp_path, monkeypatch)
    assert demo.main(["--out", str(out), "--fresh", "--k", "3", "--folds", "9"]) == 2
    assert "--folds 9" in _error_line(capsys)
    assert (out / "demo.md").read_text() == "old demo"


def test_demo_fresh_replaces_its_own_folder(tmp_path, monkeypatch):
    out = _earlier_demo(tmp_path, monkeypatch)
    assert demo.main(["--out", str(out), "--fresh", "--n-subjects", "4", "--k", "2"]) == 1
    assert not (out / "demo.md").exists() and json.loads((out / MARKER).read_text())["tool"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo"]  # nothing left beside


def test_train_fresh_keeps_the_old_run_until_the_new_one_started(trained, dataset, tmp_path,
                                                                 capsys, monkeypatch):
    shards, manifest = dataset
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    stamp = (out / "last.pt").stat().st_mtime_ns
    argv = ["--shards", str(shards), "--fold", "1", "--out", str(out), "--fresh", *TINY_TRAIN]
    # A typo in --manifest: refused, and the old run is whole.
    assert train_cmd.main([*argv, "--manifest", str(manifest) + "x"]) == 2
    assert str(manifest) + "x" in _error_line(capsys)
    # The new run fails after its data was opened, before it started: the old run is whole.
    monkeypatch.setattr(trainer, "record_run_start", _must_not_run)
    with pytest.raises(RuntimeError, match="a stage ran"):
        train_cmd.main([*argv, "--manifest", str(manifest)])
    monkeypatch.undo()
    assert (out / "last.pt").stat().st_mtime_ns == stamp and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no half-built run beside
    assert not (out / FolderLock.NAME).exists()
    # A clean start replaces it.
    assert train_cmd.main([*argv, "--manifest", str(manifest)]) == 0
    assert (out / "last.pt").stat().st_mtime_ns != stamp
    assert json.loads((out / MARKER).read_text())["tool"] == "model.train"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_train_fresh_refuses_a_folder_of_other_files(dataset, tmp_path, capsys):
    shards, manifest = dataset
    out = tmp_path / "results"
    out.mkdir()
    (out / "metrics.csv").write_text("a colleague's numbers")
    (out / "notes.txt").write_text("keep me")
    assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                           "--out", str(out), "--fresh", *TINY_TRAIN]) == 2
    assert str(out) in _error_line(capsys)
    assert (out / "metrics.csv").read_text() == "a colleague's numbers"
    assert (out / "notes.txt").exists()


def test_crossval_fresh_refuses_a_fold_folder_it_did_not_make(dataset, tmp_path, capsys):
    shards, manifest = dataset
    fold = tmp_path / "cv" / "tranet" / "fold1"
    fold.mkdir(parents=True)
    (fold / "notes.txt").write_text("keep me")
    code = crossval.main(["--shards", str(shards), "--manifest", str(manifest), "--folds", "1",
                          "--out", str(tmp_path / "cv"), "--fresh", *TINY_TRAIN])
    assert code == 2
    assert str(fold) in _error_line(capsys)
    assert (fold / "notes.txt").exists() and not (fold / "config.json").exists()


def test_crossval_notices_a_manifest_rebuilt_at_the_same_path(trained, dataset, tmp_path):
    shards, manifest = dataset
    run = tmp_path / "cv" / "tranet" / "fold1"
    shutil.copytree(trained, run)
    rebuilt = tmp_path / "folds.json"
    rebuilt.write_text(Path(manifest).read_text())
    config = json.loads((run / "config.json").read_text())
    config["train_config"]["manifest"] = str(rebuilt)
    (run / "config.json").write_text(json.dumps(config))
    cfg = TrainConfig(**{**config["train_config"], "out": str(run)})
    cross_validation.check_same_recipe(cfg, run)  # same folds: reusable
    folds = json.loads(rebuilt.read_text())
    entry = folds["folds"][0]
    entry["train"], entry["test"] = entry["test"], entry["train"]  # rebuilt: other subjects
    rebuilt.write_text(json.dumps(folds))
    with pytest.raises(ValueError, match="now has subjects"):
        cross_validation.run_fold(cfg)


def test_crossval_command_refuses_a_run_of_other_subjects(trained, dataset, tmp_path, caplog):
    shards, manifest = dataset
    rebuilt = tmp_path / "folds.json"
    folds = json.loads(Path(manifest).read_text())
    entry = folds["folds"][0]
    entry["train"], entry["test"] = entry["test"], entry["train"]  # rebuilt: other subjects
    rebuilt.write_text(json.dumps(folds))
    run = tmp_path / "cv" / "tranet" / "fold1"
    shutil.copytree(trained, run)
    config = json.loads((run / "config.json").read_text())
    config["train_config"]["manifest"] = str(rebuilt)  # the same path, rebuilt since
    (run / "config.json").write_text(json.dumps(config))
    stamp = (run / "best.pt").stat().st_mtime_ns
    code = crossval.main(["--shards", str(shards), "--manifest", str(rebuilt), "--folds", "1",
                          "--out", str(tmp_path / "cv"), *TINY_TRAIN])
    assert code == 1
    assert "now has subjects" in caplog.text and "--fresh" in caplog.text
    assert (run / "best.pt").stat().st_mtime_ns == stamp
    assert not (tmp_path / "cv" / "table1.md").exists()

"""Hostile shards and manifests: self-contained files, declared shapes backed by the file,
subject names that cannot name a path (issue #22, items 5 and 6)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.build_folds import FoldError, load_folds
from pipeline.build_folds import main as build_folds_main
from pipeline.shard_checks import MAX_SHARD_FRAMES
from pipeline.shards import ShardError, ShardReader, ShardWriter, shard_name

pytestmark = pytest.mark.reliability  # docs/reliability.md names every test here

REPO = Path(__file__).resolve().parent.parent


def write_shard(path: Path, n: int = 6, subject: str = "SN001", size: int = 16) -> Path:
    rng = np.random.default_rng(1)
    with ShardWriter(path, size) as w:
        for i in range(n):
            w.append(rng.integers(0, 255, (size, size, 3), dtype=np.uint8), i,
                     rng.integers(0, 6, 12).astype(np.uint8),
                     rng.uniform(0, size, (66, 2)).astype(np.float32))
        w.commit(subject=subject, camera="left", threshold=3, nose_target=(8, 6),
                 chin_target=(8, 14), n_source_frames=n)
    return path


def replace_dataset(path: Path, name: str, make) -> None:
    """Swap dataset ``name`` of a finished shard for what ``make(f, name, old_array)`` creates."""
    with h5py.File(path, "r+") as f:
        old = f[name][()]
        del f[name]
        make(f, name, old)


FRAME_DATASETS = ("images", "frame_index", "intensity", "labels", "landmarks")


def redeclare(f: h5py.File, frames: int, chunk_rows: int | None = None,
              **options) -> dict[str, h5py.Dataset]:
    """Every per-frame dataset of the open shard ``f`` declared anew with ``frames`` rows (same
    row shape and type; ``chunk_rows`` rows a chunk, or contiguous), nothing written."""
    made = {}
    for name in FRAME_DATASETS:
        tail, dtype = f[name].shape[1:], f[name].dtype
        del f[name]
        chunks = (chunk_rows, *tail) if chunk_rows else None
        made[name] = f.create_dataset(name, shape=(frames, *tail), dtype=dtype, chunks=chunks,
                                      **options)
    return made


@pytest.fixture
def shard(tmp_path):
    return write_shard(tmp_path / "shards" / "SN001_left.h5")


@pytest.fixture
def outside(tmp_path):
    """A file outside the shards folder, the target of every redirect below."""
    path = tmp_path / "elsewhere" / "secret.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f["labels"] = np.ones((6, 8), np.uint8)
    raw = tmp_path / "elsewhere" / "secret.bin"
    raw.write_bytes(np.ones((6, 8), np.uint8).tobytes())
    return path, raw


def refused(path: Path, *words: str, **kwargs) -> str:
    with pytest.raises(ShardError) as info:
        ShardReader(path, **kwargs)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    for word in words:
        assert word in message
    return message


def test_external_storage_is_refused(shard, outside):
    _, raw = outside
    replace_dataset(shard, "labels", lambda f, name, old: f.create_dataset(
        name, shape=old.shape, dtype=old.dtype, external=[(str(raw), 0, old.nbytes)]))
    refused(shard, "'/labels'", "secret.bin", "own data")


def test_external_link_is_refused(shard, outside):
    target, _ = outside
    def link(f, name, old):
        f[name] = h5py.ExternalLink(str(target), "/labels")
    replace_dataset(shard, "labels", link)
    refused(shard, "external link", "secret.h5")


def test_external_link_in_a_subgroup_is_refused(shard, outside):
    target, _ = outside
    with h5py.File(shard, "r+") as f:
        f.create_group("extra/deeper")["x"] = h5py.ExternalLink(str(target), "/labels")
    refused(shard, "'/extra/deeper/x'", "external link")


def test_virtual_dataset_is_refused(shard, outside):
    target, _ = outside
    def virtual(f, name, old):
        layout = h5py.VirtualLayout(shape=old.shape, dtype=old.dtype)
        layout[:] = h5py.VirtualSource(str(target), "labels", shape=old.shape)
        f.create_virtual_dataset(name, layout)
    replace_dataset(shard, "labels", virtual)
    refused(shard, "virtual")


def test_declared_shape_without_data_is_refused(shard):
    """A contiguous dataset declaring 4000 frames that the file never stored reads as 4000
    frames of fill values: refused as not backed by the file."""
    with h5py.File(shard, "r+") as f:
        redeclare(f, 4000)["images"].attrs["encoding"] = "jpeg"
    refused(shard, "declares", "stores")


def test_frames_beyond_the_limit_are_refused_before_reading(shard):
    n = MAX_SHARD_FRAMES + 1
    with h5py.File(shard, "r+") as f:
        redeclare(f, n, 1024)
    refused(shard, f"declares {n} frames", "limit")


def test_datasets_of_different_lengths_are_refused_before_reading(shard):
    with h5py.File(shard, "r+") as f:
        del f["landmarks"]
        f.create_dataset("landmarks", shape=(2**40, 66, 2), dtype=np.float32, chunks=(1, 66, 2))
    refused(shard, "disagree in length", "landmarks 1099511627776")


def test_frames_beyond_the_manifest_are_refused(shard):
    assert len(ShardReader(shard, max_frames=6)) == 6
    refused(shard, "declares 6 frames", "5 expected", max_frames=5)


@pytest.mark.parametrize("subject", ["../elsewhere/SN003", "SN001/..", "sn001", "SN1234", ""])
def test_shard_subject_must_be_a_subject_name(tmp_path, subject):
    path = write_shard(tmp_path / "SN001_left.h5", subject=subject)
    refused(path, repr(subject), "not a subject name")


def manifest(tmp_path: Path, test_subject: str) -> Path:
    path = tmp_path / "folds.json"
    path.write_text(json.dumps({
        "scheme": "kfold", "au_ids": [1, 2], "threshold": 3, "image_size": 16,
        "folds": [{"fold": 1, "train": ["SN001"], "val": [], "test": [test_subject],
                   "au_weights": [1.0, 1.0]}]}))
    return path


@pytest.mark.parametrize("subject", ["../elsewhere/SN003", "/abs/SN003", "SN003\n", 3])
def test_manifest_subject_with_a_path_is_refused(tmp_path, subject):
    path = manifest(tmp_path, subject)
    with pytest.raises(FoldError) as info:
        load_folds(path)
    assert str(path) in str(info.value) and "not a subject name" in str(info.value)
    assert len(load_folds(manifest(tmp_path, "SN003"))["folds"]) == 1


def test_manifest_subject_path_never_reaches_a_shard_outside(tmp_path):
    """A manifest naming ``../elsewhere/SN003`` with a shard placed there: training refuses
    the manifest, naming it, before opening any shard."""
    from model.engine.data import DataError, fold_spec

    write_shard(tmp_path / "elsewhere" / "SN003_left.h5", subject="SN003")
    path = manifest(tmp_path, "../elsewhere/SN003")
    with pytest.raises(DataError, match="folds.json.*not a subject name"):
        fold_spec(path, 1)


# The child's own peak: /proc/self/status VmHWM belongs to the address space exec made, while
# getrusage's ru_maxrss carries over the parent's peak through fork + exec (a large pytest
# process made every child look ~1 GB).
MEASURE = textwrap.dedent("""
    import atexit, re, runpy, sys
    out = sys.argv.pop(1)
    def peak_kib():
        status = open("/proc/self/status").read()
        return re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)
    atexit.register(lambda: open(out, "w").write(peak_kib()))
    sys.argv[0] = "pipeline.build_folds"
    runpy.run_module("pipeline.build_folds", run_name="__main__")
""")


def run_build_folds(shards: Path, tmp_path: Path) -> tuple[subprocess.CompletedProcess, int]:
    rss = tmp_path / "rss.txt"
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(rss), "--shards", str(shards),
                           "--out", str(tmp_path / "folds")], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    return proc, int(rss.read_text()) * 1024  # VmHWM is in KiB


def test_2_to_the_40_frames_one_line_bounded_memory(tmp_path):
    """Every per-frame dataset declares 2^40 entries (chunked, never written): one line,
    exit 2, peak memory far below 500 MB."""
    shards = tmp_path / "shards"
    path = write_shard(shards / shard_name("SN001", "left"))
    with h5py.File(path, "r+") as f:
        redeclare(f, 2**40, 64)
    proc, peak = run_build_folds(shards, tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and "SN001_left.h5" in lines[0] and "1099511627776" in lines[0]
    assert "Traceback" not in proc.stderr
    assert peak < 500 * 2**20


def test_compressed_shard_declaring_many_frames_bounded_memory(tmp_path):
    """A small deflated shard whose zeros inflate to ~110 MB of landmarks (the code before
    this check loaded them all and built folds from them): refused with one line."""
    shards = tmp_path / "shards"
    path = write_shard(shards / shard_name("SN001", "left"))
    n = MAX_SHARD_FRAMES + 1
    with h5py.File(path, "r+") as f:
        for name, d in redeclare(f, n, min(n, 65536), compression="gzip").items():
            if name != "images":
                for start in range(0, n, 65536):
                    d[start:start + 65536] = 0
    assert path.stat().st_size < 1_000_000
    proc, peak = run_build_folds(shards, tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"declares {n} frames" in proc.stderr
    assert peak < 500 * 2**20


def test_build_folds_refuses_a_shard_with_an_external_link(tmp_path, outside, capsys):
    target, _ = outside
    shards = tmp_path / "shards"
    path = write_shard(shards / shard_name("SN001", "left"))
    replace_dataset(path, "labels", lambda f, name, old: f.__setitem__(
        name, h5py.ExternalLink(str(target), "/labels")))
    assert build_folds_main(["--shards", str(shards), "--out", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "SN001_left.h5" in err and "external link" in err and "secret.h5" in err


def test_training_refuses_a_shard_larger_than_its_manifest_before_reading(tmp_path):
    """open_shards with the fold's spec gives each shard the manifest's frame count as its
    limit: more frames than recorded is refused (a crafted or realigned shard), fewer is left
    to check_frame_counts' "changed since the folds were built"."""
    from model.engine.data import DataError, fold_spec, open_shards
    from trainer_fixtures import make_dataset

    shards, path = make_dataset(tmp_path, subjects=("SN001", "SN002", "SN003"), frames=6,
                                size=16)
    manifest_data = json.loads(path.read_text())
    manifest_data["folds"][0]["frames_per_subject"] = {"SN001": 6, "SN002": 6, "SN003": 4}
    path.write_text(json.dumps(manifest_data))
    spec = fold_spec(path, 1)
    assert len(open_shards(shards, ["SN001"], ["left"], "t", spec)) == 1
    with pytest.raises(DataError, match=r"SN003_left.h5: declares 6 frames.*rebuild the folds"):
        open_shards(shards, ["SN003"], ["left"], "t", spec)


def test_compressed_dataset_mostly_unwritten_is_refused(shard):
    """A deflated dataset whose chunks were mostly never written reads as fill values: its
    declared bytes exceed 1032x what the file stores for it."""
    n = 60_000
    with h5py.File(shard, "r+") as f:
        for name, d in redeclare(f, n, 64, compression="gzip").items():
            if name != "images":
                d[:6] = 1
    refused(shard, "dataset 'images' declares", "stores")


def test_labels_that_are_not_numbers_are_refused(shard):
    """Opaque bytes where labels belong are refused by type, naming the dataset."""
    replace_dataset(shard, "labels", lambda f, name, old: f.create_dataset(
        name, data=np.zeros(old.shape, dtype="V1")))
    refused(shard, "dataset 'labels' has type", "not a number")

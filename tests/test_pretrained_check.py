"""--pretrained checked before a run reads data, and the weight file identified by its sha256.

Issue 23, item 3 and the friction point "a missing --pretrained is reported only after all frames
are decoded, leaving an empty run folder": the file (or the hub) is checked before any shard is
opened and before --out is made; the file's sha256 and size are logged, matched against
model.weights.checksums.KNOWN_WEIGHTS and recorded in config.json and every checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import zipfile

import pytest
import torch

import fake_timm
from model import train as train_cmd
from model.engine import trainer
from model.engine.checkpoint import load_checkpoint
from model.nets.tranet import TRANetConfig, build_model
from model.weights import checksums, hub
from model.weights.checksums import KnownWeights
from model.weights.precheck import check_pretrained_option
from trainer_fixtures import make_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread

TINY = ["--preset", "small", "--epochs", "1", "--batches-per-epoch", "1", "--batch-size", "8",
        "--workers", "0", "--device", "cpu", "--quiet", "--eval-batch-size", "16"]


def _small_backbone_weights(path) -> str:
    """A state_dict of the small preset's SENet backbone, as a user would torch.save one."""
    torch.manual_seed(1)
    model = build_model(TRANetConfig(preset="small", image_size=32))
    torch.save(model.backbone.state_dict(), path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture
def no_data_read(monkeypatch):
    """Fail the test if the trainer starts reading shards."""
    def refuse(*_a, **_k):
        raise AssertionError("shards were read before --pretrained was checked")
    monkeypatch.setattr(trainer, "load_data", refuse)


def _absent_run(tmp_path) -> list[str]:
    # Shards that do not exist: the old order met them (after making --out) before the weights.
    return ["--shards", str(tmp_path / "no-shards"), "--manifest", str(tmp_path / "folds.json"),
            "--fold", "1", "--out", str(tmp_path / "run"), *TINY]


@pytest.mark.reliability  # docs/reliability.md names it
def test_missing_pretrained_fails_fast_before_data_and_leaves_no_run_folder(
        tmp_path, capsys, no_data_read) -> None:
    missing = tmp_path / "senet50_ft_weight.pkl"
    started = time.perf_counter()
    code = train_cmd.main([*_absent_run(tmp_path), "--pretrained", str(missing)])
    elapsed = time.perf_counter() - started
    line = _error_line(capsys)
    assert code == 2 and elapsed < 2.0, (code, elapsed)
    assert f"--pretrained {missing}: no such weight file" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["empty", "folder", "text", "zip"])
def test_unusable_pretrained_files_are_one_line_before_the_run(kind, tmp_path, capsys,
                                                               no_data_read) -> None:
    path = tmp_path / "weights.bin"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    elif kind == "text":
        path.write_text("<html>quota exceeded</html>")  # what a failed download often saves
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not torch")
    code = train_cmd.main([*_absent_run(tmp_path), "--pretrained", str(path)])
    line = _error_line(capsys)
    assert code == 2 and f"--pretrained {path}:" in line
    assert {"empty": "empty", "folder": "not a file", "text": "neither a torch.save",
            "zip": "not a torch.save file"}[kind] in line
    assert not (tmp_path / "run").exists()


def test_hub_offline_fails_before_data_and_leaves_no_run_folder(tmp_path, capsys, monkeypatch,
                                                                no_data_read) -> None:
    fake_timm.install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    code = train_cmd.main([*_absent_run(tmp_path), "--backbone", "timm:fake_convnet",
                           "--pretrained", "hub"])
    line = _error_line(capsys)
    assert code == 2 and "--pretrained hub: HF_HUB_OFFLINE is set" in line
    assert fake_timm.PRETRAINED_CALLS == [] and not (tmp_path / "run").exists()


def test_senet50_hub_is_refused_before_data(tmp_path, capsys, no_data_read) -> None:
    assert train_cmd.main([*_absent_run(tmp_path), "--pretrained", "hub"]) == 2
    assert "senet50_ft_weight.pkl" in _error_line(capsys) and not (tmp_path / "run").exists()


def test_pretrained_sha256_is_logged_and_recorded_in_config_and_checkpoints(
        tmp_path, caplog) -> None:
    shards, manifest = make_dataset(tmp_path / "data", frames=16)
    weights = tmp_path / "backbone.pth"
    digest = _small_backbone_weights(weights)
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert train_cmd.main(["--shards", str(shards), "--manifest", str(manifest), "--fold", "1",
                               "--out", str(out), "--pretrained", str(weights), *TINY]) == 0
    size = weights.stat().st_size
    assert f"--pretrained {weights}: sha256 {digest}, {size} bytes" in caplog.text
    assert checksums.NOT_KNOWN in caplog.text
    recorded = json.loads((out / "config.json").read_text())["pretrained"]
    assert (recorded["sha256"], recorded["size_bytes"], recorded["known"]) == (digest, size, None)
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(out / name)["pretrained"]["sha256"] == digest


def test_a_known_checksum_is_named(tmp_path, caplog, monkeypatch) -> None:
    weights = tmp_path / "senet50_ft_weight.pkl"
    digest = _small_backbone_weights(weights)
    entry = KnownWeights("senet50_ft_weight.pkl", "a test entry", sha256=digest.upper())
    monkeypatch.setattr(checksums, "KNOWN_WEIGHTS", (entry,))
    with caplog.at_level(logging.INFO):
        identity = check_pretrained_option(str(weights), "senet50")
    assert identity.sha256 == digest and identity.known == "senet50_ft_weight.pkl (a test entry)"
    assert "matches senet50_ft_weight.pkl (a test entry)" in caplog.text
    # The same name with another digest is not a match: the name alone proves nothing.
    monkeypatch.setattr(checksums, "KNOWN_WEIGHTS", (KnownWeights(entry.name, "x", "0" * 64),))
    assert check_pretrained_option(str(weights), "senet50").known is None


def test_the_known_list_holds_no_unsourced_checksum() -> None:
    """No public source states a sha256 of the VGGFace2 pickles (docs/model.md): none is listed."""
    names = {k.name: k for k in checksums.KNOWN_WEIGHTS}
    assert {"senet50_ft_weight.pkl", "senet50_scratch_weight.pkl"} <= set(names)
    assert all(k.sha256 is None for k in names.values())


def test_hub_probe_is_not_reached_for_a_file(tmp_path, monkeypatch) -> None:
    weights = tmp_path / "w.pth"
    _small_backbone_weights(weights)
    monkeypatch.setattr(hub, "host_reachable", lambda *a, **k: pytest.fail("probed the network"))
    assert check_pretrained_option(str(weights), "senet50").size_bytes == weights.stat().st_size


def test_crossval_checks_pretrained_before_any_fold(tmp_path, capsys, monkeypatch) -> None:
    from model import crossval as crossval_cmd

    monkeypatch.setattr(crossval_cmd, "crossval",
                        lambda *a, **k: pytest.fail("folds started before --pretrained was checked"))
    missing = tmp_path / "senet50_ft_weight.pkl"
    code = crossval_cmd.main(["--shards", str(tmp_path / "no-shards"), "--manifest",
                              str(tmp_path / "folds.json"), "--out", str(tmp_path / "cv"),
                              "--pretrained", str(missing)])
    assert code == 2 and f"--pretrained {missing}: no such weight file" in _error_line(capsys)
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("protocol", range(0, 6))
def test_every_pickle_protocol_of_a_weight_dict_passes_the_early_check(protocol, tmp_path) -> None:
    """The release pickle's protocol is not published; none may be refused before loading."""
    import collections
    import pickle

    import numpy as np

    for i, obj in enumerate(({"conv1.weight": np.ones((2, 2), np.float32)},
                             collections.OrderedDict(bias=np.zeros(3, np.float32)))):
        path = tmp_path / f"w{i}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        assert check_pretrained_option(str(path), "senet50").size_bytes == path.stat().st_size


def test_an_unreadable_file_is_one_line_before_the_run(tmp_path, capsys, monkeypatch,
                                                       no_data_read) -> None:
    import pathlib

    weights = tmp_path / "w.pth"
    _small_backbone_weights(weights)
    real_open = pathlib.Path.open

    def refuse(self, *args, **kwargs):  # chmod 000 does not stop root, so refuse the open here
        if self == weights:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "open", refuse)
    assert train_cmd.main([*_absent_run(tmp_path), "--pretrained", str(weights)]) == 2
    assert f"--pretrained {weights}: cannot be read (Permission denied)" in _error_line(capsys)
    assert not (tmp_path / "run").exists()

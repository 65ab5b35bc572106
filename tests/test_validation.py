"""One validation for every value, wherever it comes from (issue 22, item 4), and options that
cannot apply to the task refused naming both (item 8)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from model import crossval, predict, train as train_cmd
from model.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.engine.config import TrainConfig
from model.engine.recipes import RECIPE_DIR, load_recipe
from model.inference.backends import ONNX_META_KEY, OnnxBackend
from model.nets.regions import ALL_AUS
from model.nets.tranet import TRANetConfig, build_model
from pipeline.shards import ShardError, ShardReader
from pipeline.validation import ValidationError
from test_predict import AUS, NOSE, SIZE, _save_tiny
from trainer_fixtures import write_subject

pytestmark = pytest.mark.reliability  # docs/reliability.md names every test here

REPO = Path(__file__).resolve().parents[1]
BASE = ["--shards", "s", "--manifest", "m.json", "--fold", "1"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no message"
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE))
    return _save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", build_model(config).eval(),
                      config, None)


def _crafted(checkpoint: Path, tmp_path: Path, entry: str, **values) -> Path:
    state = load_checkpoint(checkpoint)
    state[entry] = {**(state.get(entry) or {}), **values}
    return save_checkpoint(tmp_path / f"crafted_{entry}.pt", state)


# --------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("value, words", [
    ("ten", "epochs must be an integer 1..100000, got 'ten'"),
    (0, "epochs must be an integer 1..100000, got 0"),
])
def test_a_recipe_value_of_the_wrong_type_or_range_is_one_line(value, words, tmp_path, capsys):
    recipe = json.loads((RECIPE_DIR / "cpu-demo.json").read_text())
    recipe["settings"]["epochs"] = value
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(recipe))
    code = train_cmd.main([*BASE, "--out", str(tmp_path / "run"), "--recipe", str(path)])
    assert code == 2
    line = _error_line(capsys)
    assert str(path) in line and words in line


def test_a_recipe_threshold_is_a_facs_level(tmp_path):
    recipe = json.loads((RECIPE_DIR / "cpu-demo.json").read_text())
    path = tmp_path / "mine.json"
    recipe["settings"]["threshold"] = 9
    path.write_text(json.dumps(recipe))
    with pytest.raises(ValidationError, match=r"mine.json: threshold must be a FACS letter A-E"):
        load_recipe(path)
    recipe["settings"]["threshold"] = "B"            # a letter is the same value as on the CLI
    path.write_text(json.dumps(recipe))
    assert load_recipe(path).settings["threshold"] == 2


# --------------------------------------------------------------------------- command line


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "0"], "--epochs: must be an integer 1..100000"),
    (["--lr", "nan"], "--lr: must be a number"),
    (["--momentum", "2"], "--momentum: must be a number 0..1"),
    (["--batch-size", "100000000"], "--batch-size: must be an integer 1..65536"),
    (["--image-size", "20000"], "--image-size: must be an integer 8..1024"),
])
def test_train_options_are_checked_by_the_same_table(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cmd.main([*BASE, "--out", str(tmp_path / "run"), *argv])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_a_config_built_in_code_is_checked_too():
    with pytest.raises(ValidationError, match="image_size must be an integer 8..1024, got 20000"):
        TrainConfig(shards="", manifest="", fold=1, out="", image_size=20000)
    with pytest.raises(ValidationError, match="flip must be true or false, got 'no'"):
        TrainConfig(shards="", manifest="", fold=1, out="", flip="no")


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("entry, values, words", [
    ("data", {"image_size": 20000}, "image_size must be an integer 8..1024, got 20000"),
    ("data", {"alignment": {"source_image_size": 100000}}, "source_image_size must be"),
    ("data", {"threshold": "Z"}, "threshold must be a FACS letter"),
    ("data", {"au_ids": [1, 99]}, "au_ids must be a list of AUs a supported dataset codes"),
    ("model_config", {"image_size": 100000}, "model_config: image_size must be"),
    ("model_config", {"variant": "resnet"}, "model_config: variant must be one of"),
    ("model_config", {"reduction": "16"}, "model_config: reduction must be an integer"),
    ("train_config", {"epochs": "ten"}, "train_config: epochs must be an integer"),
])
def test_a_crafted_checkpoint_is_refused_naming_file_and_field(checkpoint, tmp_path, entry,
                                                               values, words):
    bad = _crafted(checkpoint, tmp_path, entry, **values)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    assert str(bad) in str(info.value) and words in str(info.value)


def test_a_crafted_checkpoint_is_refused_before_any_large_allocation(checkpoint, tmp_path):
    """model.predict on a checkpoint asking for 100000-pixel frames: one line, exit 2, and the
    process grows by less than 300 MB past what its imports took (the frame alone would be
    30 GB; the imports alone differ by build: ~600 MB with a CUDA torch wheel)."""
    bad = _crafted(checkpoint, tmp_path, "data", image_size=100000,
                   alignment={"source_image_size": 100000})
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "blank.png"), np.zeros((48, 48, 3), np.uint8))
    # VmHWM: this process's own peak (ru_maxrss carries a large parent's over fork + exec)
    script = textwrap.dedent(f"""
        import re, sys
        from model import predict
        status = open("/proc/self/status").read()
        print("BASE_MB", int(re.search(r"VmRSS:\\s+(\\d+) kB", status).group(1)) // 1024)
        code = predict.main(["--checkpoint", {str(bad)!r}, "--images", {str(images)!r},
                             "--out", {str(tmp_path / 'out')!r}, "--device", "cpu"])
        status = open("/proc/self/status").read()
        print("MAXRSS_MB", int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) // 1024)
        sys.exit(code)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert f"{bad}: image_size must be an integer 8..1024, got 100000" in done.stderr
    peak = int(done.stdout.split("MAXRSS_MB")[1].split()[0])
    base = int(done.stdout.split("BASE_MB")[1].split()[0])
    assert peak - base < 300, (base, peak)


# --------------------------------------------------------------------------- ONNX metadata


def _onnx_with_meta(path: Path, meta: object) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["probabilities"])], "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    text = meta if isinstance(meta, str) else json.dumps(meta)
    helper.set_model_props(model, {ONNX_META_KEY: text})
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("meta, words", [
    ({"au_ids": AUS, "image_size": 100000}, "image_size must be an integer 8..1024, got 100000"),
    ({"au_ids": AUS, "image_size": 64, "model_config": {"variant": "nope"}},
     "model_config: variant must be one of"),
    ({"au_ids": "1,2", "image_size": 64}, "au_ids must be a list of AUs a supported dataset codes"),
    ({"au_ids": AUS, "image_size": 64, "threshold": 9}, "threshold must be a FACS letter"),
    ("{not json", "metadata is not JSON"),
])
def test_onnx_metadata_is_checked_like_a_checkpoint(tmp_path, meta, words):
    path = _onnx_with_meta(tmp_path / "m.onnx", meta)
    with pytest.raises(CheckpointError) as info:
        OnnxBackend(path)
    assert str(path) in str(info.value) and words in str(info.value)


# --------------------------------------------------------------------------- shard attrs


@pytest.mark.parametrize("attr, value, words", [
    ("image_size", 100000, "image_size must be an integer 8..1024, got 100000"),
    ("threshold", 9, "threshold must be a FACS letter A-E or an intensity 1-5, got 9"),
    ("au_ids", np.asarray([1, 3], np.int32), "au_ids must be a list of AUs a supported dataset codes"),
])
def test_shard_attrs_are_checked_by_the_same_fields(tmp_path, attr, value, words):
    shard = write_subject(tmp_path / "SN001_left.h5", "SN001", 4, 16, 0)
    ShardReader(shard).close()
    with h5py.File(shard, "r+") as f:
        f.attrs[attr] = value
    with pytest.raises(ShardError) as info:
        ShardReader(shard)
    assert str(shard) in str(info.value) and words in str(info.value)


# --------------------------------------------------------------------------- task rules (8)


@pytest.mark.parametrize("argv, option, task", [
    (["--task", "occurrence", "--intensity-loss", "ordinal"], "--intensity-loss", "occurrence"),
    (["--intensity-weight", "2"], "--intensity-weight", "occurrence"),
    (["--intensity-loss", "mse"], "--intensity-loss", "occurrence"),   # given, even at default
    (["--task", "intensity", "--intensity-weight", "2"], "--intensity-weight", "intensity"),
    (["--task", "intensity", "--tune-threshold", "val"], "--tune-threshold", "intensity"),
])
def test_train_refuses_an_option_the_task_cannot_use(argv, option, task, tmp_path, capsys):
    assert train_cmd.main([*BASE, "--out", str(tmp_path / "run"), *argv]) == 2
    line = _error_line(capsys)
    assert option in line and f"--task {task}" in line


def test_task_options_that_apply_are_accepted():
    cfg = TrainConfig(shards="", manifest="", fold=1, out="", task="both",
                      intensity_loss="ordinal", intensity_weight=1.0, tune_threshold="val")
    assert cfg.intensity_weight == 1.0
    TrainConfig(shards="", manifest="", fold=1, out="", task="intensity", intensity_loss="ordinal")


@pytest.fixture(scope="module")
def intensity_checkpoint(checkpoint, tmp_path_factory) -> Path:
    torch.manual_seed(1)
    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE), intensity_aus=ALL_AUS)
    folder = tmp_path_factory.mktemp("intensity")
    path = _save_tiny(folder / "both.pt", build_model(config).eval(), config, None)
    state = load_checkpoint(path)
    state["train_config"] = {"task": "intensity"}
    return save_checkpoint(folder / "intensity.pt", state)


@pytest.mark.parametrize("option", [["--decision-threshold", "0.3"], ["--calibrate"]])
def test_predict_refuses_occurrence_options_on_an_intensity_model(intensity_checkpoint, option,
                                                                  tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "blank.png"), np.zeros((48, 48, 3), np.uint8))
    code = predict.main(["--checkpoint", str(intensity_checkpoint), "--images", str(images),
                         "--out", str(tmp_path / "out"), *option])
    assert code == 2
    line = _error_line(capsys)
    assert option[0] in line and f"{intensity_checkpoint}: trained with --task intensity" in line


def test_crossval_refuses_test_camera_on_an_intensity_run(tmp_path, caplog):
    code = crossval.main([*BASE[:4], "--folds", "1", "--out", str(tmp_path / "cv"), "--task",
                          "intensity", "--test-camera", "right"])
    assert code != 0
    assert "--test-camera reports the occurrence F1" in caplog.text
    assert "--task intensity trains no occurrence head" in caplog.text

"""``model.export --int8`` (issue 25, item 6): static int8 quantisation calibrated on what
``model.predict`` sees, its accuracy against fp32 on the twin's held-out videos, its bad inputs,
onnxruntime's thread default and ``model.predict_bench``'s int8 row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from model.benchmarks.synthetic import make_face_video, make_untrained_checkpoint  # noqa: E402
from model.export import main as export_main  # noqa: E402
from model.inference.backends import OnnxBackend, default_network_threads  # noqa: E402
from model.inference.video_io import write_video  # noqa: E402
from model.predict import main as predict_main  # noqa: E402

AUS = [1, 2, 4, 6, 9, 12, 25, 26]


@pytest.fixture(scope="module")
def trained_demo(small_demo) -> tuple[Path, dict]:
    """The session's small demo (tests/conftest.py): a trained small checkpoint with an
    intensity head, its twin and its folds."""
    out, report, _ = small_demo
    return out, report


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> Path:
    return make_untrained_checkpoint(tmp_path_factory.mktemp("ck") / "small.pt", "small", 64,
                                     au_ids=AUS)


def _props(path: Path) -> dict:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_int8_keeps_f1_and_icc_of_fp32_on_held_out_twin_videos(trained_demo, tmp_path):
    import onnx

    from model.demo import predict_and_score
    from pipeline.datasets.disfa import discover

    demo, report = trained_demo
    checkpoint = demo / "runs" / "fold1" / "best.pt"
    layout = discover(demo / "disfa_twin")
    fold = report["folds"][0]
    # every subject the model trained or was selected on: calibration must cover their variety
    calibration = [layout.subjects[s].videos["left"] for s in fold["train"] + fold["val"]]
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(fp32)]) == 0
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(int8), "--int8",
                        "--calibration", *map(str, calibration),
                        "--calibration-faces", "64"]) == 0
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    props = _props(int8)
    meta = json.loads(props["tranet_meta"])
    assert props["model_card"] == _props(fp32)["model_card"]    # the card is carried over
    assert meta["precision"] == "int8" and "precision" not in _props(fp32)["tranet_meta"]
    assert meta["quantization"]["calibration"] == {
        "source": "frames", "inputs": [str(p) for p in calibration], "faces": 64}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32.onnx", "int8.onnx"]
    scores = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        scores[name] = predict_and_score(model, demo / "disfa_twin", fold["test"],
                                         tmp_path / f"pred_{name}", quiet=True, backend="onnx")
    a, b = scores["fp32"], scores["int8"]
    assert a["faces_found"] == b["faces_found"] > 0.9 * a["frames"]
    # the quantised model computes other numbers, and keeps F1 within 1 point, ICC within 0.02
    p = [f"AU{x:02d}_p" for x in AUS]
    first = sorted((tmp_path / "pred_fp32").glob("*.csv"))[0]
    from model.inference.csv_format import read_predictions
    diff = (read_predictions(first)[p] - read_predictions(
        tmp_path / "pred_int8" / first.name)[p]).abs().to_numpy()
    assert np.nanmax(diff) > 0
    assert abs(a["metrics"]["mean_f1"] - b["metrics"]["mean_f1"]) <= 0.01, (a, b)
    assert abs(a["intensity"]["mean_icc"] - b["intensity"]["mean_icc"]) <= 0.02, (a, b)


def test_int8_calibrates_on_a_twin_by_default_and_on_shards(trained_demo, untrained, tmp_path):
    demo, _ = trained_demo
    out = tmp_path / "twin.onnx"
    assert export_main(["--checkpoint", str(untrained), "--out", str(out), "--int8",
                        "--calibration-faces", "8"]) == 0
    calibration = json.loads(_props(out)["tranet_meta"])["quantization"]["calibration"]
    assert calibration["source"] == "twin" and calibration["faces"] == 8
    shards = tmp_path / "shards.onnx"
    assert export_main(["--checkpoint", str(untrained), "--out", str(shards), "--int8",
                        "--calibration-shards", str(demo / "shards"),
                        "--calibration-faces", "20"]) == 0
    calibration = json.loads(_props(shards)["tranet_meta"])["quantization"]["calibration"]
    assert calibration["source"] == "shards" and calibration["faces"] == 20
    backend = OnnxBackend(shards)
    crops = list(np.random.default_rng(0).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8))
    probabilities, _ = backend(crops)
    assert probabilities.shape == (3, len(AUS)) and np.isfinite(probabilities).all()


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    corrupt = tmp / "corrupt.avi"
    corrupt.write_bytes(b"RIFF not a video at all")
    notes = tmp / "notes.txt"
    notes.write_text("not a video")
    empty = tmp / "empty"
    empty.mkdir()
    blank = write_video(tmp / "blank.avi", [np.full((240, 320, 3), 90, np.uint8)] * 3, 10.0)
    return {"corrupt video": (["--int8", "--calibration", str(corrupt)], str(corrupt)),
            "unsupported file": (["--int8", "--calibration", str(notes)], str(notes)),
            "missing file": (["--int8", "--calibration", str(tmp / "nope.mp4")], "nope.mp4"),
            "folder without images": (["--int8", "--calibration", str(empty)], str(empty)),
            "no face": (["--int8", "--calibration", str(blank)], "no face found"),
            "without --int8": (["--calibration", str(blank)], "only with --int8"),
            "both sources": (["--int8", "--calibration", str(blank), "--calibration-shards",
                              str(empty)], "give one of them"),
            "shards folder without shards": (["--int8", "--calibration-shards", str(empty)],
                                             "no .h5 shards")}


@pytest.mark.reliability  # docs/reliability.md names it
def test_int8_bad_calibration_input_is_one_line(untrained, tmp_path, capsys):
    for case, (argv, named) in _bad_inputs(tmp_path).items():
        out = tmp_path / f"{case.replace(' ', '_')}.onnx"
        code = export_main(["--checkpoint", str(untrained), "--out", str(out), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        errors = [line for line in err if "error:" in line]
        assert code == 2, case
        assert len(errors) == 1 and named in errors[0], (case, err)
        assert "Traceback" not in "\n".join(err), case
        assert not out.exists() and not list(tmp_path.glob(".*.onnx*")), case


def test_onnx_thread_default_and_summary_records_threads(untrained, tmp_path, monkeypatch):
    assert [default_network_threads(n) for n in (1, 2, 4, 8, 16, 64)] == [1, 2, 4, 8, 16, 64]
    onnx_path = tmp_path / "small.onnx"
    assert export_main(["--checkpoint", str(untrained), "--out", str(onnx_path)]) == 0
    assert OnnxBackend(onnx_path).threads == default_network_threads()
    assert OnnxBackend(onnx_path, threads=3).threads == 3
    video = make_face_video(tmp_path / "clip.avi", 3, size=(400, 300), fps=10.0)
    for threads, expected in ((None, default_network_threads()), ("2", 2)):
        out = tmp_path / f"out_{threads}"
        argv = ["--checkpoint", str(onnx_path), "--video", str(video), "--out", str(out),
                "--no-progress"] + (["--threads", threads] if threads else [])
        assert predict_main(argv) == 0
        assert json.loads((out / "predict_summary.json").read_text())["threads"] == expected


def test_predict_bench_times_the_int8_export(tmp_path, capsys):
    from model.predict_bench import main as bench_main

    path = tmp_path / "bench.json"
    assert bench_main(["--presets", "small", "--backends", "onnx", "onnx-int8", "--frames", "6",
                       "--image-size", "64", "--threads", "1", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert [r["backend"] for r in rows] == ["onnx", "onnx-int8"]
    for row in rows:
        assert row["threads"] == 1 and row["processing_fps"] > 0 and row["cpu_ms_per_frame"] > 0
    assert "onnx-int8" in capsys.readouterr().out


def test_every_convolution_runs_in_int8(untrained, tmp_path):
    """The exporter hands equal biases (an untrained model's zeros) to several layers through
    Identity nodes; unshared before quantising, onnxruntime fuses every Conv into QLinearConv
    (left shared, most stayed float and int8 ran slower than fp32)."""
    import onnx
    import onnxruntime as ort

    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    assert export_main(["--checkpoint", str(untrained), "--out", str(fp32)]) == 0
    exported = onnx.load(str(fp32)).graph.node
    assert any(n.op_type == "Identity" for n in exported)        # the case this is about
    convs = sum(n.op_type == "Conv" for n in exported)
    from model.inference.quantize import quantize_export

    faces = np.random.default_rng(1).integers(0, 256, (8, 64, 64, 3), dtype=np.uint8)
    quantize_export(fp32, int8, faces, {"source": "test"})
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert ops.count("QLinearConv") == convs > 0 and "Conv" not in ops

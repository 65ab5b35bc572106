"""model.predict's CSV is OpenFace 2.2's (issue 21, items 10-12): header separator, column order,
number formats, no-face rows, every estimated intensity; it reads with py-feat's OpenFace reader
and with pandas; --calibrate and the docs' Python API example run on current pandas."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from model.inference.csv_format import (OPENFACE_INTENSITY_AUS, OPENFACE_PRESENCE_AUS,
                                        read_predictions)
from model.nets.regions import ALL_AUS
from model.nets.tranet import TRANetConfig, build_model
from model.predict import main
from model.benchmarks.synthetic import make_face_video
from test_predict import AUS, CHIN, NOSE, SIZE, _save_tiny

ROOT = Path(__file__).resolve().parent.parent

# py-feat 2.1.5 (MIT), feat/utils/__init__.py: the columns its OpenFace reader hands to
# Fex(au_columns=...), so that Fex.aus is frame[these]; and feat/utils/io.py read_openface():
# pd.read_csv(path, sep=","), then columns.str.strip(" "). Copied as expectations, since py-feat
# itself pulls torchvision, timm, torchcodec and xgboost into the test environment.
PYFEAT_AU_LIST = [1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26, 45]
PYFEAT_AU_COLUMNS = ([f"AU{a:02d}_r" for a in PYFEAT_AU_LIST]
                     + sorted(f"AU{a:02d}_c" for a in PYFEAT_AU_LIST + [28]))
PYFEAT_POSE_COLUMNS = ["pose_Tx", "pose_Ty", "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz"]


def pyfeat_read_openface(path: Path) -> pd.DataFrame:
    table = pd.read_csv(path, sep=",")
    table.columns = table.columns.str.strip(" ")
    return table


@pytest.fixture(scope="module")
def both_heads(tmp_path_factory) -> Path:
    """Occurrence of the 8 evaluated AUs, intensity of DISFA's 12."""
    torch.manual_seed(2)
    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE), intensity_aus=ALL_AUS)
    model = build_model(config)
    with torch.no_grad():  # intensities spread over 0-5, so the written values differ
        for branch in model.branches.values():
            branch.intensity.bias.fill_(2.5)
            branch.intensity.weight.mul_(40.0)
    return _save_tiny(tmp_path_factory.mktemp("ckpt") / "both.pt", model.eval(), config, None)


@pytest.fixture(scope="module")
def written(both_heads, tmp_path_factory) -> tuple[Path, Path, list[bool]]:
    """The same video written in both formats (one run each, landmarks on)."""
    pattern = [True, True, False, True]
    root = tmp_path_factory.mktemp("of")
    video = make_face_video(root / "clip.avi", len(pattern), size=(480, 320), fps=20.0,
                            face_present=pattern)
    for fmt in ("openface", "plain"):
        assert main(["--checkpoint", str(both_heads), "--video", str(video), "--out",
                     str(root / fmt), "--landmarks", "--format", fmt, "--no-progress"]) == 0
    return root / "openface" / "clip.csv", root / "plain" / "clip.csv", pattern


def test_openface_header_order_and_separator(written) -> None:
    path, _, pattern = written
    lines = path.read_text().splitlines()
    header = lines[0].split(", ")
    assert all(name == name.strip() and "," not in name for name in header)
    assert all(len(line.split(", ")) == len(header) for line in lines[1:])
    assert len(lines) == 1 + len(pattern)
    landmarks = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    r_cols = [f"AU{a:02d}_r" for a in sorted(set(OPENFACE_INTENSITY_AUS) | set(ALL_AUS))]
    c_cols = [f"AU{a:02d}_c" for a in sorted(set(OPENFACE_PRESENCE_AUS) | set(AUS))]
    openface = (["frame", "face_id", "timestamp", "confidence", "success"] + PYFEAT_POSE_COLUMNS
                + landmarks + r_cols + c_cols)
    assert header[:len(openface)] == openface
    ours = ["face_found", "face_score", "face_x", "face_y", "face_w", "face_h"]
    assert header[len(openface):] == ours + [f"AU{a:02d}_p" for a in sorted(AUS)]


def test_openface_number_formats_and_no_face_rule(written) -> None:
    path, _, pattern = written
    lines = path.read_text().splitlines()
    header = lines[0].split(", ")
    rows = [dict(zip(header, line.split(", "))) for line in lines[1:]]
    formats = {"frame": r"\d+", "face_id": r"\d+", "success": r"[01]", "timestamp": r"\d+\.\d{3}",
               "confidence": r"\d\.\d{2}", "pose_Tz": r"-?\d+\.\d", "pose_Rx": r"-?\d+\.\d{3}",
               "x_30": r"\d+\.\d", "AU05_r": r"\d\.\d{2}", "AU01_c": r"[01]\.0"}
    for row in rows:
        for column, pattern_ in formats.items():
            assert re.fullmatch(pattern_, row[column]), (column, row[column])
    for row, face in zip(rows, pattern):
        # AUs this model does not estimate: OpenFace's column is there, empty on every row
        assert row["AU07_r"] == "" and row["AU28_c"] == "" and row["AU05_c"] == ""
        if face:
            assert row["face_found"] == "1" and row["AU01_p"] != ""
        else:  # OpenFace's failed-frame row: zeros in its columns; ours empty
            assert row["success"] == "0" and row["face_found"] == "0"
            assert {row[c] for c in ("confidence", "pose_Rx", "pose_Tz", "x_0", "AU05_r",
                                     "AU26_r", "AU01_c")} <= {"0.0", "0.00", "0.000"}
            assert row["AU01_p"] == "" and row["face_x"] == "" and row["face_score"] == ""


def test_readers_and_every_estimated_intensity(written) -> None:
    path, plain_path, pattern = written
    pyfeat = pyfeat_read_openface(path)
    aus = pyfeat[PYFEAT_AU_COLUMNS]            # what py-feat's Fex.aus selects
    assert len(aus) == len(pattern)
    assert pyfeat[PYFEAT_POSE_COLUMNS].notna().all().all()
    table = read_predictions(path)
    assert list(table.columns) == list(pyfeat.columns)
    assert all(pd.api.types.is_numeric_dtype(t) for t in table.dtypes)
    faces = table[table["face_found"] == 1]
    intensity = faces[[f"AU{a:02d}_r" for a in ALL_AUS]].to_numpy()   # all 12, not only the 8
    assert np.isfinite(intensity).all() and ((intensity >= 0) & (intensity <= 5)).all()
    assert intensity.std() > 0 and faces["pose_Tz"].gt(100).all()
    plain = read_predictions(plain_path)
    assert ", " not in plain_path.read_text().splitlines()[0]
    assert set(plain.columns) < set(table.columns)    # no padding with OpenFace's other AUs
    np.testing.assert_allclose(plain.loc[faces.index, "AU05_r"], faces["AU05_r"], atol=5e-3)
    no_face = plain[plain["face_found"] == 0]
    assert no_face[["AU05_r", "AU01_c", "pose_Rx", "x_0"]].isna().all().all()


def _api_example() -> str:
    text = (ROOT / "docs" / "predict.md").read_text()
    section = text[text.index("### Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_api_example_runs_with_calibration(tmp_path, both_heads, monkeypatch) -> None:
    """The docs' Python API example, as written, on a video with a face in every frame (the
    case pandas >= 3 refused: float32 probabilities calibrated in place)."""
    pytest.importorskip("onnxruntime")
    from model.export import main as export_main
    from model.benchmarks.synthetic import astronaut_head

    monkeypatch.chdir(tmp_path)
    checkpoint = tmp_path / "runs" / "demo" / "runs" / "fold1" / "best.pt"
    checkpoint.parent.mkdir(parents=True)
    shutil.copy(both_heads, checkpoint)
    make_face_video(tmp_path / "clip.mp4", 5, size=(480, 320), fps=20.0,
                    face_present=[True] * 5)
    rgb = np.full((320, 400, 3), 120, np.uint8)
    rgb[20:300, 60:340] = astronaut_head()
    import cv2

    cv2.imwrite("photo.jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert export_main(["--checkpoint", str(checkpoint), "--out", "model.onnx"]) == 0
    scope: dict = {"rgb": rgb}
    exec(compile(_api_example(), "docs/predict.md", "exec"), scope)  # noqa: S102
    calibrated = scope["table"]
    assert os.path.exists("model.onnx") and len(calibrated) == 5
    assert calibrated["face_found"].eq(1).all() and scope["everyone"].config.faces == "all"
    probs = calibrated[[f"AU{a:02d}_p" for a in AUS]].to_numpy(float)
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_docs_state_the_measured_pose_difference_from_openface() -> None:
    """docs/predict.md's figures against OpenFace are what pose.openface_agreement measures on
    OpenFace's own output (20 rows of its test clip, 640x360; tests/data names the source)."""
    from model.inference.pose import openface_agreement

    rows = pd.read_csv(ROOT / "tests" / "data" / "openface2_test_rows.csv", comment="#")
    measured = openface_agreement(rows, (640, 360))
    docs = " ".join((ROOT / "docs" / "predict-outputs.md").read_text().split())
    stated = re.search(r"pitch (\d+\.\d) degrees, yaw (\d+\.\d) degrees, roll (\d+\.\d) degrees",
                       docs)
    assert stated, "docs/predict.md must state the measured difference per axis"
    for axis, value in zip(("pitch", "yaw", "roll"), stated.groups()):
        assert measured["mean_abs_difference_deg"][axis] == pytest.approx(float(value), abs=0.05)
    low, high = re.search(r"Measured: (\d\.\d\d)-(\d\.\d\d) on OpenFace's own landmarks",
                          docs).groups()
    assert round(measured["confidence_range"][0], 2) == pytest.approx(float(low), abs=0.01)
    assert round(measured["confidence_range"][1], 2) == pytest.approx(float(high), abs=0.01)


def test_intensity_columns_follow_the_output_width() -> None:
    """New exports carry every intensity of the head; older ones only the occurrence AUs'."""
    from model.engine.checkpoint import CheckpointError
    from model.inference.backends import intensity_au_ids

    meta = {"au_ids": [1, 2], "model_config": {"intensity_aus": [1, 2, 4]}}
    assert intensity_au_ids(meta) == [1, 2, 4] and intensity_au_ids(meta, 3) == [1, 2, 4]
    assert intensity_au_ids(meta, 2) == [1, 2]
    with pytest.raises(CheckpointError, match="intensity output has 5 columns"):
        intensity_au_ids(meta, 5)

"""model.predict for real recordings: OpenFace-compatible CSV, face choice, tracking several
faces, head pose, calibration/smoothing, ONNX, batch runs and the Python API."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from skimage import data

from model.inference.csv_format import read_predictions
from model.inference.pose import head_pose, project_generic_face
from model.inference.postprocess import calibrate_probabilities, postprocess
from model.inference.video_io import write_video
from model.predict import main
from model.benchmarks.synthetic import make_face_video, make_untrained_checkpoint
from pipeline.face_landmarks import FaceLandmarker, choose_face

AUS = [1, 2, 4, 6, 9, 12, 25, 26]

# What py-feat's OpenFace reader (feat.utils.io.read_openface, feat.utils) expects of an
# OpenFace CSV, written down here rather than imported: headers are stripped of spaces; time
# columns are frame and timestamp; confidence and success follow; head pose is
# pose_Rx/pose_Ry/pose_Rz; AU columns are AUxx_r (intensity) and AUxx_c (presence) with
# two-digit AU numbers; 2D landmarks are x_0..x_67 then y_0..y_67.
PYFEAT_TIME_COLUMNS = ["frame", "timestamp"]
PYFEAT_QUALITY_COLUMNS = ["confidence", "success"]
PYFEAT_POSE_ROTATION = ["pose_Rx", "pose_Ry", "pose_Rz"]
PYFEAT_LANDMARKS = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
OPENFACE_AU = re.compile(r"^AU\d{2}_[rc]$")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained small-preset checkpoint at 64 px (epoch 0: predict warns about it)."""
    return make_untrained_checkpoint(tmp_path_factory.mktemp("ck") / "small.pt", "small", 64,
                                     au_ids=AUS)


def _face_crop(flip: bool = False) -> np.ndarray:
    """The astronaut's face with a margin (190x180 px, face box ~88 px)."""
    crop = np.ascontiguousarray(data.astronaut()[40:230, 140:320])
    return np.ascontiguousarray(crop[:, ::-1]) if flip else crop


def _background(width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return (cv2.GaussianBlur(cv2.resize(noise, (width, height)), (0, 0), 3) // 2 + 60
            ).astype(np.uint8)


def _two_face_video(path: Path, n: int, a_present=None, crossing: bool = True) -> tuple[Path, list]:
    """Face A (top row) moves right, face B (bottom row, mirrored) moves left (or stays) and is
    pasted over A's patch, so their paths cross. Returns the path and A's x per frame."""
    width, height = 520, 330
    a, b = _face_crop(), _face_crop(flip=True)
    background = _background(width, height)
    xs_a = np.linspace(0, width - a.shape[1], n).astype(int)
    xs_b = xs_a[::-1] if crossing else np.full(n, width - b.shape[1])
    present = a_present if a_present is not None else [True] * n
    frames = []
    for i in range(n):
        frame = background.copy()
        if present[i]:
            frame[0:a.shape[0], xs_a[i]:xs_a[i] + a.shape[1]] = a
        frame[140:140 + b.shape[0], xs_b[i]:xs_b[i] + b.shape[1]] = b
        frames.append(frame)
    return write_video(path, frames, fps=10.0), list(xs_a)


def _run(checkpoint: Path, out: Path, *inputs: str, extra=()) -> int:
    return main(["--checkpoint", str(checkpoint), *inputs, "--out", str(out), "--no-progress",
                 *extra])


def test_openface_reader_expectations_and_sidecar(checkpoint, tmp_path, caplog) -> None:
    pattern = [True, True, False, True, True, False]
    video = make_face_video(tmp_path / "clip.avi", len(pattern), size=(400, 300), fps=20.0,
                            face_present=pattern)
    with caplog.at_level(logging.WARNING):
        assert _run(checkpoint, tmp_path / "out", "--video", str(video),
                    extra=["--landmarks", "--format", "plain"]) == 0
    assert "epoch 0" in caplog.text and "not a selected model" in caplog.text
    header = (tmp_path / "out" / "clip.csv").read_text().splitlines()[0].split(",")
    assert [c.strip() for c in header] == header          # plain: "," alone, nothing to strip
    table = read_predictions(tmp_path / "out" / "clip.csv")
    assert header[:2] == ["frame", "face_id"] and header[2:5] == ["timestamp", "confidence",
                                                                  "success"]
    for column in PYFEAT_TIME_COLUMNS + PYFEAT_QUALITY_COLUMNS + PYFEAT_POSE_ROTATION:
        assert column in header
    assert [c for c in header if c.startswith(("x_", "y_"))] == PYFEAT_LANDMARKS
    au_columns = [c for c in header if OPENFACE_AU.match(c)]
    assert au_columns == [f"AU{a:02d}_c" for a in AUS]     # plain, no intensity head: no AUxx_r
    assert [c for c in header if c.endswith("_p")] == [f"AU{a:02d}_p" for a in AUS]
    # one row per frame, 1-based, the no-face frames included with success = 0
    assert table["frame"].tolist() == list(range(1, len(pattern) + 1))
    assert table["success"].tolist() == [int(p) for p in pattern]
    assert (table["face_id"] == 0).all()
    assert table.loc[table.success == 1, "confidence"].between(0.3, 1).all()
    assert table.loc[table.success == 0, "confidence"].eq(0).all()
    assert set(table["AU01_c"].dropna().unique()) <= {0, 1}
    meta = json.loads((tmp_path / "out" / "clip.meta.json").read_text())
    assert meta["label_threshold"] == 3 and meta["decision_threshold"] == 0.5
    assert "intensity >= 3" in meta["label_meaning"] and meta["complete"] is True
    assert meta["rows"] == len(pattern) and meta["selected"] is False


def test_face_choice_score_and_size_astronaut() -> None:
    image = data.astronaut()
    faces = FaceLandmarker(min_score=-0.5).detect_all(image)
    patch = max(faces, key=lambda f: f.area)
    face = max(faces, key=lambda f: f.score)
    assert patch.area > face.area and patch.score < 0.1 < 1.0 < face.score  # the patch is larger
    chosen, doubtful = choose_face(faces)
    assert chosen is face and not doubtful
    weak, doubtful = choose_face([patch])
    assert weak is patch and doubtful                                       # a doubtful choice
    assert FaceLandmarker(min_score=-0.5).detect(image).box == face.box


def test_two_crossing_faces_keep_their_ids(checkpoint, tmp_path) -> None:
    video, xs_a = _two_face_video(tmp_path / "two.avi", 16)
    assert _run(checkpoint, tmp_path / "out", "--video", str(video),
                extra=["--faces", "all", "--detect-every", "3"]) == 0
    table = read_predictions(tmp_path / "out" / "two.csv")
    assert not table.duplicated(["frame", "face_id"]).any()
    assert sorted(table["frame"].unique()) == list(range(1, 17))
    found = table[table.face_found == 1]
    assert sorted(found["face_id"].unique()) == [0, 1]
    assert found.groupby("face_id")["frame"].count().min() >= 14
    top = found[found.face_y < 100]
    assert top["face_id"].nunique() == 1                      # no swap: the top face keeps one id
    moving_right = top.sort_values("frame")["face_x"].to_numpy()
    assert np.all(np.diff(moving_right) > 0)
    bottom = found[found.face_y >= 100]
    assert bottom["face_id"].nunique() == 1 and set(bottom.face_id) != set(top.face_id)


def test_face_gone_ten_frames_keeps_its_id(checkpoint, tmp_path) -> None:
    present = [True] * 5 + [False] * 10 + [True] * 5
    video, _ = _two_face_video(tmp_path / "gap.avi", len(present), present, crossing=False)
    assert _run(checkpoint, tmp_path / "out", "--video", str(video),
                extra=["--faces", "all", "--detect-every", "1"]) == 0
    table = read_predictions(tmp_path / "out" / "gap.csv")
    top_ids = table[(table.face_found == 1) & (table.face_y < 100)]
    assert top_ids["face_id"].nunique() == 1
    a = int(top_ids["face_id"].iloc[0])
    rows_a = table[table.face_id == a].set_index("frame")
    assert list(rows_a.index) == list(range(1, 21))          # a row in every frame of the gap
    assert rows_a.loc[6:15, "success"].eq(0).all() and rows_a.loc[16:, "success"].eq(1).all()
    assert table["face_id"].nunique() == 2                    # nobody got a third id
    assert len(table) == 2 * len(present)


def test_head_pose_axes_and_signs() -> None:
    for angles in [(0.2, 0.0, 0.0), (0.0, 0.3, 0.0), (0.0, 0.0, 0.25), (0.1, -0.2, 0.15)]:
        points = project_generic_face(angles, (640, 480))
        estimate, confidence = head_pose(np.nan_to_num(points), (640, 480))
        np.testing.assert_allclose(estimate, angles, atol=1e-4)
        assert confidence > 0.99
    # OpenFace's signs: Ry > 0 turns the face toward the image's left (the nose tip moves left
    # of the eyes' midpoint), Rx > 0 down (the nose tip drops toward the mouth).
    turned = project_generic_face((0.0, 0.3, 0.0), (640, 480))
    assert turned[30, 0] < (turned[36, 0] + turned[45, 0]) / 2
    frontal, down = project_generic_face((0, 0, 0), (640, 480)), project_generic_face(
        (0.3, 0, 0), (640, 480))
    assert (down[30, 1] - down[27, 1]) > (frontal[30, 1] - frontal[27, 1])
    assert (down[8, 1] - down[27, 1]) < (frontal[8, 1] - frontal[27, 1])
    # A real face: mirroring flips yaw and roll; turning the image clockwise raises roll.
    image = data.astronaut()
    landmarker = FaceLandmarker()
    (rx, ry, rz), _ = head_pose(landmarker.detect(image).landmarks68, (512, 512))
    (mx, my, mz), _ = head_pose(landmarker.detect(np.ascontiguousarray(image[:, ::-1])
                                                  ).landmarks68, (512, 512))
    assert my == pytest.approx(-ry, abs=0.05) and mz == pytest.approx(-rz, abs=0.05)
    turn = cv2.warpAffine(image, cv2.getRotationMatrix2D((222, 126), -15, 1.0), (512, 512))
    (_, _, tz), _ = head_pose(landmarker.detect(turn).landmarks68, (512, 512))
    assert tz - rz == pytest.approx(np.deg2rad(15), abs=0.06)


def test_calibration_and_smoothing() -> None:
    rng = np.random.default_rng(0)
    elevated = 1 / (1 + np.exp(-rng.normal(1.5, 0.5, (200, 1))))   # never looks at rest
    resting = 1 / (1 + np.exp(-rng.normal(-3.0, 1.0, (200, 1))))
    assert np.percentile(calibrate_probabilities(elevated), 10) == pytest.approx(0.1, abs=1e-6)
    np.testing.assert_allclose(calibrate_probabilities(resting), resting, rtol=1e-6)
    table = pd.DataFrame({"frame": range(1, 8), "face_id": 0, "face_found": [1] * 6 + [0],
                          "AU01_p": [0.1, 0.9, 0.1, 0.1, 0.8, 0.9, np.nan]})
    smoothed = postprocess(table, [1], 0.5, smooth=3)
    assert smoothed["AU01_c"].tolist()[:6] == [0, 0, 0, 0, 1, 1]   # the one-frame flicker is gone
    assert pd.isna(smoothed["AU01_c"].iloc[6])


def test_min_confidence_marks_rows_and_single_image_bar_plot(checkpoint, tmp_path) -> None:
    image = tmp_path / "astronaut.png"
    cv2.imwrite(str(image), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    assert _run(checkpoint, tmp_path / "out", "--images", str(image),
                extra=["--plot", "--min-confidence", "0.99"]) == 0
    table = read_predictions(tmp_path / "out" / "astronaut.csv")
    assert len(table) == 1 and table.face_found[0] == 1 and table.success[0] == 0
    assert table["AU01_p"].notna().all()                       # kept, only marked unreliable
    assert (tmp_path / "out" / "astronaut_bars.png").stat().st_size > 3000
    assert not (tmp_path / "out" / "astronaut_timeline.png").exists()


def test_onnx_export_parity_and_backend(checkpoint, tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    from model.export import main as export_main
    from model.inference.backends import OnnxBackend, TorchBackend

    onnx_path = tmp_path / "small.onnx"
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(onnx_path)]) == 0
    assert export_main(["--checkpoint", str(checkpoint), "--out", str(onnx_path)]) == 2
    backend, reference = OnnxBackend(onnx_path), TorchBackend(checkpoint)
    assert backend.meta["au_ids"] == AUS and backend.meta["image_size"] == 64
    assert backend.meta["alignment"]["config"]["encoding"] == "jpeg"
    crops = list(np.random.default_rng(0).integers(0, 256, (7, 64, 64, 3), dtype=np.uint8))
    for batch in (crops[:1], crops):                          # dynamic batch
        np.testing.assert_allclose(backend(batch)[0], reference(batch)[0], atol=1e-4)
    video = make_face_video(tmp_path / "clip.avi", 4, size=(400, 300), fps=20.0)
    assert _run(checkpoint, tmp_path / "torch", "--video", str(video)) == 0
    assert _run(onnx_path, tmp_path / "onnx", "--video", str(video),
                extra=["--backend", "onnx"]) == 0
    p = [f"AU{a:02d}_p" for a in AUS]
    a = read_predictions(tmp_path / "torch" / "clip.csv")[p].to_numpy()
    b = read_predictions(tmp_path / "onnx" / "clip.csv")[p].to_numpy()
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_batch_folder_corrupt_file_resume_and_jobs(checkpoint, tmp_path, monkeypatch,
                                                   capsys) -> None:
    folder = tmp_path / "videos"
    (folder / "day2").mkdir(parents=True)
    make_face_video(folder / "a.avi", 3, size=(400, 300), fps=10.0)
    make_face_video(folder / "day2" / "b.avi", 3, size=(400, 300), fps=10.0)
    (folder / "day2" / "broken.avi").write_bytes(b"RIFF not a video at all")
    (folder / "notes.txt").write_text("ignored")
    out = tmp_path / "out"

    from model.inference import predictor as predictor_module
    original = predictor_module.AUPredictor.run_sequence
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt                    # Ctrl-C during the second video
        return original(self, *args, **kwargs)

    monkeypatch.setattr(predictor_module.AUPredictor, "run_sequence", interrupted)
    assert _run(checkpoint, out, "--video", str(folder)) == 130  # one line, not a traceback
    monkeypatch.undo()
    assert (out / "a.csv").is_file() and not (out / "day2" / "b.csv").exists()
    assert not list(out.glob(".*tmp*"))                   # no half-written file left behind

    listing = tmp_path / "inputs.txt"
    listing.write_text(f"# resumed\n{folder}\n")
    assert _run(checkpoint, out, "--video", str(listing), extra=["--jobs", "2"]) == 1
    summary = json.loads((out / "predict_summary.json").read_text())
    status = {Path(r["input"]).name: r["status"] for r in summary["inputs"]}
    assert status == {"a.avi": "skipped", "b.avi": "ok", "broken.avi": "failed"}
    assert len(read_predictions(out / "day2" / "b.csv")) == 3
    printed = capsys.readouterr().out
    assert "broken.avi" in printed and "proc fps" in printed
    assert _run(checkpoint, out, "--video", str(folder / "a.avi"), extra=["--force"]) == 0
    assert json.loads((out / "predict_summary.json").read_text())["inputs"][0]["status"] == "ok"


def test_python_api_dataframes(checkpoint, tmp_path) -> None:
    from model.inference.api import AUDetector

    detector = AUDetector(checkpoint, faces="all")
    frame = detector.predict_frame(data.astronaut())
    assert len(frame) == 1 and frame.loc[0, "success"] == 1
    assert {"frame", "face_id", "confidence", "pose_Ry", "AU12_p", "AU12_c"} <= set(frame.columns)
    video = make_face_video(tmp_path / "clip.avi", 3, size=(400, 300), fps=20.0)
    table = detector.predict_video(video)
    assert table["frame"].tolist() == [1, 2, 3]
    assert detector.meaning["decision_threshold"] == 0.5


def test_intensity_head_writes_openface_r_columns(checkpoint) -> None:
    """A model whose forward returns (logits, intensities) (issue 13) gets AUxx_r columns."""
    import torch

    from model.inference.api import AUDetector

    class WithIntensity(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            logits = self.inner(x)
            return logits, torch.sigmoid(logits) * 5

    detector = AUDetector(checkpoint)
    net = detector.predictor.backend.net
    net.model = WithIntensity(net.model)
    table = detector.predict_frame(data.astronaut())
    r_cols = [f"AU{a:02d}_r" for a in AUS]
    assert list(table.columns).index("AU01_r") < list(table.columns).index("AU01_c")
    p = table[[f"AU{a:02d}_p" for a in AUS]].to_numpy(float)
    np.testing.assert_allclose(table[r_cols].to_numpy(float), 5 * p, rtol=1e-5)


def test_plan_jobs_folders_glob_and_lists(tmp_path) -> None:
    from model.inference.batch import plan_jobs
    from model.inference.predictor import PredictConfig

    (tmp_path / "v" / "sub").mkdir(parents=True)
    for name in ("v/a.mp4", "v/sub/b.mp4", "v/sub/c.avi", "v/readme.md"):
        (tmp_path / name).write_bytes(b"")
    shots = tmp_path / "shots"
    (shots / "s1").mkdir(parents=True)
    for name in ("x.png", "s1/y.jpg", "s1/z.txt"):
        (shots / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("# two videos\nv/a.mp4\nmissing.mp4\n")
    cfg = PredictConfig(checkpoint=tmp_path / "c.pt", out=tmp_path / "o",
                        videos=[tmp_path / "v", listing], images=[shots])
    jobs = plan_jobs(cfg)
    # Named by the path below the folder searched (a list's entries: below the list's folder),
    # never by position in the batch.
    assert [(j.kind, j.name) for j in jobs] == [
        ("video", "a"), ("video", "sub/b"), ("video", "sub/c"), ("video", "v/a"),
        ("video", "missing"), ("images", "shots"), ("images", "shots/s1")]
    assert [p.name for p in jobs[-1].files] == ["y.jpg"]
    only_mp4 = PredictConfig(checkpoint=tmp_path / "c.pt", out=tmp_path / "o",
                             videos=[tmp_path / "v"], glob="*.mp4")
    assert [j.name for j in plan_jobs(only_mp4)] == ["a", "sub/b"]

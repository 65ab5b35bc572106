"""model.predict end to end: real faces in synthetic videos and images, a tiny trained checkpoint,
OpenFace-style CSVs, and bad inputs."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from model.engine.checkpoint import save_checkpoint
from model.engine.losses import branch_bce_loss
from model.predict import PredictConfig, TrainingPreprocess, main
from model.benchmarks.synthetic import astronaut_head, make_face_video
from model.nets.transforms import to_model_input
from model.nets.tranet import TRANetConfig, build_model
from model.inference.csv_format import read_predictions
from model.inference.video_io import VideoFrames
from pipeline.alignment import AlignmentConfig, align_face
from pipeline.face_landmarks import FaceLandmarker
from pipeline.shards import decode_jpeg, encode_jpeg

SIZE = 64
AUS = [1, 2, 4, 6, 9, 12, 25, 26]
# Deliberately not pipeline.alignment's defaults, so a predictor that ignored the checkpoint's
# targets would produce different crops (and probabilities) than the reference computed below.
NOSE = (0.5 * SIZE, 0.45 * SIZE)
CHIN = (0.5 * SIZE, 0.85 * SIZE)


def _save_tiny(path: Path, model: torch.nn.Module, config: TRANetConfig, quality: int | None,
               source_size: int = SIZE) -> Path:
    shard_cfg = {"size": source_size, "border": "replicate",
                 "encoding": "jpeg" if quality else "raw", "jpeg_quality": quality or 90}
    return save_checkpoint(path, {
        "model": model.state_dict(), "model_config": dataclasses.asdict(config),
        "data": {"au_ids": AUS, "threshold": 3, "image_size": SIZE, "nose_target": list(NOSE),
                 "chin_target": list(CHIN),
                 "alignment": {"config": shard_cfg, "source_image_size": source_size}},
        "train_config": {"note": "test"}, "epoch": 1})


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The small preset trained for a few SGD steps on random data, in the trainer's format."""
    torch.manual_seed(0)
    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE))
    model = build_model(config)
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05,
                                momentum=0.9)
    x = to_model_input(torch.randint(0, 256, (6, SIZE, SIZE, 3), dtype=torch.uint8))
    y = (torch.rand(6, len(AUS)) > 0.5).float()
    model.train()
    for _ in range(3):
        optimiser.zero_grad()
        branch_bce_loss(model(x), y, model.branch_groups).backward()
        optimiser.step()
    return _save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", model.eval(), config, 90)


@pytest.fixture(scope="module")
def face_video(tmp_path_factory) -> tuple[Path, list[bool]]:
    pattern = [True, True, True, False, False, True, True, True, False, True, True, False]
    path = make_face_video(tmp_path_factory.mktemp("video") / "clip.avi", len(pattern),
                           size=(480, 320), fps=20.0, face_present=pattern)
    return path, pattern


def _au_columns(suffix: str) -> list[str]:
    return [f"AU{a:02d}_{suffix}" for a in AUS]


def test_video_rows_face_pattern_and_predictions(tiny_checkpoint, face_video, tmp_path) -> None:
    video, pattern = face_video
    out = tmp_path / "out"
    code = main(["--checkpoint", str(tiny_checkpoint), "--video", str(video), "--out", str(out),
                 "--detect-every", "3", "--batch-size", "4", "--plot", "--overlay",
                 "--landmarks", "--no-progress"])
    assert code == 0
    table = read_predictions(out / "clip.csv")
    assert len(table) == len(pattern)
    assert table["frame"].tolist() == list(range(1, len(pattern) + 1))
    np.testing.assert_allclose(table["timestamp"], np.arange(len(pattern)) / 20.0, atol=1e-4)
    assert table["face_found"].tolist() == [int(p) for p in pattern]
    assert (table["success"] == table["face_found"]).all()

    with_face = table[table["face_found"] == 1]
    without = table[table["face_found"] == 0]
    probs = with_face[_au_columns("p")].to_numpy()
    decisions = with_face[_au_columns("c")].to_numpy()
    assert np.all((probs >= 0) & (probs <= 1))
    assert set(np.unique(decisions)) <= {0, 1}
    np.testing.assert_array_equal(decisions, (probs >= 0.5).astype(int))
    # no-face rows (the openface format): OpenFace's columns 0, as it writes them; ours empty
    assert without[_au_columns("p") + ["face_x", "face_score"]].isna().all().all()
    assert (without[_au_columns("c") + ["x_0", "pose_Rx", "confidence"]] == 0).all().all()
    # The face box is around the pasted 280 px head (face ~88 px) and landmarks are inside.
    assert with_face["face_w"].between(60, 130).all()
    inside = (with_face["x_30"] > with_face["face_x"]) & (
        with_face["x_30"] < with_face["face_x"] + with_face["face_w"])
    assert inside.all()

    # Same numbers as preparing frame 1 by hand the way the training shards were made:
    # dlib landmarks -> 66 points -> align with the checkpoint's targets -> JPEG -> network.
    first = next(iter(VideoFrames(video))).image
    face = FaceLandmarker().detect(first)
    aligned, _, _ = align_face(first, face.landmarks66,
                               AlignmentConfig(size=SIZE, nose_target=NOSE, chin_target=CHIN))
    aligned = decode_jpeg(encode_jpeg(aligned, 90))
    from model.engine.checkpoint import load_for_inference

    model, _ = load_for_inference(tiny_checkpoint)
    with torch.inference_mode():
        expected = torch.sigmoid(model(to_model_input(aligned[None]))).numpy()[0]
    np.testing.assert_allclose(table.loc[0, _au_columns("p")].to_numpy(float), expected, atol=2e-4)

    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["frames"] == len(pattern) and summary["faces_found"] == sum(pattern)
    assert summary["config"]["detect_every"] == 3 and summary["failed"] == 0
    assert summary["preprocess"]["nose_target"] == list(NOSE)
    assert (out / "clip_timeline.png").stat().st_size > 5000
    overlay = cv2.VideoCapture(str(out / "clip_overlay.avi"))
    assert int(overlay.get(cv2.CAP_PROP_FRAME_COUNT)) == len(pattern)
    overlay.release()


def test_decision_threshold_override(tiny_checkpoint, face_video, tmp_path) -> None:
    video, _ = face_video
    assert main(["--checkpoint", str(tiny_checkpoint), "--video", str(video), "--out",
                 str(tmp_path), "--decision-threshold", "0.3", "--no-progress"]) == 0
    table = read_predictions(tmp_path / "clip.csv").dropna(subset=["AU01_p"])
    np.testing.assert_array_equal(table[_au_columns("c")].to_numpy(),
                                  (table[_au_columns("p")].to_numpy() >= 0.3).astype(int))
    assert json.loads((tmp_path / "predict_summary.json").read_text())["decision_threshold"] == 0.3


def test_training_preprocess_repeats_resize_of_smaller_trainer_input() -> None:
    """A trainer run at half the shards' size: align at the shard size, then INTER_AREA."""
    meta = {"image_size": 32, "nose_target": [16, 14.4], "chin_target": [16, 27.2],
            "alignment": {"config": {"encoding": "raw", "border": "constant"},
                          "source_image_size": 64}}
    prep = TrainingPreprocess.from_meta(meta, Path("x.pt"))
    assert prep.alignment.size == 64 and prep.jpeg_quality is None
    assert prep.alignment.nose_target == pytest.approx((32, 28.8))
    image = astronaut_head()
    face = FaceLandmarker().detect(image)
    out = prep(image, face.landmarks66)
    big, _, _ = align_face(image, face.landmarks66, prep.alignment)
    np.testing.assert_array_equal(out, cv2.resize(big, (32, 32), interpolation=cv2.INTER_AREA))
    from model.engine.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="x.pt"):
        TrainingPreprocess.from_meta({"image_size": 32}, Path("x.pt"))


def test_images_directory_with_bad_files(tiny_checkpoint, tmp_path, caplog, capsys) -> None:
    folder = tmp_path / "shots"
    folder.mkdir()
    canvas = np.full((320, 400, 3), 120, np.uint8)
    canvas[20:300, 60:340] = astronaut_head()
    cv2.imwrite(str(folder / "a_face.png"), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "b_blank.jpg"), np.full((240, 320, 3), 200, np.uint8))
    (folder / "c_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("not an image, ignored")
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = main(["--checkpoint", str(tiny_checkpoint), "--images", str(folder),
                     "--out", str(out), "--no-progress", "--overlay"])
    assert code == 1  # one unreadable image: the run reports a failure...
    assert "c_broken.jpg" in caplog.text
    assert "c_broken.jpg" in capsys.readouterr().out
    table = read_predictions(out / "shots.csv")  # ...but the readable images were processed
    assert table["file"].tolist() == ["a_face.png", "b_blank.jpg"]
    assert table["face_found"].tolist() == [1, 0]
    assert table["timestamp"].isna().all()
    assert sorted(p.name for p in (out / "shots_overlay").iterdir()) == ["a_face.jpg", "b_blank.jpg"]
    summary = json.loads((out / "predict_summary.json").read_text())
    assert summary["inputs"][0]["status"] == "partial"
    assert summary["inputs"][0]["bad_files"][0]["file"].endswith("c_broken.jpg")


def test_loose_image_files_share_one_csv(tiny_checkpoint, tmp_path) -> None:
    files = []
    for i, shift in enumerate((0, 30)):
        canvas = np.full((320, 420, 3), 90, np.uint8)
        canvas[20:300, 40 + shift:320 + shift] = astronaut_head()
        files.append(tmp_path / f"img{i}.png")
        cv2.imwrite(str(files[-1]), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
    code = main(["--checkpoint", str(tiny_checkpoint), "--images", *map(str, files),
                 "--out", str(tmp_path / "out"), "--fps", "10", "--no-progress"])
    assert code == 0
    table = read_predictions(tmp_path / "out" / "images.csv")
    assert table["file"].tolist() == ["img0.png", "img1.png"]
    assert table["face_found"].tolist() == [1, 1]
    np.testing.assert_allclose(table["timestamp"], [0.0, 0.1])
    assert table.loc[1, "face_x"] - table.loc[0, "face_x"] == pytest.approx(30, abs=8)


def test_bad_videos_are_reported_and_good_ones_processed(tiny_checkpoint, face_video, tmp_path,
                                                         caplog) -> None:
    good, pattern = face_video
    empty = tmp_path / "empty.avi"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    header_only = tmp_path / "header_only.avi"
    writer = cv2.VideoWriter(str(header_only), cv2.VideoWriter_fourcc(*"MJPG"), 20, (64, 64))
    writer.release()  # a valid container with no frames
    missing = tmp_path / "missing.avi"
    out = tmp_path / "out"
    with caplog.at_level(logging.ERROR):
        code = main(["--checkpoint", str(tiny_checkpoint), "--video", str(empty), str(garbage),
                     str(header_only), str(missing), str(good), "--out", str(out),
                     "--no-progress"])
    assert code == 1
    for bad in (empty, garbage, header_only, missing):
        assert str(bad) in caplog.text
        assert not (out / f"{bad.stem}.csv").exists()
    assert len(read_predictions(out / "clip.csv")) == len(pattern)
    summary = json.loads((out / "predict_summary.json").read_text())
    assert [r["status"] for r in summary["inputs"]] == ["failed"] * 4 + ["ok"]
    assert summary["failed"] == 4


def test_foreign_checkpoint_and_usage_errors(tmp_path, face_video, caplog) -> None:
    video, _ = face_video
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    for bad in (foreign, text, tmp_path / "absent.pt"):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            code = main(["--checkpoint", str(bad), "--video", str(video), "--out",
                         str(tmp_path / "o"), "--no-progress"])
        assert code == 2
        assert bad.name in caplog.text
    assert not (tmp_path / "o" / "clip.csv").exists()
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(foreign), "--out", str(tmp_path)]) == 2  # no input
    assert "nothing to do" in caplog.text
    with pytest.raises(ValueError, match="detect_every"):
        PredictConfig(checkpoint=foreign, out=tmp_path, videos=[video], detect_every=0)


def test_skip_existing_resumes(tiny_checkpoint, face_video, tmp_path) -> None:
    video, _ = face_video
    (tmp_path / "clip.csv").write_text("frame\n1\n")
    assert main(["--checkpoint", str(tiny_checkpoint), "--video", str(video), "--out",
                 str(tmp_path), "--skip-existing", "--no-progress"]) == 0
    assert (tmp_path / "clip.csv").read_text() == "frame\n1\n"
    summary = json.loads((tmp_path / "predict_summary.json").read_text())
    assert summary["inputs"][0]["status"] == "skipped"

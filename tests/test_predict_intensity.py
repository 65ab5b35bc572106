"""model.predict with an intensity head: AUxx_r columns (0-5) and intensity strips in the plot;
a checkpoint without the head keeps exactly the columns it always had."""
from __future__ import annotations


import numpy as np
import pandas as pd
import pytest
import torch

from model.engine.checkpoint import load_for_inference
from model.inference.csv_format import read_predictions, table_columns
from model.nets.regions import ALL_AUS
from model.nets.transforms import to_model_input
from model.nets.tranet import TRANetConfig, build_model
from model.predict import main
from model.inference.video_io import VideoFrames
from model.benchmarks.synthetic import make_face_video
from pipeline.alignment import AlignmentConfig, align_face
from pipeline.face_landmarks import FaceLandmarker
from test_predict import AUS, CHIN, NOSE, SIZE, _save_tiny


@pytest.fixture(scope="module")
def intensity_checkpoint(tmp_path_factory):
    torch.manual_seed(1)
    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE), intensity_aus=ALL_AUS)
    model = build_model(config)
    with torch.no_grad():  # spread the outputs over the 0-5 range so clipping is exercised
        for branch in model.branches.values():
            branch.intensity.bias.fill_(2.5)
            branch.intensity.weight.mul_(40.0)
    return _save_tiny(tmp_path_factory.mktemp("ckpt") / "both.pt", model.eval(), config, None)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    pattern = [True, True, False, True]
    return make_face_video(tmp_path_factory.mktemp("v") / "clip.avi", len(pattern),
                           size=(480, 320), fps=20.0, face_present=pattern), pattern


def test_intensity_columns_are_written_and_clipped(intensity_checkpoint, video, tmp_path):
    path, pattern = video
    out = tmp_path / "out"
    assert main(["--checkpoint", str(intensity_checkpoint), "--video", str(path), "--out",
                 str(out), "--plot", "--format", "plain", "--no-progress"]) == 0
    table = read_predictions(out / "clip.csv")
    r_columns = [f"AU{a:02d}_r" for a in AUS]  # the occurrence AUs the head also covers
    assert list(table.columns) == table_columns(AUS, ALL_AUS, False, False)
    with_face = table[table["face_found"] == 1][r_columns].to_numpy()
    assert with_face.shape == (sum(pattern), len(AUS))
    assert np.all((with_face >= 0) & (with_face <= 5)) and with_face.std() > 0
    assert table[table["face_found"] == 0][r_columns].isna().all().all()
    assert orange_pixels(out / "clip_timeline.png") > 500  # the AUxx_r curves are drawn
    # frame 1 by hand: dlib landmarks -> alignment with the checkpoint's targets -> network
    first = next(iter(VideoFrames(path))).image
    face = FaceLandmarker().detect(first)
    aligned, _, _ = align_face(first, face.landmarks66,
                               AlignmentConfig(size=SIZE, nose_target=NOSE, chin_target=CHIN))
    model, _ = load_for_inference(intensity_checkpoint)
    with torch.inference_mode():
        raw = model(to_model_input(aligned[None]), with_intensity=True)[1].numpy()[0]
    expected = np.clip(raw[[ALL_AUS.index(a) for a in AUS]], 0, 5)
    np.testing.assert_allclose(table.loc[0, r_columns].to_numpy(float), expected,
                               atol=2e-3)


def test_checkpoint_without_head_keeps_its_columns(tmp_path, video):
    from test_predict import _save_tiny as save

    config = TRANetConfig(preset="small", image_size=SIZE, au_ids=tuple(AUS),
                          center=(NOSE[0] / SIZE, NOSE[1] / SIZE))
    torch.manual_seed(0)
    ckpt = save(tmp_path / "occ.pt", build_model(config).eval(), config, None)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpt), "--video", str(video[0]), "--out", str(out),
                 "--format", "plain", "--no-progress"]) == 0
    columns = list(read_predictions(out / "clip.csv").columns)
    assert columns == table_columns(AUS, [], False, False)
    assert not any(c.endswith("_r") for c in columns)


def orange_pixels(png) -> int:
    """Pixels of matplotlib's tab:orange (255, 127, 14), the colour of the intensity curves."""
    import cv2

    bgr = cv2.imread(str(png)).astype(int)
    return int((np.abs(bgr - np.array([14, 127, 255])).sum(axis=2) < 40).sum())


def test_timeline_draws_intensities_only_when_given(tmp_path):
    from model.inference.output import save_timeline_plot

    rng = np.random.default_rng(0)
    x = np.arange(60)
    probabilities = rng.uniform(0, 1, (60, 3))
    probabilities[20:25] = np.nan  # no face there
    intensities = rng.uniform(0, 5, (60, 3))
    intensities[20:25] = np.nan
    intensities[:, 2] = np.nan  # an AU the intensity head does not cover
    plain = save_timeline_plot(tmp_path / "p.png", x, probabilities, [1, 2, 4], 0.5, "frame", "t")
    both = save_timeline_plot(tmp_path / "b.png", x, probabilities, [1, 2, 4], 0.5, "frame", "t",
                              intensities=intensities)
    assert orange_pixels(plain) == 0
    assert orange_pixels(both) > 1000

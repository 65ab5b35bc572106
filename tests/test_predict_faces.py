"""model.predict on photos with several faces: small faces found, each box labelled with its
face_id and its panel beside it, image folders charted per image; resume options."""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data

from model.inference.csv_format import read_predictions
from model.inference.face_search import search_scale
from model.inference.output import draw_overlay, panel_origin
from model.predict import main
from model.benchmarks.synthetic import make_face_video, make_untrained_checkpoint
from pipeline.face_landmarks import FaceResult

AUS = [1, 2, 4, 6, 9, 12, 25, 26]
#: Face widths in the group photo: two below dlib's 80 px window, one above.
FACE_PX = (45, 60, 100)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return make_untrained_checkpoint(tmp_path_factory.mktemp("ck") / "small.pt", "small", 64,
                                     au_ids=AUS)


def _group_photo(face_px=FACE_PX, size=(640, 360)) -> np.ndarray:
    """A plain canvas with the astronaut's face pasted side by side at the given face widths
    (her crop is 190x180 px around a face box of ~88 px)."""
    crop = np.ascontiguousarray(data.astronaut()[40:230, 140:320])
    canvas = np.full((size[1], size[0], 3), 110, np.uint8)
    sides = [round(180 * px / 88) for px in face_px]
    gap = (size[0] - sum(sides)) // (len(sides) + 1)
    x = gap
    for side in sides:
        face = cv2.resize(crop, (side, round(side * 190 / 180)), interpolation=cv2.INTER_AREA)
        y = (size[1] - face.shape[0]) // 2
        canvas[y:y + face.shape[0], x:x + side] = face
        x += side + gap
    return canvas


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def test_search_scale_reaches_the_detector_window() -> None:
    assert search_scale(40) == (1, 1.0)
    assert search_scale(80) == (0, 1.0)
    assert search_scale(160) == (0, 0.5)
    upsample, scale = search_scale(50)
    assert 50 * scale * 2 ** upsample == pytest.approx(80)
    with pytest.raises(ValueError, match="min_face"):
        search_scale(5)


def test_image_folder_finds_small_faces_and_is_charted_per_image(checkpoint, tmp_path) -> None:
    folder = tmp_path / "photos"
    _write(folder / "a_group.png", _group_photo())
    _write(folder / "b_one.png", _group_photo((100,), (320, 320)))
    out = tmp_path / "out"
    assert main(["--checkpoint", str(checkpoint), "--images", str(folder), "--faces", "all",
                 "--out", str(out), "--plot", "--overlay", "--no-progress"]) == 0
    table = read_predictions(out / "photos.csv")
    found = table[table["face_found"] == 1]
    # every face, the 45 px one included, at the default --min-face 40
    assert (found["file"] == "a_group.png").sum() == len(FACE_PX)
    assert (found["file"] == "b_one.png").sum() == 1
    widths = sorted(found.loc[found["file"] == "a_group.png", "face_w"])
    assert widths[0] < 70  # the small faces are really among them
    # unrelated photos: a per-image chart, not a timeline joining them
    assert (out / "photos_images.png").is_file()
    assert not (out / "photos_timeline.png").exists()
    assert sorted(p.name for p in (out / "photos_overlay").iterdir()) == ["a_group.jpg",
                                                                           "b_one.jpg"]


def test_min_face_80_skips_the_small_faces(checkpoint, tmp_path) -> None:
    photo = _write(tmp_path / "group.png", _group_photo())
    assert main(["--checkpoint", str(checkpoint), "--images", str(photo), "--faces", "all",
                 "--min-face", "80", "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    table = read_predictions(tmp_path / "o" / "group.csv")
    assert int(table["face_found"].sum()) < len(FACE_PX)


def _face(x: float, y: float, w: float) -> FaceResult:
    marks = np.column_stack([np.linspace(x + 5, x + w - 5, 68), np.full(68, y + w / 2)])
    return FaceResult(box=(x, y, w, w), landmarks68=marks, score=1.0)


def test_overlay_labels_each_box_and_puts_its_panel_beside_it() -> None:
    frame = np.full((480, 640, 3), 200, np.uint8)
    probabilities = np.linspace(0.1, 0.9, len(AUS))
    decisions = probabilities >= 0.5
    faces = [_face(40, 60, 80), _face(420, 250, 80)]
    picture = frame
    for face_id, face in enumerate(faces):
        picture = draw_overlay(picture, face, probabilities, decisions, AUS, face_id=face_id)
    unlabelled = draw_overlay(frame, faces[1], probabilities, decisions, AUS)
    for face in faces:
        x, y, w, _ = (int(v) for v in face.box)
        # the darkened panel starts just right of this face's box, at its top
        assert picture[y + 3, x + w + 10].max() < 120
        # the label sits above the box
        assert (picture[y - 18:y - 2, x:x + 60] != 200).any()
    assert (unlabelled[232:248, 420:480] == 200).all()  # no face_id: no label
    assert unlabelled[5, 5].max() < 120               # ...and the panel in its corner, as before


def test_panel_origin_stays_in_frame() -> None:
    # no room on the right: the panel goes left of the box
    assert panel_origin((560, 10, 70, 70), (150, 200), (480, 640, 3)) == (406, 10)
    # a box at the bottom: the panel is lifted to fit
    assert panel_origin((10, 450, 20, 20), (150, 200), (480, 640, 3))[1] == 280


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    return make_face_video(tmp_path_factory.mktemp("v") / "clip.avi", 4, size=(320, 300),
                           fps=10.0)


def test_skip_existing_keeps_a_changed_inputs_csv(checkpoint, video, tmp_path, caplog) -> None:
    clip = tmp_path / "clip.avi"
    shutil.copy(video, clip)
    out = tmp_path / "out"
    args = ["--checkpoint", str(checkpoint), "--video", str(clip), "--out", str(out),
            "--no-progress"]
    assert main(args) == 0
    status = lambda: json.loads((out / "predict_summary.json").read_text())["inputs"][0]["status"]
    stamp = os.stat(clip).st_mtime_ns
    os.utime(clip, ns=(stamp + 10**9, stamp + 10**9))  # "touched": a changed input
    with caplog.at_level(logging.INFO):
        assert main(args + ["--skip-existing"]) == 0
    assert status() == "skipped"
    assert "kept (--skip-existing)" in caplog.text
    assert main(args) == 0  # without it, the changed input is redone
    assert status() == "ok"


def test_force_and_skip_existing_together_is_a_usage_error(checkpoint, video, tmp_path,
                                                          caplog) -> None:
    with caplog.at_level(logging.ERROR):
        assert main(["--checkpoint", str(checkpoint), "--video", str(video), "--out",
                     str(tmp_path), "--force", "--skip-existing"]) == 2
    assert "--force and --skip-existing" in caplog.text


@pytest.mark.parametrize("images", [3, 60])   # bar groups, then a heat map past MAX_BAR_GROUPS
def test_image_chart_draws_any_folder_size(images, tmp_path) -> None:
    from model.inference.output import MAX_BAR_GROUPS, save_image_chart

    values = np.random.default_rng(0).random((images, len(AUS)))
    values[1] = np.nan  # an image without a face
    path = save_image_chart(tmp_path / "c.png", [f"{i}.jpg" for i in range(images)], values,
                            AUS, 0.5, "photos")
    assert cv2.imread(str(path)) is not None
    assert (images > MAX_BAR_GROUPS) == (images == 60)

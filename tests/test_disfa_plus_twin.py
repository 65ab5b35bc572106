"""The DISFA+ twin (``pipeline.synth --layout disfa+``) writes DISFA+'s layout and quirks, and
the DISFA+ adapter reads back exactly the labels the twin drew."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.datasets.disfa_plus import facts
from pipeline.datasets.disfa_plus.adapter import DisfaPlusAdapter
from pipeline.datasets.disfa_plus.labels import DROP_NOT_IN_ALL
from pipeline.twin.command import main as synth_main
from pipeline.twin.disfa_plus_layout import CROP_SIZE, MISSING_AU, TRIALS


@pytest.fixture(scope="module")
def twin(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("dplus") / "twin"
    assert synth_main(["--layout", "disfa+", "--out", str(out), "--n-subjects", "2",
                       "--frames", "30", "--width", "160", "--height", "120"]) == 0
    return out, json.loads((out / "synth_truth.json").read_text())


def test_the_twin_has_disfa_plus_layout_and_quirks(twin):
    out, truth = twin
    assert truth["layout"] == "disfa+" and list(truth["subjects"]) == ["SN001", "SN003"]
    trial = out / "Images" / "SN001" / TRIALS[0]
    assert (trial / "TimeStamp.txt").is_file() and (trial / "000.jpg").is_file()
    assert not (trial / "001.JPG").exists() and cv2.imread(str(trial / "009.jpg")) is not None
    # The second subject is nested twice under Labels/ and FaceLandmarks/.
    assert (out / "Labels" / "SN003" / "SN003" / TRIALS[0] / "AU26.txt").is_file()
    assert (out / "FaceLandmarks" / "SN003" / "SN003" / f"{TRIALS[0]}_FaceCropped.mat").is_file()
    text = (out / "Labels" / "SN001" / TRIALS[0] / f"AU{MISSING_AU}.txt").read_text()
    lines = text.splitlines()
    assert len(lines) == 2 + 10 - 1 and lines[2].startswith("000.jpg")


def test_the_adapter_reads_back_the_twins_labels(twin):
    out, truth = twin
    adapter = DisfaPlusAdapter()
    refs = adapter.sequences(out)
    assert len(refs) == truth["expected"]["sequences"] == 6
    total, dropped = 0, 0
    for ref in refs:
        data = adapter.read_sequence(out, ref)
        drawn = np.array(truth["subjects"][ref.subject]["trials"][ref.name]["intensity"])
        keep = data.frame_numbers
        assert np.array_equal(data.intensity, drawn[keep])  # columns by AU number
        total += len(data)
        dropped += data.dropped[DROP_NOT_IN_ALL]
        assert data.dropped["no image file"] == 0
        seen = adapter.crop_landmarks[(ref.subject, ref.name)]
        assert seen["points"] == [facts.N_LANDMARKS] and seen["frames"] == len(drawn)
        assert seen["crop_shape"] == [CROP_SIZE, CROP_SIZE, 3]
    assert total == truth["expected"]["labelled_frames"] == 59
    assert dropped == truth["expected"]["dropped_not_in_all_12"] == 1
    assert not adapter.skipped


def test_a_subject_disfa_plus_lacks_is_one_line_and_exit_2(tmp_path, capsys):
    code = synth_main(["--layout", "disfa+", "--out", str(tmp_path / "t"), "--subjects",
                       "SN002", "--frames", "10", "--width", "64", "--height", "48"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "SN002 not in DISFA+" in err[0]

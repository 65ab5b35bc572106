"""The BP4D twin (#26 item 5, BP4D half): ``pipeline.synth --layout bp4d`` writes both release
variants with BP4D's quirks, the faces the twin renderer draws, and the twin marker."""
from __future__ import annotations

import json

import cv2
import h5py
import numpy as np
import pytest

from pipeline.datasets.bp4d import facts as bp4d
from pipeline.datasets.disfa.facts import ALL_AUS as DISFA_AUS
from pipeline.origin import data_origin
from pipeline.synth import main
from pipeline.twin.bp4d_layout import _drawn, drawn_au
from pipeline.twin.face_shape import RENDER_AUS


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    out = tmp_path_factory.mktemp("bp4d_both")
    code = main(["--layout", "bp4d", "--out", str(out), "--n-subjects", "2", "--frames", "40",
                 "--width", "90", "--height", "120", "--seed", "1"])
    assert code == 0
    return out


def test_both_variants_and_the_quirks_are_written(both):
    truth = json.loads((both / "synth_truth.json").read_text())
    assert truth["layout"] == "bp4d" and data_origin(both)["data_source"] == "twin"
    assert sorted(p.name for p in (both / "AUCoding").glob("*.csv")) == ["F001_T1.csv",
                                                                       "F001_T2.csv"]
    assert sorted(p.name for p in (both / "AUCoding" / "AU_OCC").glob("*.csv")) == [
        "M011_T1.csv", "M011_T2.csv"]
    assert (both / "BP4D-training" / "F001" / "T2").is_dir()
    assert (both / "BP4D-Spontaneous" / "2D" / "M011" / "T1").is_dir()
    # The full release's landmarks: v7.3 (HDF5 behind MATLAB's header) with fit/pred.
    mat73 = both / "2DFeatures" / "M011_T1.mat"
    assert mat73.read_bytes()[:10] == b"MATLAB 7.3" and h5py.is_hdf5(mat73)
    with h5py.File(mat73) as handle:
        assert "fit/pred" in handle
    assert (both / "BP4D-fpoints" / "F001_T1.mat").read_bytes()[:10] == b"MATLAB 5.0"
    intensity = [p for p in both.iterdir() if p.name.startswith("AU") and "Intensity" in p.name]
    assert len(intensity) == 1
    assert sorted(p.name for p in intensity[0].iterdir()) == [
        f"AU{au:02d}" for au in bp4d.INTENSITY_AUS]
    seqs = [s for tasks in truth["subjects"].values() for s in tasks.values()]
    assert any(s["first_frame"] > 1 for s in seqs)
    assert len({s["pad"] for s in seqs}) >= 3


def test_frames_are_portrait_and_the_csv_header_has_unused_aus(both):
    image = cv2.imread(str(next((both / "BP4D-training" / "F001" / "T1").glob("*.jpg"))))
    assert image.shape[:2] == (120, 90)
    lines = (both / "AUCoding" / "F001_T1.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header == [str(k) for k in range(65)]  # name = position, many unused AUs
    rows = np.array([[int(v) for v in line.split(",")] for line in lines[1:]])
    assert (rows[:, 40:] == 9).all()
    evaluated = rows[:, list(bp4d.OCCURRENCE_AUS)]
    assert (evaluated == 9).sum() == 3 and set(np.unique(evaluated)) <= {0, 1, 9}


@pytest.mark.parametrize("variant,flat,nested", [("fera", 2, 0), ("full", 0, 2)])
def test_one_variant_only(tmp_path, variant, flat, nested):
    out = tmp_path / variant
    assert main(["--layout", "bp4d", "--out", str(out), "--n-subjects", "1", "--frames", "24",
                 "--width", "48", "--height", "64", "--bp4d-variant", variant]) == 0
    assert len(list((out / "AUCoding").glob("*.csv"))) == flat
    assert len(list((out / "AUCoding").glob("AU_OCC/*.csv"))) == nested


def test_the_same_seed_writes_the_same_twin(both, tmp_path):
    out = tmp_path / "again"
    assert main(["--layout", "bp4d", "--out", str(out), "--n-subjects", "2", "--frames", "40",
                 "--width", "90", "--height", "120", "--seed", "1"]) == 0
    for rel in ("AUCoding/F001_T1.csv", "AUCoding/AU_OCC/M011_T2.csv"):
        assert (out / rel).read_bytes() == (both / rel).read_bytes()


def test_every_bp4d_au_is_drawn_as_itself(both):
    # The renderer draws BP4D's 7, 10, 14, 23 and 24 (face_shape.EXTRA_AUS): no DISFA stand-ins.
    assert [drawn_au(au) for au in bp4d.OCCURRENCE_AUS] == list(bp4d.OCCURRENCE_AUS)
    assert set(bp4d.OCCURRENCE_AUS) <= set(RENDER_AUS)
    assert set(bp4d.OCCURRENCE_AUS) - set(DISFA_AUS) <= set(_drawn(np.zeros(12)))
    row = np.zeros(len(bp4d.OCCURRENCE_AUS))
    row[bp4d.OCCURRENCE_AUS.index(7)] = 4
    assert _drawn(row)[7] == 4.0 and 5 not in _drawn(row)  # AU7 is not drawn as DISFA's AU5
    truth = json.loads((both / "synth_truth.json").read_text())
    assert truth["stand_ins"] == {} and truth["version"] >= 2


def test_bad_twin_options_give_one_line(tmp_path, capsys):
    code = main(["--layout", "bp4d", "--out", str(tmp_path / "x"), "--frames", "5"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--frames" in err and len(err.splitlines()) == 1


def test_every_evaluated_au_is_coded_present_in_every_sequence(both):
    for path in sorted((both / "AUCoding").rglob("*.csv")):
        rows = np.array([[int(v) for v in line.split(",")]
                         for line in path.read_text().splitlines()[1:]])
        present = (rows[:, list(bp4d.OCCURRENCE_AUS)] == 1).any(axis=0)
        assert present.all(), (path.name, np.array(bp4d.OCCURRENCE_AUS)[~present])

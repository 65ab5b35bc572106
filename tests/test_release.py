"""Discovery of the release layout and the parsers for labels, landmarks and the error log."""
import csv

import numpy as np
import pandas as pd
import pytest
import scipy.io

from _disfa_fixtures import write_mat, write_release
from pipeline.datasets.disfa.facts import ALL_AUS, BAD_FRAMES_CSV, FrameRange, bad_frame_ranges
from pipeline.datasets.disfa import (ReleaseError, discover, landmark_file_index,
                                     parse_error_log_table, read_error_log, read_label_file,
                                     read_labels, read_landmark_mat, read_landmarks)
from pipeline.datasets.disfa.landmarks import _fast_mat_variable


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("disfa")
    return write_release(root, {"SN001": 40, "SN002": 40, "SN010": 39, "SN031": 40},
                         cameras=("left", "right"), missing_landmarks={"SN031": [10]})


def test_discovery_handles_the_release_quirks(release):
    layout = discover(release.root)
    assert list(layout.subjects) == ["SN001", "SN002", "SN010", "SN031"]
    names = {s: {c: p.name for c, p in f.videos.items()} for s, f in layout.subjects.items()}
    # The fixture varies case the way the release does; all are found, per camera.
    assert {n["left"].lower() for n in names.values()} == {
        f"leftvideo{s.lower()}_comp.avi" for s in names}
    assert all(n["right"].lower().startswith("rightvideo") for n in names.values())
    assert layout.dirs["right"].name == "Video_RightCamera"
    assert {f.landmark_dir.name for f in layout.subjects.values()} == {"frame_lm", "tmp_frame_lm"}
    assert sorted(layout.subjects["SN002"].label_files) == sorted(ALL_AUS)


def test_both_landmark_naming_schemes_map_to_0_based_frames(release):
    layout = discover(release.root)
    zero_based = landmark_file_index(layout.subjects["SN001"].landmark_dir)
    one_based = landmark_file_index(layout.subjects["SN031"].landmark_dir)
    assert zero_based[0].name == "SN001_0000_lm.mat"
    assert one_based[0].name == "l00001_lm.mat"  # 1-based file for 0-based frame 0
    assert 10 not in one_based and len(one_based) == 39
    truth = release.landmarks[40]
    for subject in ("SN001", "SN031"):
        lms = read_landmarks(layout.subjects[subject], 40)
        keep = ~lms.filled
        np.testing.assert_allclose(lms.points[keep], truth[keep], atol=1e-4)  # -1: 0-based


def test_isolated_missing_landmark_file_is_filled_longer_gaps_are_not(tmp_path):
    rel = write_release(tmp_path, {"SN005": 30}, missing_landmarks={"SN005": [0, 7, 15, 16]})
    files = discover(tmp_path).subjects["SN005"]
    lms = read_landmarks(files, 30)
    assert np.flatnonzero(lms.filled).tolist() == [0, 7]
    assert np.flatnonzero(lms.missing).tolist() == [15, 16]
    np.testing.assert_allclose(lms.points[7], rel.landmarks[30][6], atol=1e-4)  # previous frame
    np.testing.assert_allclose(lms.points[0], rel.landmarks[30][1], atol=1e-4)  # next at start
    assert np.isnan(lms.points[15]).all()
    # Files beyond the labelled frames are counted, not read.
    assert read_landmarks(files, 20).extra_files == 10  # frames 20-29


def test_labels_read_in_all_aus_order(release):
    files = discover(release.root).subjects["SN010"]
    intensity = read_labels(files)
    np.testing.assert_array_equal(intensity, release.intensity["SN010"])
    assert intensity.shape == (39, 12) and intensity.dtype == np.uint8


@pytest.mark.parametrize("body, message", [
    ("1,0\n2,x\n", "line 2: non-numeric intensity 'x'"),
    ("1,0\n2,7\n", "line 2: intensity '7' is not 0-5"),
    ("1,0\n3,1\n", "line 2: frame 3, expected 2"),
    ("1,0\n2\n", "line 2: expected 'frame,intensity'"),
    ("a,0\n", "line 1: non-numeric frame 'a'"),
    ("\n\n", "no labels"),
])
def test_label_parse_errors_name_file_and_line(tmp_path, body, message):
    path = tmp_path / "SN003_au4.txt"
    path.write_text(body)
    with pytest.raises(ReleaseError) as err:
        read_label_file(path, "ActionUnit_Labels/SN003/SN003_au4.txt")
    assert str(err.value).startswith("ActionUnit_Labels/SN003/SN003_au4.txt")
    assert message in str(err.value)


def test_label_files_of_different_lengths_are_named(release, tmp_path):
    rel = write_release(tmp_path, {"SN003": 20})
    path = rel.root / "ActionUnit_Labels" / "SN003" / "SN003_au9.txt"
    path.write_text("".join(f"{i},0\n" for i in range(1, 19)))
    with pytest.raises(ReleaseError, match=r"SN003/SN003_au9.txt has 18 frames, the others 20"):
        read_labels(discover(rel.root).subjects["SN003"])
    path.unlink()
    with pytest.raises(ReleaseError, match=r"no label file for AU \[9\]"):
        read_labels(discover(rel.root).subjects["SN003"])


@pytest.mark.parametrize("compress", [False, True])
def test_fast_mat_reader_matches_scipy(tmp_path, compress):
    rng = np.random.default_rng(0)
    for dtype, values in [(np.float64, rng.uniform(0, 1000, (66, 2))),
                          (np.float64, np.arange(132.0).reshape(66, 2)),  # stored as small ints
                          (np.float32, rng.uniform(0, 1000, (66, 2)))]:
        path = tmp_path / "x.mat"
        scipy.io.savemat(str(path), {"before": np.ones((2, 3)), "pts": values.astype(dtype)},
                         do_compression=compress)
        fast = _fast_mat_variable(path.read_bytes(), "pts")
        np.testing.assert_array_equal(fast, scipy.io.loadmat(str(path))["pts"])


def test_matlab_v73_landmarks_are_read_through_hdf5(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "SN001_0000_lm.mat"
    pts = np.random.default_rng(1).uniform(0, 500, (66, 2))
    with h5py.File(path, "w", userblock_size=512) as f:
        f["pts"] = pts.T  # MATLAB writes column-major: HDF5 sees the transpose
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 ."
    with open(path, "r+b") as f:
        f.write(header.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02IM")
    np.testing.assert_allclose(read_landmark_mat(path), pts)


def test_mat_errors_name_the_file(tmp_path):
    path = tmp_path / "SN001_0003_lm.mat"
    write_mat(path, np.zeros((68, 2)))
    with pytest.raises(ReleaseError, match=r"Landmark_Points/SN001/x/SN001_0003_lm.mat: 'pts' "
                                           r"has shape \(68, 2\), expected \(66, 2\)"):
        read_landmark_mat(path, "Landmark_Points/SN001/x/SN001_0003_lm.mat")
    scipy.io.savemat(str(path), {"points": np.zeros((66, 2))})
    with pytest.raises(ReleaseError, match="no variable 'pts'"):
        read_landmark_mat(path)
    path.write_bytes(b"not a mat file at all")
    with pytest.raises(ReleaseError, match="SN001_0003_lm.mat: not a readable .mat file"):
        read_landmark_mat(path)


def test_missing_root_and_empty_root(tmp_path):
    with pytest.raises(ReleaseError, match="does not exist"):
        discover(tmp_path / "nowhere")
    with pytest.raises(ReleaseError, match="is this the DISFA release root"):
        discover(tmp_path)


def _manifest_rows():
    """The manifest's ranges laid out as a hand-made sheet: subject cell, ranges in text."""
    rows = [["Subject", "Frames with bad landmarks"]]
    for subject, ranges in bad_frame_ranges().items():
        rows.append([subject, ", ".join(f"{r.first}-{r.last}" for r in ranges)])
    return rows


def test_error_log_table_layouts():
    expected = bad_frame_ranges()
    assert parse_error_log_table(_manifest_rows()) == expected
    # One range per row, subject only on the first row of its block (merged cells).
    rows = [["SN001", "398-420"], [None, "3190 - 3243"], ["SN 2", "800~826"]]
    assert parse_error_log_table(rows) == {
        "SN001": [FrameRange(398, 420), FrameRange(3190, 3243)], "SN002": [FrameRange(800, 826)]}
    # Numeric first/last cells (floats, as Excel stores them).
    rows = [["subject", "start", "end"], ["SN004", 4541.0, 4555.0], [None, 10, 12]]
    assert parse_error_log_table(rows) == {"SN004": [FrameRange(10, 12), FrameRange(4541, 4555)]}
    # One subject per column.
    rows = [["SN006", "SN009"], ["1349-1405", "1736-1808"], [None, "1851-1885"]]
    assert parse_error_log_table(rows) == {
        "SN006": [FrameRange(1349, 1405)],
        "SN009": [FrameRange(1736, 1808), FrameRange(1851, 1885)]}


def test_error_log_table_errors():
    with pytest.raises(ReleaseError, match="row 1: frame range 5-9 before any subject"):
        parse_error_log_table([["5-9"]])
    with pytest.raises(ReleaseError, match="row 2: bad frame range 9-5"):
        parse_error_log_table([["SN001"], ["9-5"]])


def test_read_error_log_csv_and_xls(tmp_path, monkeypatch):
    assert read_error_log(BAD_FRAMES_CSV) == bad_frame_ranges()
    # A CSV in the sheet's own layout goes through the tolerant parser.
    sheet_csv = tmp_path / "Error_LOG_Sheet.csv"
    with sheet_csv.open("w", newline="") as handle:
        csv.writer(handle).writerows(_manifest_rows())
    assert read_error_log(sheet_csv) == bad_frame_ranges()
    # .xls goes through pandas.read_excel (xlrd), every sheet; writing .xls needs xlwt, which is
    # not installed, so the workbook is simulated at pandas' boundary.
    calls = {}

    def fake_read_excel(path, sheet_name, header, engine):
        calls.update(path=path, sheet_name=sheet_name, header=header, engine=engine)
        rows = _manifest_rows()
        return {"Sheet1": pd.DataFrame(rows[:8]), "Sheet2": pd.DataFrame(rows[8:])}

    monkeypatch.setattr(pd, "read_excel", fake_read_excel)
    xls = tmp_path / "Error_LOG_Sheet.xls"
    xls.write_bytes(b"")
    assert read_error_log(xls) == bad_frame_ranges()
    assert calls["engine"] == "xlrd" and calls["sheet_name"] is None and calls["header"] is None
    with pytest.raises(ReleaseError, match="unknown format"):
        (tmp_path / "log.json").write_text("{}")
        read_error_log(tmp_path / "log.json")
    with pytest.raises(ReleaseError, match="does not exist"):
        read_error_log(tmp_path / "absent.xls")


def test_unreadable_xls_is_a_clear_error(tmp_path):
    xls = tmp_path / "Error_LOG_Sheet.xls"
    xls.write_bytes(b"this is not a workbook")
    with pytest.raises(ReleaseError, match="Error_LOG_Sheet.xls: cannot read the spreadsheet"):
        read_error_log(xls)

"""The versioned DISFA facts reproduce the published frame counts."""
import numpy as np
import pytest

from pipeline.datasets.disfa import facts as disfa


def kept_frames(subject: str, ranges) -> int:
    n = disfa.n_frames(subject)
    return int((~disfa.bad_frame_mask(ranges.get(subject, []), n)).sum())


def test_release_totals():
    assert len(disfa.SUBJECTS) == 27
    assert sum(disfa.n_frames(s) for s in disfa.SUBJECTS) == 130_814
    ranges = disfa.bad_frame_ranges()
    assert set(ranges) <= set(disfa.SUBJECTS)
    assert sum(len(r) for rs in ranges.values() for r in rs) == 4_670
    assert sum(kept_frames(s, ranges) for s in disfa.SUBJECTS) == 126_144
    assert kept_frames("SN021", ranges) == 1_793


def test_standard_parts_frame_counts():
    folds = disfa.standard_folds()
    ranges = disfa.bad_frame_ranges()
    parts = folds["parts"]
    assert sorted(s for p in parts for s in p) == sorted(disfa.SUBJECTS)
    assert [sum(kept_frames(s, ranges) for s in p) for p in parts] == [43_173, 40_344, 42_627]
    for k, val in enumerate(folds["validation_subjects_per_fold"]):
        assert not set(val) & set(parts[k]), "validation subjects must not be test subjects"
        assert len(val) == 2


def test_our_folds_map_to_me_graphau_numbering():
    """ME-GraphAU's tool/DISFA_image_label_process.py: "fold1: train part1+part2, test part3",
    fold2 tests part2, fold3 tests part1 (first subjects of its part lists below)."""
    theirs = {1: "SN003", 2: "SN013", 3: "SN002"}  # ME-GraphAU fold -> first test subject
    folds = disfa.standard_folds()
    mapping = folds["peer_fold_numbers"]["ME-GraphAU"]
    for k, part in enumerate(folds["parts"]):
        assert part[0] == theirs[mapping[k]]
    assert mapping == [3, 2, 1]


@pytest.mark.parametrize("text,expected", [("C", 3), ("b", 2), ("0", 0), (5, 5), ("E", 5)])
def test_parse_threshold(text, expected):
    assert disfa.parse_threshold(text) == expected


@pytest.mark.parametrize("bad", ["F", "6", "-1", "x", ""])
def test_parse_threshold_rejects(bad):
    with pytest.raises(ValueError, match="threshold"):
        disfa.parse_threshold(bad)


def test_bad_frame_mask_is_one_based_inclusive():
    mask = disfa.bad_frame_mask([disfa.FrameRange(2, 3)], 5)
    assert mask.tolist() == [False, True, True, False, False]


def test_bad_frame_csv_errors_name_file(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("subject,first_frame,last_frame\nSN001,10,x\n")
    with pytest.raises(ValueError, match="log.csv"):
        disfa.read_bad_frame_csv(path)


def test_au_columns():
    assert disfa.au_columns([1, 26]) == [0, 11]
    with pytest.raises(ValueError, match="AUs \\[3\\]"):
        disfa.au_columns([3])

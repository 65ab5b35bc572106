"""BP4D as shipped (#26 item 2): both release variants read from the twin with the right counts,
masks, padding and landmarks; the standard parts and the JAA drop list reproduce the facts'
counts; a bad layout gives one line naming the file."""
from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pipeline.cli import CommandError
from pipeline.datasets.base import NOT_CODED
from pipeline.datasets.bp4d import facts as bp4d
from pipeline.datasets.bp4d.adapter import NO_IMAGE, NO_INTENSITY_ROW, NO_LANDMARKS, BP4DAdapter
from pipeline.datasets.bp4d.folds import sequence_table
from pipeline.datasets.bp4d.landmarks import landmarks_for_frames, read_landmark_file
from pipeline.twin.bp4d_files import write_mat_v5, write_mat_v73
from pipeline.twin.bp4d_layout import (OCCURRENCE_MIN, PAD_FORMATS, BP4DTwinConfig, plan_sequences,
                                       sequence_intensity, synthesize_bp4d)

# The facts' published counts (BP4D_FACTS.md, "The standard subject-independent 3-fold split").
ALL_ROWS = {"parts": [50_631, 50_182, 46_034], "total": 146_847}
JAA_ROWS = {"parts": [50_601, 50_166, 45_809], "total": 146_576}


# --------------------------------------------------------------------------- the manifest


def test_the_manifest_reproduces_the_facts_counts_and_fold_mapping():
    adapter = BP4DAdapter()
    manifest = adapter.standard_folds()
    assert manifest["dataset"] == "bp4d" and "ME-GraphAU" in manifest["fold_test_part_source"]
    parts = manifest["parts"]
    assert sorted(s for p in parts for s in p) == sorted(bp4d.SUBJECTS)
    assert [f["test_part"] for f in manifest["folds"]] == [3, 2, 1]
    # Per-subject rows from the per-sequence table, summed here, not copied from the manifest.
    rows, part_of = Counter(), {}
    table = sequence_table()
    assert len(table) == 41 * 8
    for row in table:
        rows[row["subject"]] += int(row["csv_rows"])
        part_of[row["subject"]] = int(row["part"])
    assert manifest["frames_per_subject"] == dict(rows)
    assert all(part_of[s] == k + 1 for k, p in enumerate(parts) for s in p)
    per_part = [sum(rows[s] for s in p) for p in parts]
    assert per_part == manifest["kept_frames_per_part"] == ALL_ROWS["parts"]
    assert sum(per_part) == manifest["total_frames"] == ALL_ROWS["total"]
    # The drop list, applied to the same rows, gives JAA's counts.
    drop = adapter.dropped_frames("jaa")
    assert adapter.drop_lists == ("jaa",) and sum(map(len, drop.values())) == 271
    jaa_rows = Counter(rows)
    for (subject, task), frames in drop.items():
        jaa_rows[subject] -= len(frames)
        seq = next(r for r in table if (r["subject"], r["task"]) == (subject, task))
        assert all(int(seq["first_frame"]) <= f <= int(seq["last_frame"]) for f in frames)
        assert int(seq["csv_rows"]) - len(frames) == int(seq["jaanet_kept"])
    jaa_parts = [sum(jaa_rows[s] for s in p) for p in parts]
    assert jaa_parts == manifest["drop_lists"]["jaa"]["kept_frames_per_part"] == JAA_ROWS["parts"]
    assert sum(jaa_parts) == JAA_ROWS["total"]
    for k, fold in enumerate(manifest["folds"]):
        test = set(parts[fold["test_part"] - 1])
        assert not test & set(fold["validation_subjects"])
        assert manifest["validation_subjects_per_fold"][k] == fold["validation_subjects"]


def test_an_unknown_drop_list_is_named():
    with pytest.raises(ValueError, match="choose from jaa"):
        BP4DAdapter().dropped_frames("aunet2")


# --------------------------------------------------------------------------- the twin, read


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    out = tmp_path_factory.mktemp("bp4d_twin")
    cfg = BP4DTwinConfig(n_subjects=3, frames=48, tasks=2, seed=3, width=96, height=128)
    synthesize_bp4d(out, cfg)
    return out, cfg


def _copy(twin, tmp_path) -> Path:
    root = tmp_path / "release"
    shutil.copytree(twin[0], root)
    return root


def test_both_variants_read_with_counts_masks_and_padding(twin):
    root, cfg = twin
    adapter = BP4DAdapter()
    refs = adapter.sequences(root)
    plans = {(p.subject, p.task): p for p in plan_sequences(cfg)}
    assert [(r.subject, r.name) for r in refs] == sorted(plans)
    assert {p.variant for p in plans.values()} == {"fera", "full"}
    pads = set()
    for ref in refs:
        plan = plans[(ref.subject, ref.name)]
        data = adapter.read_sequence(root, ref)
        frames = list(plan.frame_numbers)
        if plan.no_image_row is not None:
            del frames[plan.no_image_row]
            assert data.dropped == {NO_IMAGE: 1}
        assert data.frame_numbers.tolist() == frames  # matched by integer whatever the padding
        assert [int(p.stem) for p in data.images] == frames
        pads |= {len(p.stem) for p in data.images if p.stem.startswith("0")}
        keep = np.isin(plan.frame_numbers, frames)
        expected = (sequence_intensity(plan)[keep] >= OCCURRENCE_MIN).astype(np.uint8)
        au, start, n = plan.not_coded
        rows = np.flatnonzero(keep)
        coded9 = (rows >= start) & (rows < start + n)
        expected[coded9, bp4d.OCCURRENCE_AUS.index(au)] = NOT_CODED
        np.testing.assert_array_equal(data.occurrence, expected)  # 9 -> NOT_CODED, never 0/1
        first, n = plan.no_landmarks
        nan_rows = np.isnan(data.landmarks).any(axis=(1, 2))
        assert nan_rows.tolist() == ((rows >= first) & (rows < first + n)).tolist()
        assert data.counts[NO_LANDMARKS] == n
        pts = data.landmarks[~nan_rows]
        assert data.landmarks.shape[1:] == (49, 2)
        assert (pts[..., 0] > 0).all() and (pts[..., 0] < cfg.width).all()
        assert (pts[..., 1] > 0).all() and (pts[..., 1] < cfg.height).all()
        _check_intensity(plan, data, keep)
    assert {p.pad for p in plans.values()} == set(PAD_FORMATS) and {4, 5} <= pads
    assert any(p.first_frame > 1 for p in plans.values())
    assert {p.landmark_rows for p in plans.values()} == {"csv", "video"}


def _check_intensity(plan, data, keep) -> None:
    if plan.variant == "full":  # no intensity files in that variant
        assert (data.intensity == NOT_CODED).all()
        return
    truth = sequence_intensity(plan)[keep][:, [bp4d.OCCURRENCE_AUS.index(a)
                                               for a in bp4d.INTENSITY_AUS]]
    assert data.counts[NO_INTENSITY_ROW] == 1
    assert data.intensity[1, 0] == NOT_CODED and data.intensity[2, 0] == NOT_CODED  # gone, 9
    np.testing.assert_array_equal(data.intensity[3:, 0], truth[3:, 0])
    np.testing.assert_array_equal(data.intensity[:, 1:], truth[:, 1:])


def test_landmark_files_map_rows_to_frames_and_become_zero_based(tmp_path):
    pts = np.arange(3 * 49 * 2, dtype=np.float64).reshape(3, 49, 2) + 1.0
    pts[1] = np.nan
    write_mat_v5(tmp_path / "a.mat", pts, "49,2,N")
    write_mat_v73(tmp_path / "b.mat", pts)
    for name in ("a.mat", "b.mat"):
        rows = read_landmark_file(tmp_path / name, name)
        got = landmarks_for_frames(rows, np.array([7, 8, 9]), name)  # one row per CSV row
        np.testing.assert_array_equal(got[[0, 2]], pts[[0, 2]] - 1.0)
        assert np.isnan(got[1]).all()
        got = landmarks_for_frames(rows, np.array([2, 3]), name)  # rows = frames 1..3
        np.testing.assert_array_equal(got[1], pts[2] - 1.0)
        with pytest.raises(CommandError, match=f"{name}: 3 landmark frames fit neither"):
            landmarks_for_frames(rows, np.array([5, 6]), name)


# --------------------------------------------------------------------------- bad layouts


def _one_line_naming(err: pytest.ExceptionInfo, *names: str) -> None:
    assert isinstance(err.value, CommandError) and "\n" not in str(err.value)
    for name in names:
        assert name in str(err.value)


def test_a_root_without_aucoding_is_named(twin, tmp_path):
    root = _copy(twin, tmp_path)
    shutil.rmtree(root / "AUCoding")
    with pytest.raises(CommandError) as err:
        BP4DAdapter().sequences(root)
    _one_line_naming(err, str(root), "no occurrence CSV")


def test_a_csv_whose_header_position_disagrees_is_refused(twin, tmp_path):
    root = _copy(twin, tmp_path)
    csv_path = sorted((root / "AUCoding").glob("*.csv"))[0]
    lines = csv_path.read_text().splitlines()
    header = lines[0].split(",")
    header[7], header[8] = header[8], header[7]  # AU7's column named 8 and vice versa
    csv_path.write_text("\n".join([",".join(header), *lines[1:]]) + "\n")
    adapter = BP4DAdapter()
    ref = next(r for r in adapter.sequences(root) if f"{r.subject}_{r.name}" == csv_path.stem)
    with pytest.raises(CommandError) as err:
        adapter.read_sequence(root, ref)
    _one_line_naming(err, f"AUCoding/{csv_path.name}", "position")


@pytest.mark.parametrize("variant", ["v5", "v73"])
def test_a_landmark_mat_of_unknown_shape_is_refused(twin, tmp_path, variant):
    root = _copy(twin, tmp_path)
    adapter = BP4DAdapter()
    ref = adapter.sequences(root)[0]
    folder = "BP4D-fpoints" if (root / "BP4D-fpoints" / f"{ref.subject}_{ref.name}.mat"
                                ).exists() else "2DFeatures"
    path = root / folder / f"{ref.subject}_{ref.name}.mat"
    n = twin[1].frames // twin[1].tasks
    if variant == "v5":  # 98 numbers a frame: interleaved or not, nobody can tell
        scipy.io.savemat(path, {"fpoints": np.ones((n, 98))})
        expected = "unknown shape"
    else:  # a 68-point matrix where 49 are expected
        write_mat_v73(path, np.ones((n, 68, 2)))
        expected = "expected 49x2"
    with pytest.raises(CommandError) as err:
        adapter.read_sequence(root, ref)
    _one_line_naming(err, f"{folder}/{path.name}", expected)


def test_two_images_for_one_frame_number_are_refused(twin, tmp_path):
    root = _copy(twin, tmp_path)
    adapter = BP4DAdapter()
    ref = adapter.sequences(root)[0]
    image = sorted(Path(ref.frames_dir).glob("*.jpg"))[0]
    shutil.copy(image, image.with_name(f"000{image.name}"))
    with pytest.raises(CommandError) as err:
        adapter.read_sequence(root, ref)
    _one_line_naming(err, image.name, "two image files")


def test_a_csv_without_its_frame_folder_is_named(twin, tmp_path):
    root = _copy(twin, tmp_path)
    shutil.rmtree(root / "BP4D-training" / "F001" / "T1")
    with pytest.raises(CommandError) as err:
        BP4DAdapter().sequences(root)
    _one_line_naming(err, "AUCoding/F001_T1.csv", "F001/T1/")


def test_a_landmark_file_that_names_no_sequence_is_refused(twin, tmp_path):
    root = _copy(twin, tmp_path)
    (root / "2DFeatures" / "F001").mkdir()
    shutil.copy(next((root / "2DFeatures").glob("*.mat")), root / "2DFeatures" / "F001" / "x.mat")
    with pytest.raises(CommandError) as err:
        BP4DAdapter().sequences(root)
    _one_line_naming(err, "2DFeatures/F001/x.mat", "does not say its sequence")


@pytest.mark.parametrize("folder", ["AU Intensity Codes3.0", "AUCoding/AU_INT"])
def test_the_intensity_folder_is_found_under_each_spelling(twin, tmp_path, folder):
    root = _copy(twin, tmp_path)
    (root / "AU-Intensity-Codes3.0").rename(root / folder)  # the fixture's (odd-seed) spelling
    adapter = BP4DAdapter()
    ref = adapter.sequences(root)[0]
    data = adapter.read_sequence(root, ref)
    assert (data.intensity[3:] != NOT_CODED).all() and data.counts[NO_INTENSITY_ROW] == 1

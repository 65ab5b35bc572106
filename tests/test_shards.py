"""Shard round trip, atomic writes and the reader's checks."""
import pickle

import h5py
import numpy as np
import pytest

from pipeline.datasets.disfa.facts import ALL_AUS
from pipeline.shards import ShardError, ShardReader, ShardWriter, is_complete_shard


def smooth_image(rng, size):
    # JPEG keeps smooth images close; noise would make the round-trip check meaningless.
    y, x = np.mgrid[0:size, 0:size]
    base = rng.uniform(0, 255, 3)
    img = (base + 60 * np.sin(x[..., None] / 7.0 + np.arange(3)) * np.cos(y[..., None] / 9.0))
    return np.clip(img, 0, 255).astype(np.uint8)


def write(path, n=5, size=32, encoding="jpeg", threshold=3):
    rng = np.random.default_rng(0)
    images = [smooth_image(rng, size) for _ in range(n)]
    intensity = rng.integers(0, 6, size=(n, 12)).astype(np.uint8)
    landmarks = rng.uniform(0, size, size=(n, 66, 2)).astype(np.float32)
    with ShardWriter(path, size, encoding=encoding) as w:
        for i in range(n):
            w.append(images[i], 10 + i, intensity[i], landmarks[i])
        w.commit(subject="SN001", camera="left", threshold=threshold, nose_target=(16, 12),
                 chin_target=(16, 28), n_source_frames=n + 2, dropped={"bad_landmarks": 2},
                 config={"size": size})
    return images, intensity, landmarks


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_round_trip(tmp_path, encoding):
    path = tmp_path / "SN001_left.h5"
    images, intensity, landmarks = write(path, encoding=encoding)
    r = ShardReader(path)
    assert len(r) == 5
    assert r.frame_index.tolist() == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(r.intensity, intensity)
    np.testing.assert_allclose(r.landmarks, landmarks)
    cols = [ALL_AUS.index(a) for a in r.au_ids]
    np.testing.assert_array_equal(r.labels, (intensity[:, cols] >= 3).astype(np.uint8))
    np.testing.assert_array_equal(r.attrs["pos_count"], r.labels.sum(0))
    assert r.attrs["intensity_hist"].shape == (12, 6) and r.attrs["intensity_hist"].sum() == 60
    assert r.attrs["dropped"] == {"bad_landmarks": 2}
    assert r.attrs["config"] == {"size": 32}
    for i in range(5):
        got = r.image(i)
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8
        err = np.abs(got.astype(int) - images[i].astype(int)).mean()
        assert err == 0 if encoding == "raw" else err < 4


def test_negatives_per_positive_is_not_called_pos_weight(tmp_path):
    """The per-subject n_neg/n_pos attr is a statistic, not training weights: named so, and old
    shards' ``pos_weight`` is still read under the new name."""
    path = tmp_path / "SN001_left.h5"
    write(path, n=5)
    r = ShardReader(path)
    pos = r.labels.sum(0)
    np.testing.assert_allclose(r.attrs["neg_pos_ratio"], (5 - pos) / np.maximum(pos, 1))
    assert "pos_weight" not in r.attrs
    with h5py.File(path, "r") as f:
        assert "neg_pos_ratio" in f.attrs and "pos_weight" not in f.attrs
    # Lengths default to the frames read when a writer does not give them.
    assert r.attrs["n_video_frames"] == r.attrs["n_label_frames"] == 7
    with h5py.File(path, "r+") as f:  # a shard written before the rename
        f.attrs["pos_weight"] = f.attrs["neg_pos_ratio"]
        del f.attrs["neg_pos_ratio"]
    old = ShardReader(path)
    np.testing.assert_array_equal(old.attrs["neg_pos_ratio"], r.attrs["neg_pos_ratio"])


def test_reader_survives_pickling_for_workers(tmp_path):
    path = tmp_path / "s.h5"
    images, *_ = write(path, encoding="raw")
    r = ShardReader(path)
    r.image(0)  # opens a handle, which must not travel
    clone = pickle.loads(pickle.dumps(r))
    np.testing.assert_array_equal(clone.image(3), images[3])


def test_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "s.h5"
    with pytest.raises(RuntimeError):
        with ShardWriter(path, 8) as w:
            w.append(np.zeros((8, 8, 3), np.uint8), 0, np.zeros(12), np.zeros((66, 2)))
            raise RuntimeError("subject failed")
    assert list(tmp_path.iterdir()) == []


def test_incomplete_and_corrupt_shards_are_refused(tmp_path):
    path = tmp_path / "s.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frame_index", data=np.arange(3))
    assert not is_complete_shard(path)
    with pytest.raises(ShardError, match="incomplete"):
        ShardReader(path)
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ShardError, match="junk.h5"):
        ShardReader(junk)


def test_wrong_frame_shape_names_frame(tmp_path):
    with ShardWriter(tmp_path / "s.h5", 8) as w:
        with pytest.raises(ShardError, match="frame 7"):
            w.append(np.zeros((9, 8, 3), np.uint8), 7, np.zeros(12), np.zeros((66, 2)))

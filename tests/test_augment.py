"""Alignment jitter: exact transforms, drawn from the sampler's stream, training frames only."""
import numpy as np
import pytest

from model.engine.augment import AlignmentJitter
from model.engine.data import ShardFrames
from model.engine.sampler import WeightedFrameSampler
from pipeline.shards import ShardReader, ShardWriter

MID = (0.5, 0.5, 0.5, 0.5)  # uniforms at the middle of their ranges: no change


def blob_image(size=32, at=(16, 16)):
    image = np.zeros((size, size, 3), np.uint8)
    image[at[1] - 1 : at[1] + 2, at[0] - 1 : at[0] + 2] = 255
    return image


def centroid(image):
    ys, xs = np.nonzero(image[..., 0] > 127)
    return xs.mean(), ys.mean()


def test_middle_uniforms_and_zero_ranges_are_identity():
    image = blob_image(at=(10, 20))
    np.testing.assert_array_equal(AlignmentJitter(0.1, 10, 0.1).apply(image, MID), image)
    np.testing.assert_array_equal(AlignmentJitter().apply(image, (0.0, 0.9, 0.3, 0.99)), image)
    assert not AlignmentJitter().enabled and AlignmentJitter(degrees=1).enabled


def test_shift_scale_and_rotation_move_a_blob_as_specified():
    size = 32
    c = (size - 1) / 2
    shifted = AlignmentJitter(shift=0.125).apply(blob_image(size, (12, 12)), (0.5, 0.5, 1.0, 0.0))
    assert centroid(shifted) == pytest.approx((12 + 4, 12 - 4), abs=0.3)
    scaled = AlignmentJitter(scale=0.2).apply(blob_image(size, (20, 16)), (1.0, 0.5, 0.5, 0.5))
    assert centroid(scaled)[0] == pytest.approx(c + 1.2 * (20 - c), abs=0.3)
    # +45 degrees: OpenCV's angle turns the picture counter-clockwise on screen (y points down)
    rotated = AlignmentJitter(degrees=45).apply(blob_image(size, (24, 16)), (0.5, 1.0 - 1e-9, 0.5, 0.5))
    dx, dy, t = 24 - c, 16 - c, np.pi / 4
    expected = (c + np.cos(t) * dx + np.sin(t) * dy, c - np.sin(t) * dx + np.cos(t) * dy)
    assert centroid(rotated) == pytest.approx(expected, abs=0.3)


def test_ranges_are_checked():
    with pytest.raises(ValueError, match="jitter out of range"):
        AlignmentJitter(scale=1.5)


def test_sampler_draws_jitter_from_its_stream_and_resumes():
    weights = np.ones(20)
    plain = list(WeightedFrameSampler(weights, 12, seed=3))
    jittered = WeightedFrameSampler(weights, 12, seed=3, jitter=True)
    first = list(jittered)
    # indices and flips come first in the stream: jitter changes nothing else about epoch 1
    assert [t[:2] for t in first] == plain
    assert all(len(t) == 3 and len(t[2]) == 4 and all(0 <= u < 1 for u in t[2]) for t in first)
    assert len({t[2] for t in first}) == 12
    state = jittered.state_dict(consumed=5)
    expected = list(jittered)  # epoch 2
    clone = WeightedFrameSampler(weights, 12, seed=99, jitter=True)
    clone.load_state_dict(jittered.state_dict(consumed=None))
    # a state taken mid-epoch replays the rest of that epoch exactly
    again = WeightedFrameSampler(weights, 12, seed=99, jitter=True)
    again.load_state_dict(state)
    assert list(again) == first[5:]
    assert list(clone) != expected  # the next epoch draws new values


def test_dataset_applies_jitter_only_when_configured(tmp_path):
    path = tmp_path / "SN001_left.h5"
    with ShardWriter(path, 32, encoding="raw") as w:
        w.append(blob_image(32, (12, 12)), 0, np.zeros(12), np.zeros((66, 2)))
        w.commit(subject="SN001", camera="left", threshold=3, nose_target=(16, 16),
                 chin_target=(16, 28), n_source_frames=1)
    u = (0.5, 0.5, 1.0, 0.5)
    plain = ShardFrames([ShardReader(path)], (1, 2), 3)
    jittered = ShardFrames([ShardReader(path)], (1, 2), 3, jitter=AlignmentJitter(shift=0.125))
    np.testing.assert_array_equal(plain[(0, False, u)][0].numpy(), plain[0][0].numpy())
    assert centroid(jittered[(0, False, u)][0].numpy())[0] == pytest.approx(16, abs=0.3)
    np.testing.assert_array_equal(jittered[(0, False)][0].numpy(), plain[0][0].numpy())


def test_preloaded_frames_are_the_frames_decoded_on_demand(tmp_path):
    """preload() decodes every frame once; reads give the same pixels (JPEG, resize, flip,
    jitter), a fresh array each time, and the same IndexError past the end."""
    rng = np.random.default_rng(0)
    path = tmp_path / "SN001_left.h5"
    with ShardWriter(path, 48, encoding="jpeg") as w:
        for i in range(5):
            w.append(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8), i, np.zeros(12),
                     np.zeros((66, 2)))
        w.commit(subject="SN001", camera="left", threshold=3, nose_target=(24, 24),
                 chin_target=(24, 40), n_source_frames=5)
    jitter = AlignmentJitter(scale=0.05, degrees=5, shift=0.05)
    for size in (48, 32):
        lazy = ShardFrames([ShardReader(path)], (1, 2), 3, image_size=size, jitter=jitter)
        cached = ShardFrames([ShardReader(path)], (1, 2), 3, image_size=size, jitter=jitter)
        cached.preload()
        assert cached.decoded_bytes == 5 * size * size * 3
        for key in (0, (1, True), (2, False, (0.1, 0.9, 0.3, 0.7)), (4, True, (0.8, 0.2, 0.6, 0.4))):
            np.testing.assert_array_equal(cached[key][0].numpy(), lazy[key][0].numpy())
        first = cached.image(3)
        first[:] = 0  # a caller writing into its frame leaves the cache alone
        np.testing.assert_array_equal(cached.image(3), lazy.image(3))
        with pytest.raises(IndexError):
            cached.image(5)

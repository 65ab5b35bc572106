"""The paper's weighted random sampler: frames with rare positive AUs are drawn more often.

The paper says only that "the weight for each positive AU label was calculated for the
training set, then the probability for choosing a frame with a positive label for a specific
AU was calculated based on its weight". This module makes that precise:

1. Per-AU weights on the TRAINING frames (the formula JAA-Net, ARL and ME-GraphAU use)::

       r_i = n_pos_i / N,   w_i = 1 / r_i,   w <- w / sum(w) * K        (so mean(w) = 1)

   An AU with no positive training frame gets r_i = 1 / N (it cannot be drawn more anyway).
2. A frame's draw weight is the sum of the weights of its positive AUs, floored at 1::

       g(f) = max(1, sum_{i : y_fi = 1} w_i),     p(f) = g(f) / sum_f' g(f')

   1 is the weight of an average AU (the weights have mean 1), so a frame with only negative
   labels (or only very common AUs) is still drawn at the base rate, and each rare positive
   label adds its own weight. Frames are drawn independently, with replacement.

The expected drawn positive rate of AU i is therefore ``sum_f y_fi g(f) / sum_f g(f)``
(``expected_positive_rate``); for an AU that never co-occurs with another its positive frames
weigh ``max(1, w_i)``, so the rate is ``max(1, w_i) * n_pos_i / sum g``, i.e. its natural rate
``r_i`` times ``max(1, w_i) / mean(g)``: a rare AU (``w_i > 1``) is raised by its weight, a
common one (``w_i <= 1``) only by ``1 / mean(g)``, which is below 1 once rare AUs are boosted.
Training logs this, the natural rate and the realised rate of the drawn batches.

The sampler also draws the horizontal flip of every sample, so the whole training stream is a
function of one ``torch.Generator``: resuming restores the generator state and, mid-epoch,
skips the samples already consumed, giving the same batches as an uninterrupted run no
matter how many DataLoader workers there are.
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from pipeline.build_folds import peer_au_weights


def au_weights_from_labels(labels: np.ndarray) -> np.ndarray:
    """Peers' per-AU weights ``w_i ∝ 1/r_i`` normalised to sum to K (float64 ``[K]``), from
    0/1 labels; the formula itself is ``pipeline.build_folds.peer_au_weights``.

    NaN labels ("not coded") count for nothing: ``r_i`` is AU i's positives over the frames
    coded for it (labels without NaN: the frames, as ever)."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] == 0:
        raise ValueError(f"labels must be a non-empty [N, K] array, got shape {labels.shape}")
    coded = ~np.isnan(labels) if labels.dtype.kind == "f" else np.ones(labels.shape, bool)
    if coded.all():
        return peer_au_weights(labels.sum(axis=0), labels.shape[0])[0]
    positives = np.where(coded, labels, 0).sum(axis=0)
    # The peers' formula per AU with its own frame count: w_i = coded_i / max(pos_i, 1); an AU
    # never coded gets the weight of an AU present in every frame (it trains nothing anyway).
    rate = np.maximum(positives, 1.0) / np.maximum(coded.sum(axis=0), 1)
    w = 1.0 / np.minimum(rate, 1.0)
    return w / w.sum() * len(w)


def frame_weights(labels: np.ndarray, au_weights: np.ndarray) -> np.ndarray:
    """Draw weight ``g(f) = max(1, sum of the weights of frame f's positive AUs)``; a label not
    coded (NaN) is no positive."""
    labels = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=0.0)
    au_weights = np.asarray(au_weights, dtype=np.float64)
    if labels.ndim != 2 or labels.shape[1] != len(au_weights):
        raise ValueError(f"labels {labels.shape} and {len(au_weights)} AU weights do not fit")
    return np.maximum(1.0, labels @ au_weights)


#: A frame "shows" an AU for the intensity sampler when its coded intensity is at least this (A).
INTENSITY_PRESENT = 1


def task_frame_weights(task: str, labels: np.ndarray, intensity: np.ndarray | None) -> np.ndarray:
    """Draw weights that follow ``--task``.

    * occurrence: :func:`frame_weights` on the occurrence labels (the paper);
    * intensity: the same formula on "intensity >= 1" of every coded AU (``intensity`` [N, 12]),
      so frames with rarely coded AUs, at any intensity, are drawn more often;
    * both: the mean of the two weight vectors, each divided by its own mean (each task's
      sampler gets half of the draws' weight).
    """
    occurrence = frame_weights(labels, au_weights_from_labels(labels))
    if task == "occurrence":
        return occurrence
    if intensity is None:
        raise ValueError(f"task {task!r} needs the frames' intensities")
    present = (np.asarray(intensity) >= INTENSITY_PRESENT).astype(np.uint8)
    regression = frame_weights(present, au_weights_from_labels(present))
    if task == "intensity":
        return regression
    return 0.5 * (occurrence / occurrence.mean() + regression / regression.mean())


def expected_positive_rate(labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-AU positive rate expected among frames drawn with probability ∝ ``weights`` (over
    the frames coded for the AU)."""
    weights = np.asarray(weights, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    coded = ~np.isnan(labels)
    if coded.all():
        return (labels * weights[:, None]).sum(0) / weights.sum()
    # among the drawn frames coded for the AU
    return ((np.where(coded, labels, 0.0) * weights[:, None]).sum(0)
            / np.maximum((coded * weights[:, None]).sum(0), np.finfo(float).tiny))


class WeightedFrameSampler(Sampler):
    """Yields ``(frame_index, flip)`` pairs: ``num_samples`` independent weighted draws per epoch.

    With ``jitter=True`` it yields ``(frame_index, flip, uniforms)``, four uniforms per sample for
    ``model.augment.AlignmentJitter``; they come from the same generator, so resume stays exact.

    ``seed`` should differ per DDP rank so each rank draws its own stream. ``state_dict`` takes
    the number of samples the trainer has actually consumed in the current epoch (a DataLoader
    prefetches, so the sampler cannot know it).
    """

    def __init__(
        self, weights: np.ndarray, num_samples: int, seed: int = 0, flip: bool = True,
        jitter: bool = False,
    ) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.ndim != 1 or len(weights) == 0 or not np.all(np.isfinite(weights)) \
                or weights.min() < 0 or weights.sum() <= 0:
            raise ValueError("sampler weights must be a non-empty 1-D array of finite values >= 0 "
                             "with a positive sum")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.num_samples = int(num_samples)
        self.flip = flip
        self.jitter = jitter
        self.generator = torch.Generator().manual_seed(int(seed))
        self._epoch_start_state = self.generator.get_state()
        self._skip = 0

    def __len__(self) -> int:
        return self.num_samples - self._skip

    def draw(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One epoch's indices, flips and (with ``jitter``) jitter uniforms, advancing the
        generator."""
        self._epoch_start_state = self.generator.get_state()
        index = torch.multinomial(self.weights, self.num_samples, replacement=True,
                                  generator=self.generator)
        flips = torch.rand(self.num_samples, generator=self.generator) < 0.5
        if not self.flip:
            flips.zero_()
        # Drawn only when used, so runs without jitter keep the stream they always had.
        uniforms = (torch.rand(self.num_samples, 4, generator=self.generator, dtype=torch.float64)
                    if self.jitter else None)
        return index, flips, uniforms

    def __iter__(self) -> Iterator[tuple]:
        index, flips, uniforms = self.draw()  # eager: the epoch's draws are fixed up front
        start, self._skip = self._skip, 0
        if uniforms is None:
            for i, f in zip(index[start:].tolist(), flips[start:].tolist()):
                yield i, f
        else:
            for i, f, u in zip(index[start:].tolist(), flips[start:].tolist(),
                               uniforms[start:].tolist()):
                yield i, f, tuple(u)

    def state_dict(self, consumed: int | None = None) -> dict[str, Any]:
        """State to resume from after ``consumed`` samples of the current epoch.

        ``None`` or ``num_samples`` means the epoch is complete: the next epoch starts fresh.
        """
        if consumed is None or consumed >= self.num_samples:
            return {"generator": self.generator.get_state(), "skip": 0,
                    "num_samples": self.num_samples}
        return {"generator": self._epoch_start_state.clone(), "skip": int(consumed),
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("num_samples", self.num_samples)) != self.num_samples:
            raise ValueError(f"sampler state is for {state['num_samples']} samples an epoch, "
                             f"this run draws {self.num_samples}")
        self.generator.set_state(state["generator"])
        self._epoch_start_state = self.generator.get_state()
        self._skip = int(state.get("skip", 0))

"""Training loss of TRA-Net and of every Table 2 variant: the paper's three AU groups' BCE, summed.

Paper: "Multilabel binary cross-entropy was used as the loss function, and losses from the upper
branch, middle branch, and lower branch were summed as the final loss". Each group's loss is the
mean over its (frame, AU) entries, so a group with three AUs does not outweigh one with two.

The groups are the face regions of the AUs (upper 1, 2, 4; middle 6, 9; lower 12, 25, 26; the
other DISFA AUs by ``REGION_OF_AU``), not the heads of the model: a single-branch variant
(``senet50``, ``senet50_cbam``) gets the same loss as TRA-Net on the same logits. One mean over all
K columns instead would scale its gradients by about 1/3, an effective learning rate a third of
TRA-Net's, and Table 2's rows would not compare the modules they name.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..nets.tranet import region_groups


def branch_bce_loss(logits: torch.Tensor, targets: torch.Tensor, branch_groups: Sequence[Sequence[int]],
                    au_weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Sum over groups of the mean BCE-with-logits of that group's AU columns.

    ``logits``/``targets``: [B, K] (targets 0/1, any float dtype). ``branch_groups``: column
    indices per group, together covering every column once. ``au_weights`` ([K], optional)
    multiplies each AU's per-entry loss before the group mean (e.g. the folds' ``au_weights``,
    which sum to K so an all-ones vector is the unweighted loss).
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [B, K]")
    k = logits.shape[1]
    covered = sorted(i for group in branch_groups for i in group)
    if covered != list(range(k)):
        raise ValueError(f"branch_groups {list(map(list, branch_groups))} must cover columns 0..{k - 1} once each")
    per_entry = F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")
    if au_weights is not None:
        weights = torch.as_tensor(au_weights, dtype=logits.dtype, device=logits.device)
        if weights.shape != (k,):
            raise ValueError(f"au_weights has shape {tuple(weights.shape)}, expected ({k},)")
        per_entry = per_entry * weights
    return sum(_columns(per_entry, group).mean() for group in branch_groups)


def _columns(values: torch.Tensor, group: Sequence[int]) -> torch.Tensor:
    """``values[:, group]`` without building an index tensor: indexing with a Python list copies
    the index to the device every call (a host-device synchronisation on CUDA). A run of
    consecutive columns is a slice; others are stacked column by column."""
    group = list(group)
    if group == list(range(group[0], group[0] + len(group))):
        return values[:, group[0]:group[0] + len(group)]
    return torch.stack([values[:, i] for i in group], dim=1)


def region_loss_groups(au_ids: Sequence[int]) -> list[list[int]]:
    """Column indices of the paper's AU groups (upper, middle, lower) present in ``au_ids``."""
    return list(region_groups(au_ids).values())


def region_bce_criterion(au_ids: Sequence[int], au_weights: torch.Tensor | None = None
                         ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of every variant: ``branch_bce_loss`` over the region groups of ``au_ids``."""
    groups = region_loss_groups(au_ids)

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return branch_bce_loss(logits, targets, groups, au_weights)

    return criterion


#: Intensity targets and predictions are divided by this (FACS's top intensity) inside the loss,
#: so a branch's mean squared error lies in [0, 1] like a BCE value of a confident error.
INTENSITY_SCALE = 5.0


def branch_intensity_loss(predictions: torch.Tensor, targets: torch.Tensor,
                          branch_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum over branches of the mean squared error of that branch's intensity columns, on the
    0-1 scale (intensity / 5). ``predictions``/``targets``: [B, R] raw 0-5 intensities."""
    if predictions.shape != targets.shape or predictions.dim() != 2:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets "
                         f"{tuple(targets.shape)} must both be [B, R]")
    covered = sorted(i for group in branch_groups for i in group)
    if covered != list(range(predictions.shape[1])):
        raise ValueError(f"intensity groups {list(map(list, branch_groups))} must cover columns "
                         f"0..{predictions.shape[1] - 1} once each")
    error = (predictions - targets.to(predictions.dtype)) / INTENSITY_SCALE
    per_entry = error * error
    return sum(_columns(per_entry, group).mean() for group in branch_groups)


TASKS = ("occurrence", "intensity", "both")


class TaskLoss:
    """The training loss of ``--task``.

    * occurrence: :func:`branch_bce_loss` (the paper);
    * intensity: :func:`branch_intensity_loss` (MSE per branch, summed);
    * both: BCE + ``intensity_weight`` x MSE. Both terms are sums over the same branches of a
      per-branch mean (BCE of a 0/1 label, squared error of intensity / 5). The MSE of a head
      that predicts the mean is about the intensities' variance / 25, a few hundredths on DISFA-
      like data, against a BCE of 0.3-0.7; the default weight 4 (``TrainConfig``) lifts it to
      the BCE's scale, and on the tiny pixel-visible fixture it learned intensity better than 1.

    With ``intensity`` the occurrence head is not trained; its logits still enter the loss with
    weight 0 so every parameter takes part in the graph (DDP requires it).
    """

    def __init__(self, task: str, branch_groups: Sequence[Sequence[int]],
                 intensity_groups: Sequence[Sequence[int]] = (),
                 au_weights: torch.Tensor | None = None, intensity_weight: float = 1.0) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.task = task
        self.branch_groups = [list(g) for g in branch_groups]
        self.intensity_groups = [list(g) for g in intensity_groups]
        self.au_weights = au_weights
        self.intensity_weight = float(intensity_weight)

    @property
    def uses_intensity(self) -> bool:
        return self.task != "occurrence"

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor,
                 intensity: torch.Tensor | None = None,
                 intensity_targets: torch.Tensor | None = None) -> torch.Tensor:
        if not self.uses_intensity:
            return branch_bce_loss(logits, targets, self.branch_groups, self.au_weights)
        if intensity is None or intensity_targets is None:
            raise ValueError(f"task {self.task!r} needs intensity predictions and targets")
        regression = branch_intensity_loss(intensity, intensity_targets, self.intensity_groups)
        if self.task == "intensity":
            return regression + 0.0 * logits.sum()
        return (branch_bce_loss(logits, targets, self.branch_groups, self.au_weights)
                + self.intensity_weight * regression)

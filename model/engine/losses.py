"""Training loss of TRA-Net and of every Table 2 variant: the paper's three AU groups' BCE, summed.

Paper: "Multilabel binary cross-entropy was used as the loss function, and losses from the upper
branch, middle branch, and lower branch were summed as the final loss". Each group's loss is the
mean over its (frame, AU) entries, so a group with three AUs does not outweigh one with two.

The groups are the face regions of the AUs (upper 1, 2, 4; middle 6, 9; lower 12, 25, 26; the
other DISFA AUs by ``REGION_OF_AU``), not the heads of the model: a single-branch variant
(``senet50``, ``senet50_cbam``) gets the same loss as TRA-Net on the same logits. One mean over all
K columns instead would scale its gradients by about 1/3, an effective learning rate a third of
TRA-Net's, and Table 2's rows would not compare the modules they name.

"Not coded" labels (NaN targets: BP4D's 9, or an AU a shard's dataset does not code) are masked
when the loss is built with ``masked=True``: each group's loss is then the mean over its coded
entries only (a group with none in the batch adds 0). Unmasked (DISFA: every label is coded)
the loss is computed exactly as before, so DISFA runs do not change by a bit.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from ..nets.tranet import region_groups


def branch_bce_loss(logits: torch.Tensor, targets: torch.Tensor, branch_groups: Sequence[Sequence[int]],
                    au_weights: torch.Tensor | Sequence[float] | None = None,
                    masked: bool = False) -> torch.Tensor:
    """Sum over groups of the mean BCE-with-logits of that group's AU columns.

    ``logits``/``targets``: [B, K] (targets 0/1, any float dtype). ``branch_groups``: column
    indices per group, together covering every column once. ``au_weights`` ([K], optional)
    multiplies each AU's per-entry loss before the group mean (e.g. the folds' ``au_weights``,
    which sum to K so an all-ones vector is the unweighted loss). ``masked``: NaN targets are
    "not coded" and left out of each group's mean (no host synchronisation either way).
    """
    if logits.shape != targets.shape or logits.dim() != 2:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must both be [B, K]")
    k = logits.shape[1]
    covered = sorted(i for group in branch_groups for i in group)
    if covered != list(range(k)):
        raise ValueError(f"branch_groups {list(map(list, branch_groups))} must cover columns 0..{k - 1} once each")
    targets = targets.to(logits.dtype)
    coded = None
    if masked:
        coded = ~torch.isnan(targets)
        targets = torch.where(coded, targets, torch.zeros_like(targets))
    per_entry = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if au_weights is not None:
        weights = torch.as_tensor(au_weights, dtype=logits.dtype, device=logits.device)
        if weights.shape != (k,):
            raise ValueError(f"au_weights has shape {tuple(weights.shape)}, expected ({k},)")
        per_entry = per_entry * weights
    if coded is None:
        return sum(_columns(per_entry, group).mean() for group in branch_groups)
    return _masked_group_sum(per_entry, coded.to(per_entry.dtype), branch_groups)


def _masked_group_sum(per_entry: torch.Tensor, coded: torch.Tensor,
                      branch_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum over groups of the mean of the coded entries (``coded`` 1/0) of each group."""
    per_entry = per_entry * coded  # an uncoded entry's BCE against the placeholder 0 drops out
    return sum(_columns(per_entry, group).sum() / _columns(coded, group).sum().clamp_min(1.0)
               for group in branch_groups)


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
#: FACS codes intensity 0 (absent) to 5 (E); the ordinal loss has a threshold between neighbours.
INTENSITY_LEVELS = 6
#: Width, in intensity units, of the ordinal loss's logistic at each threshold. At 0.5 the loss's
#: minimum over the prediction lies within 0.07 of every inner code 1-4 (0.94, 1.99, 3.01, 4.06);
#: at 1.0 the five one-sided thresholds pull it 0.4 units off (0.58 for a coded 1, 4.43 for a 4),
#: at 2.0 outside the code's half-unit band (tests/test_ordinal_loss.py).
ORDINAL_TEMPERATURE = 0.5
INTENSITY_LOSSES = ("mse", "ordinal")


def _check_intensity_columns(predictions: torch.Tensor, targets: torch.Tensor,
                             branch_groups: Sequence[Sequence[int]]) -> None:
    if predictions.shape != targets.shape or predictions.dim() != 2:
        raise ValueError(f"predictions {tuple(predictions.shape)} and targets "
                         f"{tuple(targets.shape)} must both be [B, R]")
    covered = sorted(i for group in branch_groups for i in group)
    if covered != list(range(predictions.shape[1])):
        raise ValueError(f"intensity groups {list(map(list, branch_groups))} must cover columns "
                         f"0..{predictions.shape[1] - 1} once each")


def branch_intensity_loss(predictions: torch.Tensor, targets: torch.Tensor,
                          branch_groups: Sequence[Sequence[int]]) -> torch.Tensor:
    """Sum over branches of the mean squared error of that branch's intensity columns, on the
    0-1 scale (intensity / 5). ``predictions``/``targets``: [B, R] raw 0-5 intensities."""
    _check_intensity_columns(predictions, targets, branch_groups)
    error = (predictions - targets.to(predictions.dtype)) / INTENSITY_SCALE
    per_entry = error * error
    return sum(_columns(per_entry, group).mean() for group in branch_groups)


def branch_ordinal_loss(predictions: torch.Tensor, targets: torch.Tensor,
                        branch_groups: Sequence[Sequence[int]],
                        temperature: float = ORDINAL_TEMPERATURE) -> torch.Tensor:
    """The all-threshold logistic ordinal loss (Rennie & Srebro 2005) of a scalar intensity.

    For the cutpoints c_k = 0.5, 1.5, ..., 4.5 between the FACS codes, an entry's loss is the
    mean over k of BCE-with-logits((s - c_k) / ``temperature``, [y > c_k]): every threshold the
    prediction s falls on the wrong side of costs about its distance / temperature, one on the
    right side little. So s stays the intensity (s > c_k is the model saying y > c_k) and
    clipped to 0-5 it is what ``model.predict`` writes, as under the MSE. Summed over branches
    of the branch's mean over frames and AU columns, like :func:`branch_intensity_loss`;
    the cutpoints are made on the device, so no value crosses to the host.
    """
    _check_intensity_columns(predictions, targets, branch_groups)
    cutpoints = torch.arange(INTENSITY_LEVELS - 1, dtype=predictions.dtype,
                             device=predictions.device) + 0.5
    margins = (predictions.unsqueeze(-1) - cutpoints) / temperature
    above = (targets.to(predictions.dtype).unsqueeze(-1) > cutpoints).to(predictions.dtype)
    per_entry = F.binary_cross_entropy_with_logits(margins, above, reduction="none").mean(dim=-1)
    return sum(_columns(per_entry, group).mean() for group in branch_groups)


TASKS = ("occurrence", "intensity", "both")


def task_loss_for(task: str, au_ids: Sequence[int], intensity_aus: Sequence[int] = (),
                  au_weights: torch.Tensor | None = None, intensity_weight: float = 1.0,
                  intensity_loss: str = "mse", masked: bool = False) -> "TaskLoss":
    """The :class:`TaskLoss` of every variant: both terms summed over the region groups of their
    AUs (occurrence ``au_ids``, intensity ``intensity_aus``), not over the model's heads.

    A single-branch variant's one intensity head would otherwise be one mean over 12 AUs, about
    a third of the region-summed loss of the three-branch variants (as the BCE was before), and
    an intensity ablation would compare learning rates instead of modules.
    """
    return TaskLoss(task, region_loss_groups(au_ids),
                    region_loss_groups(intensity_aus) if intensity_aus else (), au_weights,
                    intensity_weight, intensity_loss, masked)


class TaskLoss:
    """The training loss of ``--task`` (and ``--intensity-loss``).

    * occurrence: :func:`branch_bce_loss` (the paper);
    * intensity: the intensity loss alone: :func:`branch_intensity_loss` (``mse``, MSE per
      region group, summed) or :func:`branch_ordinal_loss` (``ordinal``); build it with
      :func:`task_loss_for` so the groups are the AUs' regions whatever the model's heads;
    * both: BCE + ``intensity_weight`` x the intensity loss. Each term is a sum over the same
      branches of a per-branch mean (BCE of a 0/1 label; squared error of intensity / 5, or the
      mean BCE of the five thresholds). The MSE of a head that predicts the mean is about the
      intensities' variance / 25, a few hundredths on DISFA-like data, against a BCE of
      0.3-0.7; the default weight 4 (``TrainConfig``) lifts it to the BCE's scale, and on the
      tiny pixel-visible fixture it learned intensity better than 1. The ordinal loss is a
      mean of threshold BCEs, on the BCE's scale already: its gradient in s is the sum over the
      thresholds of (sigmoid - label) / 5 / temperature per entry: about 0.8 for an error of
      2 units (4 x the MSE's gives 0.64) and at most 2, so weight 1 gives it about the pull
      of the MSE at 4; docs/disfa.md has the weights measured for it.

    With ``intensity`` the occurrence head is not trained; its logits still enter the loss with
    weight 0 so every parameter takes part in the graph (DDP requires it).
    """

    def __init__(self, task: str, branch_groups: Sequence[Sequence[int]],
                 intensity_groups: Sequence[Sequence[int]] = (),
                 au_weights: torch.Tensor | None = None, intensity_weight: float = 1.0,
                 intensity_loss: str = "mse", masked: bool = False) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if intensity_loss not in INTENSITY_LOSSES:
            raise ValueError(f"intensity_loss must be one of {INTENSITY_LOSSES}, "
                             f"got {intensity_loss!r}")
        self.task = task
        self.branch_groups = [list(g) for g in branch_groups]
        self.intensity_groups = [list(g) for g in intensity_groups]
        self.au_weights = au_weights
        self.intensity_weight = float(intensity_weight)
        self.intensity_loss = intensity_loss
        self.masked = bool(masked)  # NaN occurrence targets are "not coded" (branch_bce_loss)

    @property
    def uses_intensity(self) -> bool:
        return self.task != "occurrence"

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor,
                 intensity: torch.Tensor | None = None,
                 intensity_targets: torch.Tensor | None = None) -> torch.Tensor:
        if not self.uses_intensity:
            return branch_bce_loss(logits, targets, self.branch_groups, self.au_weights,
                                   self.masked)
        if intensity is None or intensity_targets is None:
            raise ValueError(f"task {self.task!r} needs intensity predictions and targets")
        regress = branch_ordinal_loss if self.intensity_loss == "ordinal" else branch_intensity_loss
        regression = regress(intensity, intensity_targets, self.intensity_groups)
        if self.task == "intensity":
            return regression + 0.0 * logits.sum()
        return (branch_bce_loss(logits, targets, self.branch_groups, self.au_weights,
                                self.masked)
                + self.intensity_weight * regression)

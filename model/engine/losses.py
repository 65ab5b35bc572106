"""Training loss of TRA-Net: multi-label binary cross-entropy per branch, summed over branches.

Paper: "Multilabel binary cross-entropy was used as the loss function, and losses from the upper
branch, middle branch, and lower branch were summed as the final loss". Each branch's loss is the
mean over its (frame, AU) entries, so a branch with three AUs does not outweigh one with two.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def branch_bce_loss(logits: torch.Tensor, targets: torch.Tensor, branch_groups: Sequence[Sequence[int]],
                    au_weights: torch.Tensor | Sequence[float] | None = None) -> torch.Tensor:
    """Sum over branches of the mean BCE-with-logits of that branch's AU columns.

    ``logits``/``targets``: [B, K] (targets 0/1, any float dtype). ``branch_groups``: column
    indices per branch, together covering every column once. ``au_weights`` ([K], optional)
    multiplies each AU's per-entry loss before the branch mean (e.g. the folds' ``au_weights``,
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

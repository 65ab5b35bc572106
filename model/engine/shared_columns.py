"""A model seen through some of its output columns: a cross-dataset evaluation scores only the
AUs the test dataset codes (``model.evaluation.cross_dataset``), so the evaluation loop gets
logits of exactly those, in that order, and no intensity head (the test shards' intensity
columns are another dataset's)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class SharedColumns(nn.Module):
    """``model``'s logits at ``columns`` (indices into its AU list); weights untouched."""

    has_intensity = False

    def __init__(self, model: nn.Module, columns: Sequence[int]) -> None:
        super().__init__()
        self.inner = model  # not "module": engine.forward.unwrap would strip this wrapper
        self.register_buffer("columns", torch.as_tensor(list(columns), dtype=torch.long),
                             persistent=False)
        self.input_transform = model.input_transform

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)[:, self.columns]

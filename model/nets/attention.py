"""Soft attention blocks: squeeze-excitation (channel gate) and CBAM (channel then spatial gate).

Definitions (Hu et al. 2018; Woo et al., ECCV 2018):

* SE: ``s = sigmoid(W2 relu(W1 avgpool(x)))``, ``out = s * x`` (``+ x`` with ``residual=True``,
  the paper's Eq. 3 form).
* CBAM channel gate: average- and max-pooled descriptors go through ONE shared MLP
  (C -> C/r -> C, biased, ReLU between), the two results are summed, ``sigmoid``, multiply.
* CBAM spatial gate: per-pixel max and mean over channels (concatenated in that order), a 7x7 conv
  (padding 3, no bias) + BatchNorm to one map, ``sigmoid``, multiply.
* CBAM applies the channel gate and then the spatial gate; either can be switched off (the
  paper's "CBAM w/o AT" / "w/o ST" ablations). TRA-Net uses CBAM *without* a residual connection;
  ``residual=True`` returns ``x + cbam(x)`` (the "with residual structure" ablation).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _hidden(channels: int, reduction: int) -> int:
    return max(channels // reduction, 1)


class SqueezeExcite(nn.Module):
    """Channel gate from global average pooling through a C -> C/r -> C bottleneck."""

    def __init__(self, channels: int, reduction: int = 16, residual: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, _hidden(channels, reduction))
        self.fc2 = nn.Linear(_hidden(channels, reduction), channels)
        self.residual = residual

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel weights in (0, 1), shape [B, C, 1, 1]."""
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return s[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.gate(x)
        return out + x if self.residual else out


class ChannelGate(nn.Module):
    """CBAM channel attention: shared MLP over average- and max-pooled descriptors, summed."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(channels, _hidden(channels, reduction)),
            nn.ReLU(inplace=True),
            nn.Linear(_hidden(channels, reduction), channels),
        )

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        # adaptive_max_pool2d, not amax: same values, and its backward is several times cheaper.
        logits = self.mlp(x.mean(dim=(2, 3))) + self.mlp(F.adaptive_max_pool2d(x, 1).flatten(1))
        return torch.sigmoid(logits)[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SpatialGate(nn.Module):
    """CBAM spatial attention: [max_c, mean_c] -> 7x7 conv (no bias) -> BN -> sigmoid."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(1)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.max(dim=1, keepdim=True).values, x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.bn(self.conv(pooled)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class CBAM(nn.Module):
    """Channel gate then spatial gate; each switchable; optional residual connection around both."""

    def __init__(self, channels: int, reduction: int = 16, spatial_kernel: int = 7,
                 channel: bool = True, spatial: bool = True, residual: bool = False) -> None:
        super().__init__()
        if not (channel or spatial):
            raise ValueError("CBAM with both gates off is the identity; build no CBAM instead")
        # Absent gates are None (not identity modules) so state_dicts show what the variant has.
        self.channel_gate = ChannelGate(channels, reduction) if channel else None
        self.spatial_gate = SpatialGate(spatial_kernel) if spatial else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.channel_gate is not None:
            out = self.channel_gate(out)
        if self.spatial_gate is not None:
            out = self.spatial_gate(out)
        return out + x if self.residual else out

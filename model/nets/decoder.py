"""TRA-Net decoder: brings the backbone's last map back up through the shapes of layer3 and layer2.

The paper: "up-sampled by a decoder having the same shape with the corresponding part in the last
three blocks, where the skip connection is used ... The SE module is also added to the decoder",
and (Fig. 1) "it has only one convolutional layer at each corresponding block".

Each stage here is: one 3x3 conv + BN + ReLU at the *coarse* resolution that maps the channels
to the skip's channels, bilinear upsampling to the skip's size, an additive skip connection from
the encoder, then an SE gate. The gate is the paper's "SE module with residual structure" (Eq. 3,
``O = (S_e * U) + U``) by default; ``se="plain"`` gives the plain ``O = S_e * U`` of Hu et al. At 224 input: layer4 2048x7x7 -> 1024x14x14 (+ layer3) ->
512x28x28 (+ layer2), i.e. exactly the shapes of the encoder blocks it mirrors. Running the conv
before the upsampling costs a quarter of the same conv after it, which keeps the whole TRA-Net
training step within twice the backbone's (see README_model.md).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import SqueezeExcite

#: The decoder's SE gates: "residual" = the paper's Eq. 3 (O = S_e * U + U), "plain" = S_e * U.
SE_KINDS: tuple[str, ...] = ("residual", "plain")


class DecoderStage(nn.Module):
    """conv k x k (in -> skip channels) -> BN -> ReLU -> upsample to the skip's size -> + skip -> SE.

    ``se``: "residual" (the paper's Eq. 3) or "plain".
    """

    def __init__(self, in_channels: int, skip_channels: int, se_reduction: int = 16,
                 kernel_size: int = 1, se: str = "residual") -> None:
        super().__init__()
        if se not in SE_KINDS:
            raise ValueError(f"decoder SE must be one of {SE_KINDS}, got {se!r}")
        self.conv = nn.Conv2d(in_channels, skip_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(skip_channels)
        self.se = SqueezeExcite(skip_channels, se_reduction, residual=se == "residual")

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)), inplace=True)
        # Size taken from the skip (not a fixed x2) so odd maps (e.g. 4 -> 7 at 112 input) line up.
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.se(x + skip)


class Decoder(nn.Module):
    """Two stages: last map -> layer3's shape -> layer2's shape (7 -> 14 -> 28 at 224 input).

    ``stage_channels`` ends with the channels of the backbone's stride-8, 16 and 32 maps (SENet's
    layer2..layer4, or a timm backbone's); earlier entries are ignored.
    """

    def __init__(self, stage_channels: Sequence[int], se_reduction: int = 16, kernel_size: int = 1,
                 se: str = "residual") -> None:
        super().__init__()
        c2, c3, c4 = stage_channels[-3:]
        self.up1 = DecoderStage(c4, c3, se_reduction, kernel_size, se)
        self.up2 = DecoderStage(c3, c2, se_reduction, kernel_size, se)
        self.out_channels = c2

    def forward(self, layer2: torch.Tensor, layer3: torch.Tensor, layer4: torch.Tensor) -> torch.Tensor:
        return self.up2(self.up1(layer4, layer3), layer2)

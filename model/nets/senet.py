"""SENet-50 laid out exactly like the VGGFace2-pytorch release, (the network only).

The module names, parameter shapes and forward pass follow cydonia999/VGGFace2-pytorch
(``models/senet.py``) so that ``senet50_ft_weight.pkl`` / ``senet50_scratch_weight.pkl`` load key for
key: a 7x7 stem, ``MaxPool2d(3, 2, 0, ceil_mode=True)``, four stages of SE bottlenecks with the
stride on the *first 1x1* conv, the squeeze-excitation as ``conv4``/``conv5`` (1x1 convs with bias),
and an ``AvgPool2d(7, stride=1)`` + ``fc`` classifier over 8631 identities.

The weights expect BGR 0-255 input minus the VGGFace2 mean; that conversion lives only in
``model.nets.transforms.to_model_input``. Weight files are read by ``model.weights`` (this
package reads no files).
"""
from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)

VGGFACE2_NUM_CLASSES = 8631
SENET50_LAYERS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """SE bottleneck of the release: 1x1 (strided) -> 3x3 -> 1x1, SE gate, then the residual add."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 se_reduction: int = 16) -> None:
        super().__init__()
        out = planes * self.expansion
        # The release puts the stride on the first 1x1 conv (Caffe heritage), not on the 3x3.
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        # Squeeze-excitation written as two biased 1x1 convs, named as in the release.
        self.conv4 = nn.Conv2d(out, out // se_reduction, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(out // se_reduction, out, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        gate = out.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.conv5(self.relu(self.conv4(gate))))
        return self.relu(out * gate + residual)


class SENet(nn.Module):
    """SE-ResNet in the release's layout; ``base_width``/``layers`` shrink it for the small preset.

    With ``include_top`` the forward pass is the release's classifier (7x7 average pool, stride 1,
    flatten, ``fc``), which assumes 224x224 input. Without it the module has no ``fc`` and
    :meth:`forward` returns the last feature map; :meth:`stages` returns every stage's map.
    """

    def __init__(self, layers: Sequence[int] = SENET50_LAYERS, num_classes: int = VGGFACE2_NUM_CLASSES,
                 include_top: bool = True, base_width: int = 64, se_reduction: int = 16) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"SENet needs four stages, got layers={list(layers)}")
        self.include_top = include_top
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self.layer1 = self._make_layer(base_width, layers[0], 1, se_reduction)
        self.layer2 = self._make_layer(base_width * 2, layers[1], 2, se_reduction)
        self.layer3 = self._make_layer(base_width * 4, layers[2], 2, se_reduction)
        self.layer4 = self._make_layer(base_width * 8, layers[3], 2, se_reduction)
        #: Channels of the outputs of layer1..layer4.
        self.stage_channels = tuple(base_width * m * Bottleneck.expansion for m in (1, 2, 4, 8))
        if include_top:
            self.avgpool = nn.AvgPool2d(7, stride=1)
            self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int, se_reduction: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        blocks_list = [Bottleneck(self.inplanes, planes, stride, downsample, se_reduction)]
        self.inplanes = planes * Bottleneck.expansion
        blocks_list += [Bottleneck(self.inplanes, planes, 1, None, se_reduction) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_list)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32 of the input)."""
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x1, x2, x3, self.layer4(x3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)[-1]
        if not self.include_top:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def senet50(num_classes: int = VGGFACE2_NUM_CLASSES, include_top: bool = True) -> SENet:
    """SENet-50 with the VGGFace2 release's exact state_dict layout."""
    return SENet(SENET50_LAYERS, num_classes=num_classes, include_top=include_top)


# --------------------------------------------------------------------------------------------------
# Weight files

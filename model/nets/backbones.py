"""Backbones for TRA-Net: our VGGFace2-layout SENet-50, or any timm model with stride-8/16/32 maps.

A backbone here is a module with

* ``feature_channels``: channels of its maps at strides 8, 16 and 32 (SENet-50: layer2..layer4,
  512/1024/2048), which the decoder mirrors, so the hard masks, branches and heads are the same
  TRA-Net on every backbone;
* ``feature_maps(x)``: those three maps;
* ``leading_blocks(n)``: the modules of its first ``n`` blocks, for freezing. Block 1 is the stem
  (everything before the stride-4 stage), block 2 the stride-4 stage (SENet's layer1), block 3 the
  stride-8 stage, block 4 the stride-16 stage; the paper freezes blocks 1-2 of SENet-50;
* ``default_transform``: how to feed it when the user does not say (``model.nets.transforms``);
  :func:`default_frozen_blocks` says what to freeze when the user does not say.

Names: ``senet50`` (ours, the VGGFace2 release's exact state_dict layout) or ``timm:<model name>``
(``timm:resnet50``, ``timm:convnext_tiny``, ``timm:resnet50.tv_in1k``...), built with
``features_only=True`` and ``pretrained=False``: weights are loaded by ``model.weights``, never here.
timm is optional and imported only when a timm backbone is built.
"""
from __future__ import annotations

import importlib
from typing import Any, Sequence

import torch
from torch import nn

from .senet import SENet
from .transforms import VGGFACE2, InputTransform, transform_from_mean_std

SENET50 = "senet50"
TIMM_PREFIX = "timm:"
#: The strides whose maps the decoder needs (SENet-50's layer2, layer3, layer4).
FEATURE_STRIDES: tuple[int, int, int] = (8, 16, 32)
#: Frozen blocks of a timm backbone by default: stem + stride-4 stage, the paper's "first two
#: blocks" of a ResNet-shaped net (and their equivalent in ConvNeXt/EfficientNet).
TIMM_DEFAULT_FROZEN_BLOCKS = 2
MAX_FROZEN_BLOCKS = 4
TIMM_INSTALL_HINT = 'pip install -e ".[timm]" (or: pip install timm)'


class BackboneError(ValueError):
    """A backbone name that cannot be built (unknown, timm missing, no stride-8/16/32 maps)."""


def parse_backbone(name: str) -> tuple[str, str | None]:
    """``"senet50"`` -> ("senet50", None); ``"timm:resnet50"`` -> ("timm", "resnet50")."""
    if name == SENET50:
        return SENET50, None
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return "timm", name[len(TIMM_PREFIX):]
    raise BackboneError(f"unknown backbone {name!r}: use '{SENET50}' or 'timm:<model name>' "
                        "(e.g. timm:resnet50, timm:convnext_tiny)")


def import_timm() -> Any:
    """The timm module, or a :class:`BackboneError` saying how to install it."""
    try:
        return importlib.import_module("timm")
    except ImportError as err:
        raise BackboneError(f"timm backbones need the timm package, which is not importable here "
                            f"({err}); install it with {TIMM_INSTALL_HINT}") from err
    except Exception as err:  # typically torchvision built for another torch than this one
        raise BackboneError(f"timm is installed but does not import ({type(err).__name__}: {err}); "
                            f"timm imports torchvision, which must be the build made for this torch "
                            f"{torch.__version__} (for a CPU-only torch, the CPU torchvision from "
                            "PyTorch's own package index)") from err


class SENetBackbone(SENet):
    """Our SENet (VGGFace2 layout, same state_dict keys) seen through the backbone interface."""

    default_transform: InputTransform = VGGFACE2

    def __init__(self, layers: Sequence[int], base_width: int, se_reduction: int) -> None:
        super().__init__(layers, include_top=False, base_width=base_width, se_reduction=se_reduction)
        self.feature_channels: tuple[int, ...] = tuple(self.stage_channels[1:])

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.stages(x)[1:]

    def leading_blocks(self, n: int) -> list[nn.Module]:
        blocks = [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3]]
        return [m for block in blocks[:n] for m in block]


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model reduced to its last maps at strides 8, 16 and 32."""

    def __init__(self, model_name: str) -> None:
        super().__init__()
        timm = import_timm()
        try:
            body = timm.create_model(model_name, pretrained=False, features_only=True)
        except Exception as err:  # timm raises RuntimeError/KeyError/TypeError/... by model
            raise BackboneError(f"timm cannot build {model_name!r} with features_only=True "
                                f"({type(err).__name__}: {err})") from err
        info = body.feature_info
        self.reductions = [int(r) for r in info.reduction()]
        self.module_names = list(info.module_name())
        last = {r: i for i, r in enumerate(self.reductions)}  # the last map of each stride
        absent = [s for s in FEATURE_STRIDES if s not in last]
        if absent:
            raise BackboneError(f"timm:{model_name} has feature maps at strides {self.reductions}; "
                                f"TRA-Net needs maps at strides {list(FEATURE_STRIDES)} (missing "
                                f"{absent})")
        self.model_name = model_name
        self.body = body
        self.feature_index = [last[s] for s in FEATURE_STRIDES]
        channels = [int(c) for c in info.channels()]
        self.feature_channels = tuple(channels[i] for i in self.feature_index)
        cfg = dict(getattr(body, "pretrained_cfg", None) or {})
        self.pretrained_cfg = cfg
        self.default_transform = transform_from_mean_std(cfg.get("mean", (0.485, 0.456, 0.406)),
                                                         cfg.get("std", (0.229, 0.224, 0.225)))
        # Most wrappers return NCHW maps; those of NHWC models (Swin...) say so in output_fmt.
        fmt = getattr(body, "output_fmt", "NCHW")
        self.channels_first = getattr(fmt, "value", fmt) != "NHWC"

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = self.body(x)
        picked = [maps[i] for i in self.feature_index]
        return picked if self.channels_first else [m.permute(0, 3, 1, 2) for m in picked]

    def _span(self, index: int) -> tuple[int, int]:
        """First and last position, in ``named_modules`` order, of feature ``index``'s module."""
        target = self.module_names[index]
        # features_only wrappers rename "stages.0" to "stages_0" when they flatten a Sequential.
        candidates = {target, target.replace(".", "_", 1), target.replace(".", "_")}
        names = [n for n, _ in self.body.named_modules()]
        hits = [i for i, n in enumerate(names)
                if any(n == c or n.startswith(c + ".") for c in candidates)]
        if not hits:
            raise BackboneError(f"timm:{self.model_name}: cannot find the module {target!r} of its "
                                "feature map, so its blocks cannot be frozen; pass --frozen-blocks 0")
        return hits[0], hits[-1]

    def _block_end(self, n: int) -> int:
        """Position (``named_modules`` order) of the last module of block ``n``."""
        if n == 1:
            early = [i for i, r in enumerate(self.reductions) if r <= 2]
            if early:
                return self._span(early[-1])[1]
            fours = [i for i, r in enumerate(self.reductions) if r == 4]
            if not fours:
                raise BackboneError(f"timm:{self.model_name} has no stride-4 map to delimit its "
                                    "stem; pass --frozen-blocks 0")
            return self._span(fours[0])[0] - 1
        stride = 2 ** n  # block 2 ends with the stride-4 stage, 3 with stride 8, 4 with stride 16
        ends = [i for i, r in enumerate(self.reductions) if r == stride]
        if not ends:
            raise BackboneError(f"timm:{self.model_name} has no stride-{stride} map (strides "
                                f"{self.reductions}); freeze fewer blocks")
        return self._span(ends[-1])[1]

    def leading_blocks(self, n: int) -> list[nn.Module]:
        """The outermost modules that run before the end of block ``n`` and contain nothing later."""
        if n == 0:
            return []
        named = list(self.body.named_modules())
        end = self._block_end(n)
        later = [name for name, _ in named[end + 1:]]
        inside = [(name, m) for name, m in named[1:end + 1]
                  if not any(x.startswith(name + ".") for x in later)]
        chosen = {name for name, _ in inside}
        return [m for name, m in inside
                if not any(name.startswith(parent + ".") for parent in chosen if parent != name)]


def default_frozen_blocks(name: str, preset_frozen_blocks: int) -> int:
    """Blocks frozen unless the user says: senet50 the preset's (full 2 = the paper's, small 0:
    it has no pretrained weights), a timm backbone :data:`TIMM_DEFAULT_FROZEN_BLOCKS`."""
    return preset_frozen_blocks if parse_backbone(name)[0] == SENET50 else TIMM_DEFAULT_FROZEN_BLOCKS


def build_backbone(name: str, layers: Sequence[int], base_width: int, se_reduction: int) -> nn.Module:
    """The backbone ``name`` names; ``layers``/``base_width`` (the preset's) apply to senet50 only."""
    kind, model_name = parse_backbone(name)
    if kind == SENET50:
        return SENetBackbone(layers, base_width, se_reduction)
    return TimmBackbone(model_name)

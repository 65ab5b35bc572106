"""TRA-Net (three-regions-based attention network) and its ablation variants, by configuration.

Structure (paper Sec. 3, Fig. 1):

* Backbone SENet-50 (``model.nets.senet``, VGGFace2 layout), or any timm model with stride-8/16/32
  maps (``TRANetConfig.backbone``, see ``model.nets.backbones``). Blocks 1-2 (stem + ``layer1``,
  the stride-4 stage) are frozen: ``requires_grad=False`` and their BatchNorm stays in eval mode
  even under ``model.train()`` (``TRANetConfig.frozen_blocks``; the small preset, which has no
  pretrained weights, freezes none). The stride-8/16/32 maps (SENet's ``layer2..layer4``) are the
  encoder (28 -> 14 -> 7 at 224 input).
* Decoder (``model.decoder``): 7 -> 14 -> 28 with additive skips from layer3 and layer2, one conv
  and one SE per stage; the SE has the paper's residual form (Eq. 3, ``decoder_se="residual"``). The decoded map has layer2's shape (512 x 28 x 28 at 224).
* Hard attention: three exact 0/1 row masks on the decoded map built from the face centre
  (the aligned nose midpoint; see :func:`hard_masks` for the rounding rule).
* One branch per region: [CBAM -> two 3x3 convs with a residual connection -> 2x2 max pool] x 2,
  CBAM -> two 3x3 convs -> global average pool, then two FC layers -> that region's AUs.
  Upper: AU1, AU2, AU4 (+AU5, BP4D's AU7); middle: AU6, AU9 (+AU10); lower: AU12, AU25, AU26
  (+AU15, AU17, AU20, BP4D's AU14, AU23, AU24): :data:`REGION_OF_AU`.
  Off the CPU the branches run as one set of grouped ops (``model.nets.grouped_branches``).
  A branch whose region has none of ``cfg.au_ids`` is not built.
* Output: logits ``[B, K]`` in the order of ``cfg.au_ids``; ``model.branch_groups`` gives the
  indices each branch predicts. The training loss (``model.engine.losses``) sums the mean BCE of the
  three region groups for every variant, whichever head produced the logits.
  indices each branch predicts (the loss sums per-branch BCE over these groups).
* Optional intensity head (``cfg.intensity_aus``, e.g. DISFA's 12 AUs; empty = the paper's
  detector only): one more linear layer per branch beside the occurrence FC, on the same hidden
  FC features, regressing the 0-5 FACS intensity of that region's AUs (same grouping, so AU5 joins
  the upper branch and AU15/17/20 the lower one). ``forward(x, with_intensity=True)`` returns
  ``(logits [B, K], intensity [B, R])``, R in the order of ``cfg.intensity_aus``. A model without
  the head has exactly the parameters and outputs it always had.

Variants (paper Table 2) are flags on one class, see :data:`VARIANTS`. The decoder is kept in every
variant that has branches, so that each ablation differs from TRA-Net in exactly the module it
names; only the plain "senet50" baseline (backbone + global pool + one FC) has no decoder. Without
the hard mask the head is ONE branch (same structure) predicting all K AUs from the unmasked map.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CBAM
from .backbones import MAX_FROZEN_BLOCKS, build_backbone, default_frozen_blocks, parse_backbone
from .decoder import SE_KINDS, Decoder
from .grouped_branches import RegionBranches, stack_regions
from .regions import (DEFAULT_FACE_CENTER, EVAL_AUS, KNOWN_AUS, REGION_OF_AU, REGIONS,  # noqa: F401
                      region_groups)
from .transforms import InputTransform, resolve_transform



@dataclass(frozen=True)
class VariantSpec:
    """Which modules a variant has. ``head`` is "fc" (global pool + linear) or "branches"."""

    head: str = "branches"
    decoder: bool = True
    hard_mask: bool = True
    cbam: bool = True
    cbam_channel: bool = True
    cbam_spatial: bool = True
    cbam_residual: bool = False


VARIANTS: dict[str, VariantSpec] = {
    "senet50": VariantSpec(head="fc", decoder=False, hard_mask=False, cbam=False),
    "senet50_cbam": VariantSpec(hard_mask=False),
    "senet50_hm": VariantSpec(cbam=False),
    "hm_cbam_no_channel": VariantSpec(cbam_channel=False),
    "hm_cbam_no_spatial": VariantSpec(cbam_spatial=False),
    "tranet_residual": VariantSpec(cbam_residual=True),
    "tranet": VariantSpec(),
}


@dataclass(frozen=True)
class PresetSpec:
    """Backbone depth/width, branch width and default frozen blocks of a model size."""

    layers: tuple[int, int, int, int]
    base_width: int
    branch_width: int
    frozen_blocks: int


#: "full" is SENet-50 (loads the VGGFace2 weights). "small" is the same architecture with one
#: bottleneck per stage and a quarter of the channels (backbone, decoder and branches), for CPU
#: demos and tests. No pretrained weights exist for it, so by default it freezes nothing: the paper
#: freezes blocks 1-2 to keep pretrained features, and freezing random ones would only cripple it.
PRESETS: dict[str, PresetSpec] = {
    "full": PresetSpec(layers=(3, 4, 6, 3), base_width=64, branch_width=64, frozen_blocks=2),
    "small": PresetSpec(layers=(1, 1, 1, 1), base_width=16, branch_width=16, frozen_blocks=0),
}


#: What a ``model_config`` recorded before an option existed meant (checkpoints stay loadable and
#: rebuild the network they were trained as).
LEGACY_MODEL_CONFIG: dict[str, object] = {"decoder_se": "plain"}


def config_from_record(record: dict) -> "TRANetConfig":
    """A TRANetConfig from a recorded ``asdict`` (older records get :data:`LEGACY_MODEL_CONFIG`)."""
    return TRANetConfig(**{**LEGACY_MODEL_CONFIG, **record})


def _default_center() -> tuple[float, float]:
    # The alignment puts the nose midpoint here (fractions of the aligned frame).
    return (float(DEFAULT_FACE_CENTER[0]), float(DEFAULT_FACE_CENTER[1]))


@dataclass
class TRANetConfig:
    """Everything needed to rebuild a model; ``dataclasses.asdict`` of it is JSON-serialisable.

    ``center`` is the face centre (x, y) as fractions of the input image; use the shards'
    ``nose_target / image_size``. ``branch_width``/``fc_hidden`` of ``None`` take the preset's
    branch width. ``frozen_blocks`` (0; 1 = stem; 2 = stem + the stride-4 stage (SENet's layer1),
    the paper's "blocks 1 and 2"; 3 and 4 add the stride-8 and stride-16 stages) of ``None`` takes
    the backbone's default (senet50: the preset's, full 2, small 0; timm: 2). ``image_size``
    records the training input size; the network is convolutional up to its global pools and
    accepts other sizes. ``backbone``: ``senet50`` or ``timm:<name>`` (the preset then sets only
    the branch width). ``input_transform`` (a ``model.nets.transforms`` name or recorded dict) of
    ``None`` is the backbone's default (VGGFace2 for senet50, the timm model's mean/std).
    """

    variant: str = "tranet"
    preset: str = "full"
    backbone: str = "senet50"
    input_transform: dict | str | None = None
    au_ids: tuple[int, ...] = field(default_factory=lambda: tuple(EVAL_AUS))
    image_size: int = 224
    center: tuple[float, float] = field(default_factory=_default_center)
    branch_width: int | None = None
    fc_hidden: int | None = None
    reduction: int = 16
    decoder_kernel: int = 1
    #: The decoder's SE gates: "residual" (the paper's Eq. 3, O = S_e * U + U) or "plain" (S_e * U).
    decoder_se: str = "residual"
    frozen_blocks: int | None = None
    #: Run in channels_last layout (oneDNN on CPU and tensor cores on GPU are faster in NHWC;
    #: 1.3-1.4x per CPU training step here). Layout only: weights and outputs are the same.
    channels_last: bool = True
    #: AUs with an intensity regression output (empty: occurrence only, the paper's model).
    intensity_aus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so configs compare equal.
        self.au_ids = tuple(int(a) for a in self.au_ids)
        self.center = (float(self.center[0]), float(self.center[1]))
        self.intensity_aus = tuple(int(a) for a in self.intensity_aus)
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {sorted(VARIANTS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        if not self.au_ids:
            raise ValueError("au_ids is empty")
        unknown = [a for a in self.au_ids if a not in REGION_OF_AU]
        if unknown:
            raise ValueError(f"AUs {unknown} have no region (known: {list(KNOWN_AUS)})")
        if len(set(self.au_ids)) != len(self.au_ids):
            raise ValueError(f"au_ids has duplicates: {list(self.au_ids)}")
        self._check_intensity_aus()
        if self.decoder_se not in SE_KINDS:
            raise ValueError(f"decoder_se must be one of {list(SE_KINDS)}, got {self.decoder_se!r}")
        if self.frozen_blocks is not None and not 0 <= self.frozen_blocks <= MAX_FROZEN_BLOCKS:
            raise ValueError(f"frozen_blocks must be 0 to {MAX_FROZEN_BLOCKS}, got {self.frozen_blocks}")
        parse_backbone(self.backbone)
        if self.input_transform is not None:  # a name or a recorded dict -> a checked dict
            self.input_transform = resolve_transform(self.input_transform).as_dict()
        if not all(0.0 <= c <= 1.0 for c in self.center):
            raise ValueError(f"center must be fractions of the image in [0, 1], got {self.center}")

    def _check_intensity_aus(self) -> None:
        unknown = [a for a in self.intensity_aus if a not in REGION_OF_AU]
        if unknown:
            raise ValueError(f"intensity AUs {unknown} have no region (known: {list(KNOWN_AUS)})")
        if len(set(self.intensity_aus)) != len(self.intensity_aus):
            raise ValueError(f"intensity_aus has duplicates: {list(self.intensity_aus)}")
        if self.spec.head == "branches" and self.spec.hard_mask:
            regions = {REGION_OF_AU[a] for a in self.au_ids}
            orphans = [a for a in self.intensity_aus if REGION_OF_AU[a] not in regions]
            if orphans:
                raise ValueError(f"intensity AUs {orphans} belong to a region without a branch "
                                 f"(the occurrence AUs {list(self.au_ids)} build the branches)")

    @property
    def spec(self) -> VariantSpec:
        return VARIANTS[self.variant]

    @property
    def preset_spec(self) -> PresetSpec:
        return PRESETS[self.preset]

    @property
    def resolved_branch_width(self) -> int:
        return self.branch_width or self.preset_spec.branch_width

    @property
    def resolved_frozen_blocks(self) -> int:
        if self.frozen_blocks is not None:
            return self.frozen_blocks
        return default_frozen_blocks(self.backbone, self.preset_spec.frozen_blocks)

    @property
    def resolved_fc_hidden(self) -> int:
        return self.fc_hidden or self.resolved_branch_width


# --------------------------------------------------------------------------------------------------
# Hard masks


def hard_masks(height: int, center_y: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact 0/1 row masks ``[B, 1, height, 1]`` for the three regions.

    ``center_y`` ([B], fractions of the image height) is scaled to the map: ``y = center_y * H``,
    a position on the continuous row axis where row ``i`` covers ``[i, i + 1)``. A row belongs to a
    region by its centre ``c = i + 0.5``; regions are half-open so that every tie has one answer:

    * upper:  ``c <  y``            (the row whose centre is exactly ``y`` goes to the lower mask)
    * lower:  ``c >= y``            (upper and lower partition the rows)
    * middle: ``y - H/4 <= c < y + H/4``

    At 224 input (H = 28) and the default centre 0.5: upper rows 0-13, lower rows 14-27, middle
    rows 7-20. Masks carry no gradient to the centre.
    """
    rows = torch.arange(height, dtype=torch.float32, device=center_y.device) + 0.5
    y = (center_y.to(torch.float32) * height)[:, None]
    quarter = height / 4.0
    masks = {
        "upper": rows[None, :] < y,
        "lower": rows[None, :] >= y,
        "middle": (rows[None, :] >= y - quarter) & (rows[None, :] < y + quarter),
    }
    return {k: m[:, None, :, None] for k, m in masks.items()}


# --------------------------------------------------------------------------------------------------
# Branches


class ConvPair(nn.Module):
    """Two 3x3 conv + BN; with ``residual`` the shortcut spans the second conv.

    The shortcut starts after the first conv (not at the block input) because the first conv of a
    branch changes the width (decoded channels -> branch width); this keeps the residual parameter-free.
    """

    def __init__(self, in_channels: int, width: int, residual: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.bn1(self.conv1(x)), inplace=True)
        b = self.bn2(self.conv2(a))
        return F.relu(b + a if self.residual else b, inplace=True)


class RegionBranch(nn.Module):
    """[CBAM -> ConvPair(residual) -> maxpool 2] x2 -> CBAM -> ConvPair -> global avg pool -> FC-ReLU-FC."""

    def __init__(self, in_channels: int, width: int, fc_hidden: int, n_outputs: int,
                 spec: VariantSpec, reduction: int = 16, n_intensity: int = 0) -> None:
        super().__init__()
        self.attention = nn.ModuleList()
        self.convs = nn.ModuleList()
        channels = in_channels
        for stage in range(3):
            if spec.cbam:
                self.attention.append(CBAM(channels, reduction, channel=spec.cbam_channel,
                                           spatial=spec.cbam_spatial, residual=spec.cbam_residual))
            self.convs.append(ConvPair(channels, width, residual=stage < 2))
            channels = width
        self.fc1 = nn.Linear(width, fc_hidden)
        self.fc2 = nn.Linear(fc_hidden, n_outputs)
        # Intensity regression beside the occurrence FC, on the same hidden features.
        self.intensity = nn.Linear(fc_hidden, n_intensity) if n_intensity else None

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The hidden FC features both heads read."""
        for stage, conv in enumerate(self.convs):
            if len(self.attention):
                x = self.attention[stage](x)
            x = conv(x)
            if stage < 2:
                x = F.max_pool2d(x, 2, ceil_mode=True)
        x = x.mean(dim=(2, 3))
        return F.relu(self.fc1(x), inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.hidden(x))


# --------------------------------------------------------------------------------------------------
# The model


def _inverse_order(groups: dict[str, list[int]]) -> torch.Tensor:
    # Branch outputs are concatenated in branch order; this permutation puts them in AU order.
    order = [i for idx in groups.values() for i in idx]
    return torch.argsort(torch.tensor(order, dtype=torch.long))


def _positions(groups: dict[str, list[int]]) -> list[tuple[int, int]]:
    # (branch, output of that branch) of each column, in column order.
    where = {i: (r, k) for r, idx in enumerate(groups.values()) for k, i in enumerate(idx)}
    return [where[i] for i in sorted(where)]


class TRANet(nn.Module):
    """TRA-Net or one of its ablations, as ``cfg.variant`` says. ``forward(x, centers=None)``."""

    def __init__(self, cfg: TRANetConfig) -> None:
        super().__init__()
        self.config = cfg
        spec, preset = cfg.spec, cfg.preset_spec
        k = len(cfg.au_ids)
        self.backbone = build_backbone(cfg.backbone, preset.layers, preset.base_width, cfg.reduction)
        self._set_requires_grad(frozen=True)
        channels = self.backbone.feature_channels
        self.decoder = (Decoder(channels, cfg.reduction, cfg.decoder_kernel, cfg.decoder_se)
                        if spec.decoder else None)

        r = len(cfg.intensity_aus)
        by_region = spec.head == "branches" and spec.hard_mask
        self._groups: dict[str, list[int]] = region_groups(cfg.au_ids) if by_region \
            else {"all": list(range(k))}
        self._intensity_groups: dict[str, list[int]] = (
            {name: region_groups(cfg.intensity_aus).get(name, []) for name in self._groups}
            if by_region else {"all": list(range(r))})
        if spec.head == "fc":
            self.fc = nn.Linear(channels[-1], k)
            self.fc_intensity = nn.Linear(channels[-1], r) if r else None
            self.branches = None
        else:
            self.fc = None
            in_channels = self.decoder.out_channels if self.decoder is not None else channels[-1]
            self.branches = RegionBranches({
                name: RegionBranch(in_channels, cfg.resolved_branch_width, cfg.resolved_fc_hidden,
                                   len(idx), spec, cfg.reduction,
                                   n_intensity=len(self._intensity_groups[name]))
                for name, idx in self._groups.items()
            })
            self.branches.set_output_order("fc2", _positions(self._groups))
            if r:
                self.branches.set_output_order("intensity", _positions(self._intensity_groups))
        #: The branches as one set of grouped ops (nets.grouped_branches): True, False (one by
        #: one; same parameters and outputs) or None = off the CPU (oneDNN's grouped convs are slower).
        self.grouped_branches: bool | None = None
        self.register_buffer("_inverse_order", _inverse_order(self._groups), persistent=False)
        self.register_buffer("_intensity_inverse_order", _inverse_order(self._intensity_groups),
                             persistent=False)
        self.register_buffer("_default_center", torch.tensor(cfg.center, dtype=torch.float32),
                             persistent=False)

    # -- structure ---------------------------------------------------------------------------------
    @property
    def branch_groups(self) -> list[list[int]]:
        """Indices into ``au_ids`` predicted by each branch (one group without the hard mask)."""
        return [list(idx) for idx in self._groups.values()]

    @property
    def branch_names(self) -> list[str]:
        return list(self._groups)

    @property
    def input_transform(self) -> InputTransform:
        """How frames become this model's input (recorded, else the backbone's default)."""
        return resolve_transform(self.config.input_transform, self.backbone.default_transform)

    @property
    def has_intensity(self) -> bool:
        return bool(self.config.intensity_aus)

    @property
    def intensity_groups(self) -> list[list[int]]:
        """Indices into ``intensity_aus`` predicted by each branch (same branch order)."""
        return [list(idx) for idx in self._intensity_groups.values() if idx]

    def frozen_modules(self) -> list[nn.Module]:
        """The frozen leading blocks: block 1 = the stem (SENet: conv1, bn1), block 2 = the
        stride-4 stage (SENet: layer1), 3 and 4 the stride-8 and stride-16 stages."""
        return self.backbone.leading_blocks(self.config.resolved_frozen_blocks)

    def set_frozen_blocks(self, blocks: int) -> None:
        """Freeze the first ``blocks`` blocks (0 none, 1 stem, 2 stem + the stride-4 stage, up to
        MAX_FROZEN_BLOCKS) and unfreeze the others; the number is recorded in
        ``self.config.frozen_blocks``."""
        if not 0 <= blocks <= MAX_FROZEN_BLOCKS:
            raise ValueError(f"frozen_blocks must be 0 to {MAX_FROZEN_BLOCKS}, got {blocks}")
        self._set_requires_grad(frozen=False)
        self.config.frozen_blocks = blocks
        self._set_requires_grad(frozen=True)
        self.train(self.training)

    def _set_requires_grad(self, frozen: bool) -> None:
        for module in self.frozen_modules():
            for p in module.parameters():
                p.requires_grad_(not frozen)

    def train(self, mode: bool = True) -> "TRANet":
        super().train(mode)
        # Frozen blocks keep their pretrained BN statistics: never switch them to batch statistics.
        for module in self.frozen_modules():
            module.eval()
        return self

    # -- forward -----------------------------------------------------------------------------------
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The map the head works on: decoded map (or layer4's map without decoder)."""
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x2, x3, x4 = self.backbone.feature_maps(x)
        return self.decoder(x2, x3, x4) if self.decoder is not None else x4

    def classify(self, features: torch.Tensor, centers: torch.Tensor | None = None,
                 with_intensity: bool = False):
        """Logits [B, K] (au_ids order) from :meth:`features`' output; ``centers`` [B, 2] fractions.

        ``with_intensity``: ``(logits, intensity [B, R])``, R in ``intensity_aus`` order."""
        if with_intensity and not self.has_intensity:
            raise ValueError("this model has no intensity head (TRANetConfig.intensity_aus is empty)")
        if self.fc is not None:
            pooled = features.mean(dim=(2, 3))
            return (self.fc(pooled), self.fc_intensity(pooled)) if with_intensity \
                else self.fc(pooled)
        grouped = self.grouped_branches
        if (features.device.type != "cpu" if grouped is None else grouped) and self.branches.can_group():
            masks = self._masks(features, centers)
            hidden = self.branches.hidden(stack_regions(features, [masks[n] for n in self._groups]))
            logits = self.branches.head(hidden, "fc2")
            return (logits, self.branches.head(hidden, "intensity")) if with_intensity else logits
        inputs = self._branch_inputs(features, centers)
        if not with_intensity:
            outputs = [self.branches[name](inputs[name]) for name in self._groups]
            return torch.cat(outputs, dim=1)[:, self._inverse_order]
        hidden = {name: self.branches[name].hidden(inputs[name]) for name in self._groups}
        logits = torch.cat([self.branches[n].fc2(h) for n, h in hidden.items()], dim=1)
        intensity = torch.cat([self.branches[n].intensity(h) for n, h in hidden.items()
                               if self.branches[n].intensity is not None], dim=1)
        return logits[:, self._inverse_order], intensity[:, self._intensity_inverse_order]

    def _branch_inputs(self, features: torch.Tensor,
                       centers: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Each branch's input: the hard-masked map per region, or the whole map."""
        if self.config.spec.hard_mask:
            masks = self._masks(features, centers)
            return {name: features * masks[name].to(features.dtype) for name in self._groups}
        return {"all": features}

    def _masks(self, features: torch.Tensor, centers: torch.Tensor | None) -> dict[str, torch.Tensor]:
        b = features.shape[0]
        if centers is not None and tuple(centers.shape) != (b, 2):
            raise ValueError(f"centers must be [B, 2] = [{b}, 2] (x, y fractions), got {tuple(centers.shape)}")
        cy = self._default_center[1].expand(b) if centers is None else centers.to(features.device)[:, 1]
        return hard_masks(features.shape[2], cy)

    def branch_logits(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split [B, K] logits into each branch's columns."""
        return {name: logits[:, idx] for name, idx in self._groups.items()}

    def forward(self, x: torch.Tensor, centers: torch.Tensor | None = None,
                with_intensity: bool = False):
        return self.classify(self.features(x), centers, with_intensity)


def build_model(cfg: TRANetConfig | None = None) -> TRANet:
    """Build the model ``cfg`` describes (randomly initialised; see ``model.weights``)."""
    model = TRANet(cfg or TRANetConfig())
    if model.config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model

"""The region branches of TRA-Net run as ONE set of grouped operations over the region axis.

The training step is bound by the host launching kernels, and three branches of identical
structure launch every kernel three times. Here the R branches' inputs are stacked on the
channel axis (``[B, R*C, H, W]``) and each layer runs once: convolutions with ``groups=R``, the
CBAM MLPs and the FC layers as grouped 1x1 convolutions, BatchNorm over ``R*width`` channels
(BatchNorm is per channel, so that is each region's BatchNorm), max pooling on the stacked map.

The per-region modules (``RegionBranch``) stay the owners of every parameter and buffer: the
state_dict keys, the optimiser's parameters and the per-region modules' own forward are exactly
as before. Each step stacks every kind of parameter in one ``cat`` (autograd splits the
gradients back). BatchNorm's running statistics need no gradient, so they are not copied each
step: each region's ``running_mean``/``running_var`` buffer is a view of one stacked
(non-persistent) buffer of :class:`RegionBranches`, which the grouped BatchNorm updates in place
(exactly each region's update). The views are made when the branches are built and again after
whatever replaces buffers (``model.to(device)`` and the other ``_apply`` conversions,
``load_state_dict``), so the forward itself checks nothing (it traces as one graph).

The final FC layers have a different number of outputs per region (e.g. 3/2/3): their weights
are stacked with zero rows padding every region to the largest, and the padded outputs are
picked back by one index in the model's output order.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .attention import CBAM


def _cat(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    return torch.cat(list(tensors), dim=0)


def _as_1x1(weight: torch.Tensor) -> torch.Tensor:
    return weight[:, :, None, None]


class RegionBranches(nn.ModuleDict):
    """The region branches by name, with a grouped forward over all of them.

    ``hidden(x)`` takes the stacked inputs ``[B, R*C, H, W]`` (region r's map in channels
    ``r*C:(r+1)*C``, regions in this dict's order) and returns the hidden FC features
    ``[B, R*h]``; ``head(hidden, name)`` applies the stacked ``fc2`` or ``intensity`` layers and
    returns their outputs in the order given to :meth:`set_output_order`.
    """

    def __init__(self, branches: dict[str, nn.Module]) -> None:
        super().__init__(branches)
        self._link_statistics()
        self.register_load_state_dict_post_hook(lambda module, _keys: module._link_statistics())

    def _link_statistics(self) -> None:
        """Make each region's BatchNorm running mean/var views of one stacked buffer a layer."""
        if len(self) < 2:
            return
        first = next(iter(self.values()))
        for name, module in first.named_modules():
            if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.running_mean is None:
                continue
            bns = [b.get_submodule(name) for b in self.values()]
            n, key = module.num_features, "_stacked_" + name.replace(".", "_")
            module.stacked_stats_key = key  # how the grouped forward finds them (first region's)
            with torch.inference_mode(False), torch.no_grad():
                for stat in ("running_mean", "running_var"):
                    stacked = torch.cat([getattr(m, stat) for m in bns])
                    self.register_buffer(f"{key}_{stat}", stacked, persistent=False)
                    for r, m in enumerate(bns):
                        m._buffers[stat] = stacked[r * n:(r + 1) * n]

    def _apply(self, fn, recurse=True):  # noqa: ANN001 - nn.Module's signature
        # .to()/.cuda()/.double() make new per-region buffers (and a new stacked one): link again.
        super()._apply(fn, recurse)
        self._link_statistics()
        return self

    def set_output_order(self, head: str, order: Sequence[tuple[int, int]]) -> None:
        """Output ``j`` of ``head`` is output ``order[j][1]`` of branch ``order[j][0]``."""
        width = max(self._outputs(head))
        index = torch.tensor([r * width + k for r, k in order], dtype=torch.long)
        self.register_buffer(f"_{head}_index", index, persistent=False)

    def _outputs(self, head: str) -> list[int]:
        return [getattr(b, head).out_features if getattr(b, head) is not None else 0
                for b in self.values()]

    def can_group(self) -> bool:
        """More than one branch and plain BatchNorm layers (SyncBatchNorm under DDP, or a
        cumulative-average BatchNorm, run the per-region path)."""
        if len(self) < 2:
            return False
        bns = [m for b in self.values() for m in b.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        return all(type(m) is nn.BatchNorm2d and m.track_running_stats and m.momentum is not None
                   and m.training == bns[0].training for m in bns)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        branches = list(self.values())
        step = _Step(self)
        for stage in range(3):
            if len(branches[0].attention):
                x = _cbam([b.attention[stage] for b in branches], x, step)
            x = _conv_pair([b.convs[stage] for b in branches], x, step)
            if stage < 2:
                x = F.max_pool2d(x, 2, ceil_mode=True)
        x = x.mean(dim=(2, 3), keepdim=True)
        weight = _as_1x1(_cat(b.fc1.weight for b in branches))
        h = F.relu(F.conv2d(x, weight, _cat(b.fc1.bias for b in branches), groups=len(branches)))
        if step.counters:  # what each region's BatchNorm.forward counts in train mode
            with torch.no_grad():
                torch._foreach_add_(step.counters, 1)
        return h.flatten(1)

    def head(self, hidden: torch.Tensor, head: str) -> torch.Tensor:
        """The stacked ``fc2``/``intensity`` layers on :meth:`hidden`'s output, in output order."""
        branches = list(self.values())
        sizes = self._outputs(head)
        width, fc1 = max(sizes), branches[0].fc1
        weights, biases = [], []
        for branch, n in zip(branches, sizes):
            layer = getattr(branch, head)
            pad = fc1.weight.new_zeros(width - n, fc1.out_features) if n < width else None
            weights += [layer.weight] if n else []
            biases += [layer.bias] if n else []
            if pad is not None:
                weights.append(pad)
                biases.append(pad[:, 0])
        out = F.conv2d(hidden[:, :, None, None], _as_1x1(_cat(weights)), _cat(biases),
                       groups=len(branches))
        return out.flatten(1).index_select(1, getattr(self, f"_{head}_index"))


class _Step:
    """One grouped forward: where the stacked statistics are, and the batch counters to bump."""

    def __init__(self, owner: RegionBranches) -> None:
        self.owner = owner
        self.counters: list[torch.Tensor] = []

    def batch_norm(self, bns: list[nn.BatchNorm2d], x: torch.Tensor) -> torch.Tensor:
        """Each region's BatchNorm at once; train-mode running statistics land in each region's."""
        first = bns[0]
        key = first.stacked_stats_key
        mean = getattr(self.owner, f"{key}_running_mean")
        var = getattr(self.owner, f"{key}_running_var")
        y = F.batch_norm(x, mean, var, _cat(m.weight for m in bns), _cat(m.bias for m in bns),
                         first.training, first.momentum, first.eps)
        if first.training:
            self.counters.extend(m.num_batches_tracked for m in bns)
        return y


def _conv(convs: list[nn.Conv2d], x: torch.Tensor) -> torch.Tensor:
    first = convs[0]
    return F.conv2d(x, _cat(c.weight for c in convs), None, first.stride, first.padding,
                    first.dilation, groups=len(convs))


def _conv_pair(pairs: list, x: torch.Tensor, step: _Step) -> torch.Tensor:
    """``ConvPair.forward`` of every region at once."""
    a = F.relu(step.batch_norm([p.bn1 for p in pairs], _conv([p.conv1 for p in pairs], x)),
               inplace=True)
    b = step.batch_norm([p.bn2 for p in pairs], _conv([p.conv2 for p in pairs], a))
    return F.relu(b + a if pairs[0].residual else b, inplace=True)


def _cbam(blocks: list[CBAM], x: torch.Tensor, step: _Step) -> torch.Tensor:
    """``CBAM.forward`` of every region at once."""
    out = x
    if blocks[0].channel_gate is not None:
        out = out * _channel_gate([b.channel_gate.mlp for b in blocks], out)
    if blocks[0].spatial_gate is not None:
        out = _spatial_gate([b.spatial_gate for b in blocks], out, step)
    return out + x if blocks[0].residual else out


def _channel_gate(mlps: list[nn.Sequential], x: torch.Tensor) -> torch.Tensor:
    """One grouped MLP over the average- and max-pooled descriptors, stacked on the batch axis."""
    r = len(mlps)
    pooled = torch.cat([x.mean(dim=(2, 3), keepdim=True), F.adaptive_max_pool2d(x, 1)], dim=0)
    h = F.relu(F.conv2d(pooled, _as_1x1(_cat(m[0].weight for m in mlps)),
                        _cat(m[0].bias for m in mlps), groups=r))
    logits = F.conv2d(h, _as_1x1(_cat(m[2].weight for m in mlps)), _cat(m[2].bias for m in mlps),
                      groups=r)
    # Summed over a new leading axis, not sliced at the batch size: an exported (traced) graph
    # keeps a free batch size.
    return torch.sigmoid(logits.unflatten(0, (2, -1)).sum(0))


def _spatial_gate(gates: list, x: torch.Tensor, step: _Step) -> torch.Tensor:
    """Per region: [max_c, mean_c] -> 7x7 conv -> BN -> sigmoid -> multiply, as one grouped
    conv over the R two-channel maps. Returns the gated map."""
    r = len(gates)
    regions = x.unflatten(1, (r, -1))  # [B, R, C, H, W]
    # max(), not amax(): the same gradient on ties (one channel) as SpatialGate's.
    pooled = torch.stack([regions.max(dim=2).values, regions.mean(dim=2)], dim=2).flatten(1, 2)
    conv = gates[0].conv
    maps = F.conv2d(pooled, _cat(g.conv.weight for g in gates), None, conv.stride, conv.padding,
                    groups=r)
    gate = torch.sigmoid(step.batch_norm([g.bn for g in gates], maps))  # [B, R, H, W]
    return (regions * gate[:, :, None]).flatten(1, 2)


def stack_regions(features: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """``[B, R*C, H, W]``: the map under each region's 0/1 mask (``[B, 1, H, 1]``), stacked.

    One product a region and a cat (not one broadcast product over a region axis): the cat keeps
    the map's memory format (channels_last), where a 5-d product would be copied to flatten."""
    return torch.cat([features * m.to(features.dtype) for m in masks], dim=1)

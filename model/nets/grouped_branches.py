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
step: each region's ``running_mean``/``running_var`` buffer is made a view of one stacked
buffer, which the grouped BatchNorm updates in place (exactly each region's update). Whatever
replaces a buffer (``model.to(device)``, ``load_state_dict(assign=True)``) is noticed by identity
at the next forward and the views are made again.

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
        counters: list[torch.Tensor] = []
        for stage in range(3):
            if len(branches[0].attention):
                x = _cbam([b.attention[stage] for b in branches], x, counters)
            x = _conv_pair([b.convs[stage] for b in branches], x, counters)
            if stage < 2:
                x = F.max_pool2d(x, 2, ceil_mode=True)
        x = x.mean(dim=(2, 3), keepdim=True)
        weight = _as_1x1(_cat(b.fc1.weight for b in branches))
        h = F.relu(F.conv2d(x, weight, _cat(b.fc1.bias for b in branches), groups=len(branches)))
        if counters:  # what each region's BatchNorm.forward counts in train mode
            with torch.no_grad():
                torch._foreach_add_(counters, 1)
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


def _stacked_stats(bns: list[nn.BatchNorm2d]) -> tuple[torch.Tensor, torch.Tensor]:
    """The regions' running mean and variance, stacked; each region's buffers are views of them."""
    base = [getattr(bns[0].running_mean, "_base", None), getattr(bns[0].running_var, "_base", None)]
    n = bns[0].num_features
    if all(b is not None and b.shape == (n * len(bns),) for b in base) and all(
            m.running_mean._base is base[0] and m.running_var._base is base[1]
            and m.running_mean.storage_offset() == r * n for r, m in enumerate(bns)):
        return base[0], base[1]
    # First use, or a buffer was replaced (.to(), load_state_dict(assign=True)): stack again.
    with torch.inference_mode(False), torch.no_grad():
        mean, var = _cat(m.running_mean for m in bns), _cat(m.running_var for m in bns)
    for r, m in enumerate(bns):
        m._buffers["running_mean"], m._buffers["running_var"] = mean[r * n:(r + 1) * n], var[r * n:(r + 1) * n]
    return mean, var


def _batch_norm(bns: list[nn.BatchNorm2d], x: torch.Tensor,
                counters: list[torch.Tensor]) -> torch.Tensor:
    """Each region's BatchNorm at once; train-mode running statistics land in each region's."""
    first = bns[0]
    mean, var = _stacked_stats(bns)
    y = F.batch_norm(x, mean, var, _cat(m.weight for m in bns), _cat(m.bias for m in bns),
                     first.training, first.momentum, first.eps)
    if first.training:
        counters.extend(m.num_batches_tracked for m in bns)
    return y


def _conv(convs: list[nn.Conv2d], x: torch.Tensor) -> torch.Tensor:
    first = convs[0]
    return F.conv2d(x, _cat(c.weight for c in convs), None, first.stride, first.padding,
                    first.dilation, groups=len(convs))


def _conv_pair(pairs: list, x: torch.Tensor, counters: list[torch.Tensor]) -> torch.Tensor:
    """``ConvPair.forward`` of every region at once."""
    a = F.relu(_batch_norm([p.bn1 for p in pairs], _conv([p.conv1 for p in pairs], x), counters),
               inplace=True)
    b = _batch_norm([p.bn2 for p in pairs], _conv([p.conv2 for p in pairs], a), counters)
    return F.relu(b + a if pairs[0].residual else b, inplace=True)


def _cbam(blocks: list[CBAM], x: torch.Tensor, counters: list[torch.Tensor]) -> torch.Tensor:
    """``CBAM.forward`` of every region at once."""
    out = x
    if blocks[0].channel_gate is not None:
        out = out * _channel_gate([b.channel_gate.mlp for b in blocks], out)
    if blocks[0].spatial_gate is not None:
        out = _spatial_gate([b.spatial_gate for b in blocks], out, counters)
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


def _spatial_gate(gates: list, x: torch.Tensor, counters: list[torch.Tensor]) -> torch.Tensor:
    """Per region: [max_c, mean_c] -> 7x7 conv -> BN -> sigmoid -> multiply, as one grouped
    conv over the R two-channel maps. Returns the gated map."""
    r = len(gates)
    regions = x.unflatten(1, (r, -1))  # [B, R, C, H, W]
    # max(), not amax(): the same gradient on ties (one channel) as SpatialGate's.
    pooled = torch.stack([regions.max(dim=2).values, regions.mean(dim=2)], dim=2).flatten(1, 2)
    conv = gates[0].conv
    maps = F.conv2d(pooled, _cat(g.conv.weight for g in gates), None, conv.stride, conv.padding,
                    groups=r)
    gate = torch.sigmoid(_batch_norm([g.bn for g in gates], maps, counters))  # [B, R, H, W]
    return (regions * gate[:, :, None]).flatten(1, 2)


def stack_regions(features: torch.Tensor, masks: list[torch.Tensor]) -> torch.Tensor:
    """``[B, R*C, H, W]``: the map under each region's 0/1 mask (``[B, 1, H, 1]``), stacked.

    One product a region and a cat (not one broadcast product over a region axis): the cat keeps
    the map's memory format (channels_last), where a 5-d product would be copied to flatten."""
    return torch.cat([features * m.to(features.dtype) for m in masks], dim=1)

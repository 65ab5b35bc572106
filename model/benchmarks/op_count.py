"""Count the ATen operations one training step dispatches: the host's work a step.

The full-preset training step is bound by the host launching kernels, not by FLOPs, so the number
of operations a step is the figure to hold down. :func:`count_train_step_ops` runs ONE step as
the trainer runs it (``model.engine.loop.train_step``: input transform, forward under the
trainer's precision, the trainer's loss, backward, the trainer's SGD and schedule) on CPU under a
``TorchDispatchMode`` that counts every ATen op except views and aliases (ops whose schema says
they return a view of an input, plus ``detach``/``alias``): those only make new tensor headers
and launch no kernel. The count does not depend on the image size, so a small input is enough.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..engine.config import TrainConfig
from ..engine.loop import train_step
from ..engine.losses import task_loss_for
from ..engine.precision import Precision
from ..nets.tranet import TRANetConfig, build_model

#: Ops that launch no kernel although their schema does not mark them as views.
_ALIASES = {"detach", "alias", "lift_fresh"}


@dataclass
class OpCount:
    """Non-view ATen ops of one step, in total and by op name."""

    total: int = 0
    by_op: collections.Counter = field(default_factory=collections.Counter)

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        return self.by_op.most_common(n)


class _Counter(TorchDispatchMode):
    def __init__(self, count: OpCount) -> None:
        super().__init__()
        self.count = count

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in _ALIASES:
            self.count.total += 1
            self.count.by_op[name] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn) -> OpCount:
    """Run ``fn()`` once and count the non-view ATen ops it dispatches (this thread only)."""
    count = OpCount()
    with _Counter(count):
        fn()
    return count


def count_train_step_ops(variant: str = "tranet", preset: str = "full", amp: bool = False,
                         batch: int = 2, size: int = 64, warmup: int = 1,
                         channels_last: bool = False, grouped: bool = True) -> OpCount:
    """Non-view ATen ops of one CPU training step of ``variant``/``preset`` as the trainer runs
    it (``amp``: the trainer's ``--amp``, bfloat16 autocast on CPU). ``warmup`` steps run first,
    uncounted, so that lazily made state (momentum buffers) is in place as in a running epoch.
    The step is the one a GPU runs: the branches grouped (``TRANet.grouped_branches``, which
    defaults to the per-region ops on a CPU; ``grouped=False`` counts those) and foreach SGD."""
    torch.manual_seed(0)
    # The trainer's settings (paths unused: no data is read); frozen blocks as the preset's.
    cfg = TrainConfig(shards="-", manifest="-", fold=0, out="-", amp=amp,
                      channels_last=channels_last)
    model_cfg = TRANetConfig(variant=variant, preset=preset, image_size=size,
                             channels_last=channels_last)
    model = build_model(model_cfg).train()
    model.grouped_branches = grouped
    precision = Precision("cpu", torch.bfloat16 if amp else None)
    params = [p for p in model.parameters() if p.requires_grad]
    # foreach: the implementation torch picks for the trainer's SGD on CUDA (on CPU it would
    # default to one loop of ops per parameter, which no GPU run executes).
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay, foreach=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=100)
    scaler = precision.grad_scaler()
    criterion = task_loss_for("occurrence", model_cfg.au_ids)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    targets = (torch.rand(batch, len(model_cfg.au_ids)) > 0.7).float()
    transform = model.input_transform

    def step() -> None:
        train_step(model, criterion, optimizer, scaler, scheduler, images, targets,
                   torch.device("cpu"), cfg, precision, transform)
    for _ in range(warmup):
        step()
    return count_ops(step)

"""The training loop: one optimiser step, one epoch of steps, and the sync points where the host
looks at the device (losses copied over, the non-finite check, the agreement to stop)."""
from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.data import DataLoader

from .config import TrainConfig
from .distributed import DistInfo, all_reduce_sum
from .forward import forward_loss, prepare, shard_frames, unwrap, uses_intensity
from .graph_step import GraphStep
from .precision import choose_precision
from .progress import EpochBar, RunClock
from .step_log import EpochAccumulator, StepLog
from .stopping import NonFiniteLossError, StopRequest
from ..nets.transforms import InputTransform

__all__ = ["SYNC_EVERY", "EpochAccumulator", "NonFiniteLossError", "StopRequest", "agree_stop",
           "train_one_epoch", "train_step"]

#: Training steps between the host's looks at the device: the losses of the steps since the last
#: look are copied over at once, the non-finite check and (under DDP) the agreement to stop are
#: made then, and the bar's loss is refreshed (the bar itself moves every step, from the host
#: counter). Every step's own synchronisations would stall the GPU.
SYNC_EVERY = 20


def train_step(model, criterion, optimizer, scaler, scheduler, images, targets, device, cfg,
               precision, transform: InputTransform | None = None, index=None,
               frames=None) -> torch.Tensor:
    """One optimiser step; returns the loss (on the device, not waited for).

    ``transform`` defaults to the model's own input transform (looked up each call; the epoch
    loop passes it once). ``index`` and ``frames`` (the batch's frame indices and their
    ShardFrames) feed an intensity loss."""
    if transform is None:
        transform = unwrap(model).input_transform
    x = prepare(images, device, cfg.channels_last, transform)
    y = targets.to(device, non_blocking=True)
    loss = forward_loss(model, criterion, x, y, device, precision, index, frames)[0]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss


def train_one_epoch(
    model: torch.nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    cfg: TrainConfig,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    acc: EpochAccumulator,
    stop: StopRequest,
    info: DistInfo,
    on_batch_end: Callable[[int, int, float], None] | None = None,
    clock: RunClock | None = None,
    graph: GraphStep | None = None,
) -> bool:
    """Train until the epoch's batches are done (True) or a stop is requested (False).

    ``acc`` carries on from a resumed mid-epoch state; ``acc.batches`` is the batch to start at.
    The host waits for the device only every ``SYNC_EVERY`` steps (and when ``on_batch_end``,
    which gets each step's loss as a float, is given); the bar moves every step. ``clock``: the
    run's (for its ETA), else one for this epoch alone. ``graph``: the run's captured step
    (``graph_step``), used for every batch of its shape; None: the eager ``train_step``.
    """
    model.train()
    total, precision = cfg.batches_per_epoch, choose_precision(device, cfg.amp)
    transform = unwrap(model).input_transform  # the one this model is trained with
    clock = clock or RunClock(epoch, total, epoch - 1, acc.batches)
    bar = EpochBar(epoch, total, acc.batches, clock,
                   disable=True if cfg.quiet or not info.is_main else None)  # None: off if no tty
    steps = StepLog(acc, total, device)
    start = time.perf_counter()
    try:
        frames = shard_frames(loader) if uses_intensity(criterion) else None
        for images, targets, index in _batches(loader, stop):
            batch = acc.batches + 1
            loss = graph(images, targets, index, scheduler) if graph is not None else None
            if loss is None:  # no graph, or a batch of another size
                loss = train_step(model, criterion, optimizer, scaler, scheduler, images,
                                  targets, device, cfg, precision, transform, index=index,
                                  frames=frames)
            steps.record(batch, loss, targets)
            bar.step(batch)
            if on_batch_end is not None:
                on_batch_end(epoch, batch, float(loss.detach()))
            at_sync = batch % SYNC_EVERY == 0 or batch >= total
            if (at_sync or (stop.requested and not info.enabled)) and \
                    _sync_point(steps, bar, stop, info, device, epoch):
                return acc.batches >= total
    finally:
        steps.flush()
        acc.seconds += time.perf_counter() - start
        bar.close()
    return not stop.requested or acc.batches >= total


def _batches(loader, stop: StopRequest):
    """The loader's batches; a loader error after a stop request ends the epoch quietly."""
    batches = iter(loader)
    while True:
        try:
            yield next(batches)
        except StopIteration:
            return
        except Exception:
            # A terminal Ctrl-C also reaches the DataLoader workers, which then exit; the
            # loader reports that as an error. The stop request is what counts.
            if stop.requested:
                return
            raise


def _sync_point(steps: StepLog, bar: EpochBar, stop: StopRequest, info: DistInfo,
                device: torch.device, epoch: int) -> bool:
    """Copy the losses over, check them, show their mean on the bar; True when every rank
    agrees to stop.

    A non-finite loss on any rank stops every rank here (not at the collective timeout)."""
    acc = steps.acc
    bad = steps.flush()
    stop_all, bad_any = _agree(stop.requested, bad is not None, info, device)
    if bad_any:
        where = (f"batch {bad[0]} (seen at batch {bad[1]})" if bad
                 else f"batch <= {acc.batches} of another process")
        raise NonFiniteLossError(f"epoch {epoch}, {where}: the loss is not finite; stopping "
                                 "(lower --lr, or check the input frames)")
    bar.synced(acc.loss_sum / max(acc.batches, 1))
    return stop_all


def _agree(stop: bool, bad: bool, info: DistInfo, device: torch.device) -> tuple[bool, bool]:
    """(any rank asks to stop, any rank saw a non-finite loss): one all-reduce under DDP."""
    if not info.enabled:
        return stop, bad
    flags = all_reduce_sum(torch.tensor([float(stop), float(bad)]), info, device)
    return bool(flags[0] > 0), bool(flags[1] > 0)


def agree_stop(stop: StopRequest, info: DistInfo, device: torch.device) -> bool:
    """Every rank must stop at the same batch, or DDP's next all-reduce would hang."""
    return _agree(stop.requested, False, info, device)[0]

"""A run's model under DDP: SyncBatchNorm where torch has it (CUDA), then the DDP wrapper."""
from __future__ import annotations

import logging

import torch

from .run import TrainingRun

log = logging.getLogger("model.train")


def distribute(run: TrainingRun) -> None:
    """Wrap the model in DDP, with SyncBatchNorm (``--no-sync-bn`` aside) where torch has it."""
    cfg, device = run.cfg, run.device
    wanted, possible = cfg.sync_bn, device.type == "cuda"
    if wanted and possible:
        run.model = with_sync_batchnorm(run.model)
        note = f"BatchNorm statistics synchronised over the {run.info.world} processes"
    elif wanted:
        note = ("per-process BatchNorm: torch's SyncBatchNorm runs on CUDA only, these "
                f"{run.info.world} processes train on the CPU")
        if run.info.is_main:
            log.warning("%s", note)
    else:
        note = "per-process BatchNorm (--no-sync-bn)"
    run.sync_batchnorm = {"enabled": wanted and possible, "note": note}
    run.model = torch.nn.parallel.DistributedDataParallel(
        run.model, device_ids=[device.index] if device.type == "cuda" else None)


def with_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm as a SyncBatchNorm sharing its parameters and buffers (frozen ones stay
    frozen: ``TRANet.train`` keeps them in eval mode, where nothing is synchronised)."""
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return converted.train(model.training)

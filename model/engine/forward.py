"""One batch through the model, as the training step and the evaluation pass both run it:
the input put on the device in the model's own transform, the logits, the intensity head's
output and its targets, and the loss."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader, Subset

from .cast_once import autocast_forward
from .data import ShardFrames
from .precision import Precision
from ..nets.regions import ALL_AUS
from ..nets.transforms import InputTransform, to_model_input


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
    return model.module if hasattr(model, "module") else model


def prepare(images: torch.Tensor, device: torch.device, channels_last: bool,
            transform: InputTransform) -> torch.Tensor:
    x = to_model_input(images.to(device, non_blocking=True), transform)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def uses_intensity(criterion: Any) -> bool:
    return bool(getattr(criterion, "uses_intensity", False))


def shard_frames(loader: DataLoader) -> ShardFrames | None:
    """The ShardFrames under ``loader`` (through any Subset), or None."""
    dataset = getattr(loader, "dataset", None)  # None for a plain list of batches
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, ShardFrames) else None


def forward_loss(model: torch.nn.Module, criterion: Callable | None, x: torch.Tensor,
                 y: torch.Tensor, device: torch.device, precision: Precision,
                 index: torch.Tensor | None = None, frames: ShardFrames | None = None,
                 with_intensity: bool = False
                 ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None,
                            torch.Tensor | None]:
    """(loss or None, logits, intensity or None, intensity targets or None) of one batch.

    Intensity targets are looked up on the host by the frames' global ``index`` in ``frames``
    (the batches carry only the occurrence labels) and copied without waiting; nothing here
    synchronises with the device."""
    with_intensity = with_intensity or uses_intensity(criterion)
    # Under autocast, with the weights cast once a step (cast_once), not once per use.
    out = (autocast_forward(model, precision, x, with_intensity=True) if with_intensity
           else autocast_forward(model, precision, x))
    logits, intensity = (out[0].float(), out[1].float()) if with_intensity else (out.float(), None)
    target_r = None
    if intensity is not None:
        if frames is None or index is None:
            raise ValueError("intensity targets need the batch's frame index and its ShardFrames")
        target_r = frames.intensities(index, ALL_AUS).to(device, non_blocking=True)
    loss = None
    if criterion is not None:
        loss = (criterion(logits, y, intensity, target_r) if uses_intensity(criterion)
                else criterion(logits, y))
    return loss, logits, intensity, target_r

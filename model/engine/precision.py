"""The one mixed-precision choice of the trainer, the evaluator, ``model.bench`` and the GPU report.

``--amp`` means bfloat16 autocast where the device runs it natively (CPU; CUDA GPUs of compute
capability 8.0 or later: A100, H100, H200), with no GradScaler (bfloat16 has float32's exponent
range, so gradients do not underflow). On older CUDA GPUs it means float16 autocast with a
GradScaler. ``dtype`` overrides the choice (the GPU report times both).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def bf16_supported(device: torch.device) -> bool:
    """bfloat16 runs natively (tensor cores on CUDA >= sm80; CPU autocast supports it)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu"


@dataclass(frozen=True)
class Precision:
    """How a step runs: autocast on or off, in which dtype, with or without a GradScaler."""

    device_type: str
    dtype: torch.dtype | None  # None: plain float32
    # autocast's weight-cast cache; off for CUDA graphs (a cast cached during capture would be
    # freed when the autocast region ends)
    cache_enabled: bool = True

    @property
    def name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16", None: "fp32"}[self.dtype]

    @property
    def needs_scaler(self) -> bool:
        # float16 gradients underflow without loss scaling; bfloat16 and float32 do not.
        return self.dtype == torch.float16 and self.device_type == "cuda"

    def autocast(self) -> torch.autocast:
        return torch.autocast(device_type=self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None, cache_enabled=self.cache_enabled)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that is a pass-through unless float16 needs it."""
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


def choose_precision(device: torch.device, amp: bool, dtype: str | None = None) -> Precision:
    """``amp`` off -> float32; on -> ``dtype`` ("bf16"/"fp16") or bfloat16 where supported,
    float16 otherwise (CPU: bfloat16 always)."""
    if not amp or dtype == "fp32":
        return Precision(device.type, None)
    if dtype is not None:
        if dtype not in DTYPES:
            raise ValueError(f"unknown precision {dtype!r}; choose one of {sorted(DTYPES)}")
        return Precision(device.type, DTYPES[dtype])
    return Precision(device.type, torch.bfloat16 if bf16_supported(device) else torch.float16)

"""GPU utilisation while a measurement runs, sampled through NVML (pynvml) in a thread; where
NVML is not importable or the device is not a GPU the figure is null and the reason is given."""
from __future__ import annotations

import statistics
import threading
from typing import Any

import torch

from .optional import optional_import

#: Seconds between samples: NVML's own utilisation counter averages over 1/6 s to 1 s.
INTERVAL = 0.1


class UtilisationSampler:
    """``with UtilisationSampler(device) as s: ...``; then ``s.result()``: the mean percentage of
    time a kernel ran on the GPU (NVML's "utilization.gpu") over the block, or None and why."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[float] = []
        self.reason: str | None = None
        self._handle: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if device.type != "cuda":
            self.reason = f"not a GPU ({device.type})"
            return
        self._nvml, why = optional_import("pynvml")
        if self._nvml is None:
            self.reason = why
            return
        try:
            self._nvml.nvmlInit()
            self._handle = _handle(self._nvml, device)
        except Exception as err:  # no driver library, no permission: a null figure, not a crash
            self.reason = f"NVML: {type(err).__name__}: {err}"

    def __enter__(self) -> "UtilisationSampler":
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _sample(self) -> None:
        while not self._stop.wait(INTERVAL):
            try:
                self.samples.append(float(
                    self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
            except Exception as err:
                self.reason = f"NVML: {type(err).__name__}: {err}"
                return

    def result(self) -> dict[str, Any]:
        mean = statistics.fmean(self.samples) if self.samples else None
        reason = self.reason if mean is None else None
        if mean is None and reason is None:
            reason = "no sample (the measurement was shorter than one interval)"
        return {"gpu_util_pct": mean, "gpu_util_samples": len(self.samples),
                "gpu_util_reason": reason}


def _handle(nvml: Any, device: torch.device) -> Any:
    """The NVML handle of torch's device: by UUID (CUDA_VISIBLE_DEVICES renumbers devices),
    else by index."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)

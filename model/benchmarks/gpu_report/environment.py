"""Stage 1: the machine and the library versions the figures were measured with."""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import torch

from ...engine.precision import choose_precision
from .optional import library_report, optional_import
from .report import Report


def stage_environment(report: Report) -> None:
    device = report.device
    info: dict[str, Any] = {
        "device": str(device), "python": platform.python_version(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "mode": "small" if report.cfg.small else "full", "deadline_s": report.cfg.deadline,
        "preset": report.cfg.preset, "image_size": report.cfg.size,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                    capability=f"{props.major}.{props.minor}", sm_count=props.multi_processor_count,
                    gpu_count=torch.cuda.device_count(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    tf32_cudnn=torch.backends.cudnn.allow_tf32)
    info["amp_choice"] = choose_precision(device, amp=True).name
    info["libraries"], info["missing"] = library_report()
    info["onnxruntime_providers"] = _onnx_providers()
    report.write(kind="environment", **info)


def _onnx_providers() -> str | None:
    ort, _ = optional_import("onnxruntime")
    with contextlib.suppress(Exception):
        return ",".join(ort.get_available_providers()) if ort is not None else None
    return None

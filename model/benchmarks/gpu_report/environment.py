"""Stage 1: the machine and the library versions the figures were measured with."""
from __future__ import annotations

import contextlib
import os
import platform
from typing import Any

import torch

from ...engine.precision import choose_precision
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
    info["libraries"] = _library_versions()
    report.write(kind="environment", **info)


def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in ("numpy", "cv2", "h5py", "scipy", "timm", "onnxruntime", "tqdm", "dlib"):
        try:
            module = __import__(name)
            versions[name] = str(getattr(module, "__version__", "?"))
        except Exception:
            versions[name] = None
    with contextlib.suppress(Exception):
        import onnxruntime
        versions["onnxruntime_providers"] = ",".join(onnxruntime.get_available_providers())
    return versions

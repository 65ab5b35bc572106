"""The ``predict`` stage: predict-sized inference, torch (fp32 and the AMP choice) and
onnxruntime per provider."""
from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from ...engine.precision import choose_precision
from ...nets.tranet import TRANet
from ..train_bench import make_infer_step
from .ceiling import build
from .optional import optional_import
from .report import Report
from .timing import time_steps


def stage_predict(report: Report) -> None:
    cfg = report.cfg
    presets = [("small", 112)] if cfg.small else [("small", 112), ("full", 224)]
    sizes = (1,) if cfg.small else (1, 2, 4, 8, 16)
    for preset, size in presets:
        if cfg.small:
            size = cfg.size
        model = build(cfg, report.device, channels_last=True, preset=preset, size=size).eval()
        for batch in sizes:
            for engine, fn in predict_engines(report, model, batch, size):
                family = f"predict-{preset}-{engine}"
                # the first of an engine: its steps at a third of a training step (the pilot's)
                first = report.costs.steps_estimate(batch, (cfg.warmup + cfg.min_steps + 1) / 3,
                                                    cfg.seconds / 2, 2 if cfg.small else 10)
                estimate = report.costs.estimate(family, batch, first.seconds)
                report.measure({"preset": preset, "size": size, "batch": batch,
                                "engine": engine}, estimate,
                               lambda left, f=fn, b=batch: _time(report, f, b, left),
                               family=family, size=batch)


def _time(report: Report, fn: Callable[[], Any], batch: int, left: float) -> dict[str, Any]:
    cfg = report.cfg
    timing = time_steps(fn, report.device, cfg.seconds / 2, cfg.warmup, cfg.min_steps,
                        budget=left)
    return {"images_per_s": batch / timing["step_s"], "ms_per_batch": 1000 * timing["step_s"],
            "steps": timing["steps"], "host_ms": timing["host_ms"], "gpu_ms": timing["gpu_ms"]}


#: Seconds an ONNX export of the model is guessed to take, by preset.
EXPORT_S = {"small": 5.0, "full": 30.0}


def predict_engines(report: Report, model: TRANet, batch: int,
                    size: int) -> list[tuple[str, Callable[[], Any]]]:
    """(name, step) pairs: torch fp32, torch with the AMP choice, onnxruntime per provider."""
    device = report.device
    x = torch.randn(batch, 3, size, size, device=device) * 60
    engines = []
    for amp in (False, True):
        precision = choose_precision(device, amp)
        engines.append((f"torch-{precision.name}", make_infer_step(model, x, precision)))
    try:
        engines.extend(onnx_engines(report, model, x))
    except Exception as err:  # an exporter or provider problem must not cost the torch rows
        report.write(kind="measurement", status="error", engine="onnxruntime", batch=len(x),
                     error=f"{type(err).__name__}: {err}"[:500])
    return engines


def onnx_engines(report: Report, model: TRANet,
                 x: torch.Tensor) -> list[tuple[str, Callable[[], Any]]]:
    """onnxruntime sessions of the model (exported once per preset and size) per provider."""
    ort, why = optional_import("onnxruntime")
    if ort is None:
        report.skip({"engine": "onnxruntime", "batch": len(x)}, why or "")
        return []
    path = report.dir / f"tranet-{model.config.preset}-{x.shape[-1]}.onnx"
    if not path.exists():
        need = EXPORT_S.get(model.config.preset, 30.0) * (0.3 if report.cfg.small else 1)
        if need > report.remaining():
            report.skip({"engine": "onnxruntime", "batch": len(x)},
                        f"deadline: the export is estimated at {need:.0f} s, "
                        f"{max(report.remaining(), 0):.1f} s left")
            return []
        export_onnx(model, x, path)
    feed = {"images": x.float().cpu().numpy()}
    engines = []
    for provider in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        if provider not in ort.get_available_providers():
            continue
        try:
            session = ort.InferenceSession(str(path), providers=[provider])
        except Exception as err:
            report.write(kind="measurement", status="error", engine=provider,
                         error=f"{type(err).__name__}: {err}"[:500])
            continue
        engines.append((f"onnxruntime-{provider.replace('ExecutionProvider', '')}",
                        lambda s=session: s.run(None, feed)))
    return engines


def export_onnx(model: TRANet, x: torch.Tensor, path: Path) -> None:
    cpu_model = _copy_to_cpu(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = dict(input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
        try:
            torch.onnx.export(cpu_model, (x[:1].float().cpu(),), str(path), dynamo=False,
                              **kwargs)
        except TypeError:  # torch without the dynamo switch
            torch.onnx.export(cpu_model, (x[:1].float().cpu(),), str(path), **kwargs)


def _copy_to_cpu(model: TRANet) -> TRANet:
    return copy.deepcopy(model).cpu().float().eval()

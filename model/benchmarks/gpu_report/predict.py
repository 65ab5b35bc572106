"""Stage 7: predict-sized inference, torch (fp32 and the AMP choice) and onnxruntime per provider."""
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
from .report import Report, time_steps


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
                what = {"kind": "measurement", "preset": preset, "size": size, "batch": batch,
                        "engine": engine}
                if report.out_of_time(reserve=5 if not cfg.small else 0.5):
                    report.skip(what, "deadline")
                    continue
                try:
                    timing = time_steps(fn, report.device, cfg.seconds / 2, cfg.warmup,
                                        cfg.min_steps)
                    report.write(**what, status="ok", images_per_s=batch / timing["step_s"],
                                 ms_per_batch=1000 * timing["step_s"], steps=timing["steps"])
                except Exception as err:
                    report.write(**what, status="error", error=f"{type(err).__name__}: {err}")


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


def onnx_engines(report: Report, model: TRANet, x: torch.Tensor) -> list[tuple[str, Callable[[], Any]]]:
    """onnxruntime sessions of the model (exported once per preset and size) per provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    path = report.dir / f"tranet-{model.config.preset}-{x.shape[-1]}.onnx"
    if not path.exists():
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

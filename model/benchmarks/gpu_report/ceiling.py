"""Stages 2, 3 and 8: the model's ceiling on device-resident data (training step, inference),
eager and through ``torch.compile``."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...engine.precision import choose_precision
from ...nets.tranet import TRANet, TRANetConfig, build_model
from ..train_bench import make_infer_step, make_train_step
from .config import ReportConfig
from .report import (Report, cudnn_benchmark, free_device_memory, peak_memory, reset_peak, sync,
                     time_steps)


@dataclass(frozen=True)
class StepSetting:
    precision: str        # bf16 / fp16 / fp32
    channels_last: bool
    batch: int
    cudnn_benchmark: bool

    def label(self) -> dict[str, Any]:
        return asdict(self)


def ceiling_settings(cfg: ReportConfig, train: bool) -> list[StepSetting]:
    """The default (bf16, channels_last, batch 64, benchmark on) first, then one change each."""
    small, large = cfg.batches
    base = StepSetting("bf16", True, small, True)
    settings = [base, StepSetting("bf16", True, large, True), StepSetting("fp16", True, small, True),
                StepSetting("fp32", True, small, True), StepSetting("bf16", False, small, True),
                StepSetting("bf16", True, small, False), StepSetting("fp32", False, small, False)]
    if not train:
        settings.insert(2, StepSetting("bf16", True, large * 2, True))
    else:
        # A batch of 8 costs the GPU little: its step time is the host's (launch) overhead floor.
        settings.append(StepSetting("bf16", True, max(small // 8, 1), True))
    return settings[:1] if cfg.small else settings


def build(cfg: ReportConfig, device: torch.device, channels_last: bool, preset: str | None = None,
          size: int | None = None) -> TRANet:
    """TRA-Net of the report's preset and size (or those given), seeded, on ``device``."""
    torch.manual_seed(0)
    model = build_model(TRANetConfig(preset=preset or cfg.preset, image_size=size or cfg.size,
                                     channels_last=channels_last))
    return model.to(device)


def inputs(model: TRANet, batch: int, size: int, device: torch.device,
           channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch in the model's input range and random AU targets, on ``device``."""
    x = torch.randn(batch, 3, size, size, device=device) * 60
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, len(model.config.au_ids), device=device) > 0.7).float()
    return x, y


def measure_ceiling(report: Report, train: bool) -> None:
    cfg, device = report.cfg, report.device
    for setting in ceiling_settings(cfg, train):
        what = {"kind": "measurement", **setting.label()}
        if report.out_of_time(reserve=10 if not cfg.small else 1):
            report.skip(what, "deadline")
            continue
        try:
            precision = choose_precision(device, amp=setting.precision != "fp32",
                                         dtype=setting.precision)
            with cudnn_benchmark(setting.cudnn_benchmark):
                model = build(cfg, device, setting.channels_last)
                model.train(train)
                x, y = inputs(model, setting.batch, cfg.size, device, setting.channels_last)
                step = (make_train_step(model, x, y, precision) if train
                        else make_infer_step(model, x, precision))
                reset_peak(device)
                timing = time_steps(step, device, cfg.seconds, cfg.warmup, cfg.min_steps)
            report.write(**what, status="ok", images_per_s=setting.batch / timing["step_s"],
                         **timing, **peak_memory(device))
        except Exception as err:
            report.write(**what, status="error", error=f"{type(err).__name__}: {err}")
        finally:
            model = step = x = y = None  # noqa: F841  (free device memory before the next)
            free_device_memory(device)


def stage_ceiling_train(report: Report) -> None:
    measure_ceiling(report, train=True)


def stage_ceiling_infer(report: Report) -> None:
    measure_ceiling(report, train=False)


#: torch.compile modes tried, in order: "default" fuses kernels; "reduce-overhead" adds CUDA
#: graphs, which removes the per-kernel launch cost that bounds the eager step at batch 64.
COMPILE_MODES = ("default", "reduce-overhead")


def stage_compile(report: Report) -> None:
    cfg = report.cfg
    if cfg.small:
        # Even dynamo's tracing alone (backend "eager") takes ~15 s of CPU for this model.
        report.write(kind="measurement", status="skipped", reason="not run in the test mode")
        return
    for mode in COMPILE_MODES:
        what = {"kind": "measurement", "mode": mode, "batch": cfg.batches[0]}
        if report.out_of_time(reserve=45):
            report.skip(what, "deadline")
            continue
        try:
            report.write(**what, status="ok", **time_compiled(report, mode))
        except Exception as err:
            report.write(**what, status="error", error=f"{type(err).__name__}: {err}"[:1000])
        finally:
            torch._dynamo.reset()
            free_device_memory(report.device)


def time_compiled(report: Report, mode: str) -> dict[str, Any]:
    """First-step (compile) seconds and steady images/s of the compiled training step."""
    cfg, device = report.cfg, report.device
    precision = choose_precision(device, amp=True)
    with cudnn_benchmark(True):
        model = build(cfg, device, channels_last=True)
        x, y = inputs(model, cfg.batches[0], cfg.size, device, True)
        step = make_train_step(torch.compile(model, mode=mode), x, y, precision)
        t0 = time.perf_counter()
        step()
        sync(device)
        compile_s = time.perf_counter() - t0
        timing = time_steps(step, device, cfg.seconds, cfg.warmup, cfg.min_steps)
    return {"precision": precision.name, "first_step_s": compile_s,
            "images_per_s": cfg.batches[0] / timing["step_s"], **timing}

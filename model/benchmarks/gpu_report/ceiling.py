"""The model's ceiling on device-resident data (training step, inference): bf16 / fp32 at both
batches, then one change at a time."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from ...engine.precision import choose_precision
from ...nets.tranet import TRANet, TRANetConfig, build_model
from ..train_bench import make_infer_step, make_train_step
from .config import ReportConfig
from .deadline import Estimate
from .report import Report, cudnn_benchmark, free_device_memory, peak_memory, reset_peak
from .timing import time_steps
from .utilisation import UtilisationSampler


@dataclass(frozen=True)
class StepSetting:
    precision: str        # bf16 / fp16 / fp32
    channels_last: bool
    batch: int
    cudnn_benchmark: bool

    def label(self) -> dict[str, Any]:
        return asdict(self)


def ceiling_settings(cfg: ReportConfig, train: bool) -> list[StepSetting]:
    """bf16 and fp32 (channels_last, cudnn.benchmark on) at both batches first: the questions
    the report answers; then one change each from the default (bf16, batch 64)."""
    small, large = cfg.batches
    core = [StepSetting(p, True, b, True) for p in ("bf16", "fp32") for b in (small, large)]
    if cfg.small:
        return core if train else core[:1] + core[2:3]
    more = [StepSetting("fp16", True, small, True), StepSetting("bf16", False, small, True),
            StepSetting("bf16", True, small, False), StepSetting("fp32", False, small, False)]
    if train:
        # A batch of 8 costs the GPU little: its step time is the host's (launch) overhead floor.
        more.append(StepSetting("bf16", True, max(small // 8, 1), True))
    else:
        more.insert(0, StepSetting("bf16", True, large * 2, True))
    return core + more


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
    cfg, stage = report.cfg, "ceiling_train" if train else "ceiling_infer"
    for setting in ceiling_settings(cfg, train):
        family = f"{stage}-{setting.precision}"  # precisions differ by several x on a CPU
        estimate = report.costs.estimate(family, setting.batch, first_estimate(report, setting))
        result = report.measure({**setting.label()}, estimate,
                                lambda left, s=setting: time_setting(report, s, train, left),
                                family=family, size=setting.batch)
        if result and train and setting.channels_last and setting.cudnn_benchmark:
            report.costs.note_step(setting.batch, result["step_s"])


#: Seconds the first measurement of a ceiling stage is guessed to take (model build, cudnn's
#: search, warm-up, timing) before one has been measured.
PRIOR_S = 20.0


def first_estimate(report: Report, setting: StepSetting) -> float:
    """The first measurement's cost: its warm-up and timed steps at the step time seen so far
    (the end_to_end stage's), plus the timing and a build; else PRIOR_S."""
    cfg = report.cfg
    return report.costs.steps_estimate(setting.batch, cfg.warmup + cfg.min_steps + 1,
                                       cfg.seconds + (0.5 if cfg.small else 5),
                                       PRIOR_S * (0.1 if cfg.small else 1), setting.precision,
                                       report.device.type == "cuda").seconds


def time_setting(report: Report, setting: StepSetting, train: bool, left: float,
                 pilot: bool = False) -> dict[str, Any]:
    """Build the model for ``setting``, time its step within ``left`` seconds (build included);
    ``pilot``: two warm-up steps and one timed step only."""
    cfg, device = report.cfg, report.device
    # the pilot's step after two warm-up steps: the first ones pay the process's first-use costs
    seconds, warmup, min_steps = (0.0, 2, 1) if pilot else (cfg.seconds, cfg.warmup,
                                                            cfg.min_steps)
    t0 = time.monotonic()
    precision = choose_precision(device, amp=setting.precision != "fp32", dtype=setting.precision)
    model = step = x = y = None
    try:
        with cudnn_benchmark(setting.cudnn_benchmark):
            model = build(cfg, device, setting.channels_last)
            model.train(train)
            x, y = inputs(model, setting.batch, cfg.size, device, setting.channels_last)
            step = (make_train_step(model, x, y, precision) if train
                    else make_infer_step(model, x, precision))
            reset_peak(device)
            with UtilisationSampler(device) as util:
                timing = time_steps(step, device, seconds, warmup, min_steps,
                                    budget=left - (time.monotonic() - t0))
        return {"images_per_s": setting.batch / timing["step_s"], **timing, **util.result(),
                **peak_memory(device)}
    finally:
        model = step = x = y = None  # noqa: F841  (free device memory before the next)
        free_device_memory(device)


def stage_pilot(report: Report) -> None:
    """One training step at an eighth of the batch (at least 2), timed first: every later
    stage's cost is estimated from it (scaled to its batch) before that stage has measured
    anything itself."""
    cfg = report.cfg
    # the end_to_end stage's precision (fp32 in the test mode); BatchNorm needs a batch of 2
    setting = StepSetting("fp32" if cfg.small else "bf16", True, max(cfg.batches[0] // 8, 2), True)
    result = report.measure({**setting.label()}, Estimate(PRIOR_S * (0.1 if cfg.small else 1),
                                                          "prior guess (the first step)"),
                            lambda left: time_setting(report, setting, True, left, pilot=True))
    if result:
        report.costs.note_step(setting.batch, result["step_s"])
        report.costs.step_precision = setting.precision


def stage_ceiling_train(report: Report) -> None:
    measure_ceiling(report, train=True)


def stage_ceiling_infer(report: Report) -> None:
    measure_ceiling(report, train=False)

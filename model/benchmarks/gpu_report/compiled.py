"""The ``compile`` stage: ``torch.compile`` of the training step at both batches, last of all
stages because its compile time is the least bounded."""
from __future__ import annotations

import time
from typing import Any

import torch

from ...engine.precision import choose_precision
from ..train_bench import make_train_step
from .ceiling import build, inputs
from .report import Report, cudnn_benchmark, free_device_memory
from .timing import sync, time_steps

#: torch.compile modes tried, in order: "default" fuses kernels; "reduce-overhead" adds CUDA
#: graphs, which removes the per-kernel launch cost that bounds the eager step at batch 64.
COMPILE_MODES = ("default", "reduce-overhead")

#: Seconds the first compilation is guessed to take (106 s on an H200 at rev 16b5f4c).
PRIOR_S = 120.0


def stage_compile(report: Report) -> None:
    cfg = report.cfg
    if cfg.small:
        # Even dynamo's tracing alone (backend "eager") takes ~15 s of CPU for this model.
        report.write(kind="measurement", status="skipped", reason="not run in the test mode")
        return
    for batch in cfg.batches:
        for mode in COMPILE_MODES:
            estimate = report.costs.estimate(f"compile-{mode}", batch, PRIOR_S)
            try:
                report.measure({"mode": mode, "batch": batch}, estimate,
                               lambda left, m=mode, b=batch: time_compiled(report, m, b, left),
                               family=f"compile-{mode}", size=batch)
            finally:
                torch._dynamo.reset()
                free_device_memory(report.device)


def time_compiled(report: Report, mode: str, batch: int, left: float) -> dict[str, Any]:
    """First-step (compile) seconds and steady images/s of the compiled training step (bf16,
    channels_last, cudnn.benchmark on)."""
    cfg, device = report.cfg, report.device
    precision = choose_precision(device, amp=True)
    t0 = time.monotonic()
    with cudnn_benchmark(True):
        model = build(cfg, device, channels_last=True)
        x, y = inputs(model, batch, cfg.size, device, True)
        step = make_train_step(torch.compile(model, mode=mode), x, y, precision)
        first = time.perf_counter()
        step()
        sync(device)
        compile_s = time.perf_counter() - first
        timing = time_steps(step, device, cfg.seconds, cfg.warmup, cfg.min_steps,
                            budget=left - (time.monotonic() - t0))
    return {"precision": precision.name, "first_step_s": compile_s,
            "images_per_s": batch / timing["step_s"], **timing}

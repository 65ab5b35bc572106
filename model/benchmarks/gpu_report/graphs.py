"""The ``graphs`` stage: the training step captured whole in one CUDA graph by the report itself
(``torch.cuda.CUDAGraph``), bf16 and fp32 at both batches: the ceiling of a step freed of the
host's kernel launches, to hold against the eager step, ``torch.compile`` and the trainer's own
``cuda_graphs`` setting (the ``trainer_epoch`` stage)."""
from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Callable

import torch

from ...engine.losses import region_bce_criterion
from ...engine.precision import Precision, choose_precision
from ...nets.tranet import TRANet
from .ceiling import build, inputs
from .report import Report, cudnn_benchmark, free_device_memory, peak_memory, reset_peak
from .timing import time_steps
from .utilisation import UtilisationSampler

#: Seconds the first capture is guessed to take (build, warm-up, capture, timing).
PRIOR_S = 30.0
#: Eager steps before the capture: momentum buffers and cudnn's choices must exist before it.
WARMUP_STEPS = 3


def sgd(params: list[torch.nn.Parameter], device: torch.device) -> torch.optim.SGD:
    """The trainer's SGD (momentum 0.9, weight decay), fused where torch has it: the fused step
    is one kernel and never reads a value back to the host."""
    kwargs: dict[str, Any] = dict(lr=1e-3, momentum=0.9, weight_decay=1e-3)
    try:
        return torch.optim.SGD(params, fused=device.type == "cuda", **kwargs)
    except (TypeError, RuntimeError):  # an older torch without fused SGD on this device
        return torch.optim.SGD(params, **kwargs)


def make_graph_step(model: TRANet, x: torch.Tensor, y: torch.Tensor, precision: Precision,
                    capture: bool) -> Callable[[], Any]:
    """Forward, region BCE, backward and SGD step on static input buffers (a loader would copy
    each batch into ``x`` and ``y``); captured in one CUDA graph when ``capture`` (then the
    returned callable replays it), else the same body run eagerly."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = sgd(params, x.device)
    criterion = region_bce_criterion(model.config.au_ids)

    # autocast's cast cache must not outlive a graph capture
    uncached = replace(precision, cache_enabled=False)

    def body() -> torch.Tensor:
        with uncached.autocast():
            logits = model(x)
        loss = criterion(logits.float(), y)
        loss.backward()
        opt.step()
        return loss

    def eager() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        return body()

    if not capture:
        return eager
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            eager()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)  # the captured backward then writes the gradients afresh
    with torch.cuda.graph(graph):
        body()
    return graph.replay


def stage_graphs(report: Report) -> None:
    cfg = report.cfg
    settings = [(p, b) for p in ("bf16", "fp32") for b in cfg.batches]
    for precision_name, batch in settings:
        what = {"precision": precision_name, "batch": batch, "channels_last": True}
        if report.device.type != "cuda":
            report.skip(what, f"CUDA graphs need a CUDA device (this run: {report.device.type})")
            continue
        estimate = report.costs.estimate("graphs", batch, PRIOR_S)
        report.measure(what, estimate,
                       lambda left, p=precision_name, b=batch: time_graph(report, p, b, left),
                       family="graphs", size=batch)


def time_graph(report: Report, precision_name: str, batch: int, left: float) -> dict[str, Any]:
    cfg, device = report.cfg, report.device
    t0 = time.monotonic()
    precision = choose_precision(device, amp=precision_name != "fp32", dtype=precision_name)
    model = step = x = y = None
    try:
        with cudnn_benchmark(True):
            model = build(cfg, device, channels_last=True).train()
            x, y = inputs(model, batch, cfg.size, device, channels_last=True)
            step = make_graph_step(model, x, y, precision, capture=True)
            capture_s = time.monotonic() - t0
            reset_peak(device)
            with UtilisationSampler(device) as util:
                timing = time_steps(step, device, cfg.seconds, cfg.warmup, cfg.min_steps,
                                    budget=left - (time.monotonic() - t0))
        return {"images_per_s": batch / timing["step_s"], "build_capture_s": capture_s,
                **timing, **util.result(), **peak_memory(device)}
    finally:
        model = step = x = y = None  # noqa: F841  (free the graph's memory pool before the next)
        free_device_memory(device)

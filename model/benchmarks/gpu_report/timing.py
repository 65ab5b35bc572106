"""Timing a repeated step: wall time a step, the host's time issuing it (perf_counter around the
call) and the GPU's time for it (CUDA events around it), inside a time budget."""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepClock:
    """Host seconds of each call and, on CUDA, an event pair around it (read after the sync)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host: list[float] = []
        self.events: list[tuple[Any, Any]] = []

    def call(self, step: Callable[[], Any]) -> float:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        step()
        host = time.perf_counter() - t0
        if self.cuda:
            end.record()
            self.events.append((start, end))
        self.host.append(host)
        return host

    def gpu_ms(self) -> float | None:
        """Mean GPU milliseconds between the events (after a sync); None off CUDA."""
        if not self.events:
            return None
        return statistics.fmean(start.elapsed_time(end) for start, end in self.events)


def time_steps(step: Callable[[], Any], device: torch.device, seconds: float, warmup: int = 2,
               min_steps: int = 3, max_steps: int = 200,
               budget: float | None = None) -> dict[str, Any]:
    """Throughput timing: ``warmup`` untimed calls, then calls until ``seconds`` have passed
    (at least ``min_steps``), one synchronisation at each end (and every 5 steps, to bound the
    queue) so queued work overlaps as in training.

    ``budget`` (seconds for the whole call, warm-up included): no further call is started once
    it would end past the budget at the pace so far, so a slow step costs at most one step more
    than its budget; at least one timed call is always made. Returns seconds a step (wall),
    ``host_ms`` (median time the host spent issuing a step; on a CPU that is the step itself),
    ``gpu_ms`` (mean time on the GPU's clock from before a step's first kernel to after its last,
    gaps where the GPU waited for the host included; None off CUDA) and the steps made."""
    begin = time.perf_counter()

    def fits(last: float) -> bool:
        return budget is None or time.perf_counter() - begin + last <= budget

    last, done_warmup = 0.0, 0
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        sync(device)
        last, done_warmup = time.perf_counter() - t0, done_warmup + 1
        if not fits(last):
            break
    warm = time.perf_counter() - begin
    clock, n, t0 = _StepClock(device), 0, time.perf_counter()
    while n == 0 or ((n < min_steps or time.perf_counter() - t0 < seconds) and n < max_steps
                     and fits((time.perf_counter() - t0) / n)):
        clock.call(step)
        n += 1
        if n % 5 == 0:
            sync(device)
    sync(device)
    total = time.perf_counter() - t0
    cut = n < min_steps or done_warmup < warmup
    return {"step_s": total / n, "steps": n, "warmup_steps": done_warmup, "warmup_s": warm,
            "host_ms": 1000 * statistics.median(clock.host), "gpu_ms": clock.gpu_ms(),
            "cut_by_deadline": cut}

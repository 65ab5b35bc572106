"""The report's record: JSON lines flushed per record, the deadline, one stage at a time, and the
timing helpers every stage uses."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .config import ReportConfig
from .summary import write_summary

log = logging.getLogger("model.gpu_report")


class Report:
    """Appends one JSON object a line to ``gpu_report.jsonl`` (flushed and fsynced per record)."""

    def __init__(self, cfg: ReportConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "gpu_report.jsonl"
        self.run = uuid.uuid4().hex[:8]
        self.start = time.monotonic()
        self.stage = ""
        self._file = self.path.open("a", encoding="utf-8")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        return self.cfg.deadline - self.elapsed()

    def write(self, **record: Any) -> None:
        line = {"run": self.run, "stage": self.stage, "t": round(self.elapsed(), 2), **record}
        self._file.write(json.dumps(line, default=_jsonable) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def run_stage(self, name: str, fn: Callable[["Report"], None], min_seconds: float) -> None:
        """Run one stage; write its closing line: ok, error (with the traceback) or skipped."""
        self.stage = name
        left = self.remaining()
        if left < min_seconds:
            self.write(kind="stage", status="skipped",
                       reason=f"{left:.0f} s left before the deadline, the stage needs "
                              f"~{min_seconds:.0f} s")
            return
        t0 = time.monotonic()
        try:
            fn(self)
        except Exception as err:  # one stage's failure must not cost the others
            self.write(kind="stage", status="error", error=f"{type(err).__name__}: {err}",
                       traceback=traceback.format_exc()[-4000:],
                       seconds=time.monotonic() - t0)
            log.warning("stage %s failed: %s", name, err)
        else:
            self.write(kind="stage", status="ok", seconds=time.monotonic() - t0)
        finally:
            free_device_memory(self.device)
            with contextlib.suppress(Exception):
                write_summary(self.path, self.dir / "gpu_report.md", self.run)

    def skip(self, what: dict[str, Any], reason: str) -> None:
        self.write(**{"kind": "measurement", **what, "status": "skipped", "reason": reason})

    def out_of_time(self, reserve: float) -> bool:
        return self.remaining() < reserve


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], device: torch.device, seconds: float, warmup: int = 2,
               min_steps: int = 3, max_steps: int = 200) -> dict[str, float]:
    """Throughput timing: ``warmup`` untimed calls, then calls until ``seconds`` have passed
    (at least ``min_steps``); one synchronisation at each end, so queued work overlaps as in
    training. Returns seconds per step and the steps timed."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    warm = time.perf_counter() - t0
    n, t0 = 0, time.perf_counter()
    while n < min_steps or (time.perf_counter() - t0 < seconds and n < max_steps):
        step()
        n += 1
        if n % 5 == 0:
            sync(device)  # bound the queue so the clock check means something
    sync(device)
    total = time.perf_counter() - t0
    return {"step_s": total / n, "steps": n, "warmup_s": warm}


@contextlib.contextmanager
def cudnn_benchmark(on: bool) -> Iterator[None]:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = previous


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

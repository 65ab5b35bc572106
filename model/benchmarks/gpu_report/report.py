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
from .deadline import CostModel, Estimate
from .summary import write_summary

log = logging.getLogger("model.gpu_report")

#: Share of --deadline kept back from the measurements; with the 10 % the run may overrun by,
#: it absorbs a step that started just before the deadline and an estimate that was low.
RESERVE = 0.05


class Report:
    """Appends one JSON object a line to ``gpu_report.jsonl`` (flushed and fsynced per record)."""

    def __init__(self, cfg: ReportConfig, device: torch.device,
                 start: float | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.dir = Path(cfg.out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "gpu_report.jsonl"
        self.run = uuid.uuid4().hex[:8]
        self.start = time.monotonic() if start is None else start  # the deadline counts from it
        self.stage = ""
        self.costs = CostModel()
        self._file = self.path.open("a", encoding="utf-8")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def remaining(self) -> float:
        """Seconds left for measurements: the deadline less a reserve (RESERVE of it) kept for
        what cannot be cut short: a step that started before the deadline, closing the report."""
        return self.cfg.deadline * (1 - RESERVE) - self.elapsed()

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
                       reason=f"deadline: {max(left, 0):.1f} s left, the stage needs "
                              f"~{min_seconds:.1f} s", estimate_s=min_seconds,
                       left_s=round(left, 2), estimate_basis="the stage's least time")
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

    def measure(self, what: dict[str, Any], estimate: Estimate,
                fn: Callable[[float], dict[str, Any]], family: str | None = None,
                size: float = 1.0) -> dict[str, Any] | None:
        """One measurement, started only when ``estimate`` fits in the time left (else a skip
        line with the estimate and the time left). ``fn`` gets the seconds left (its budget) and
        returns the figures; the line adds its whole cost (``cost_s``) and the estimate, and
        ``family``/``size`` let the next measurement of the family be estimated from this one."""
        left = self.remaining()
        if estimate.seconds > left:
            self.write(**{"kind": "measurement", **what, "status": "skipped",
                          "reason": f"deadline: estimated {estimate.seconds:.1f} s, "
                                    f"{max(left, 0):.1f} s left", "left_s": round(left, 2),
                          **estimate.record()})
            return None
        t0 = time.monotonic()
        try:
            result = fn(left)
        except Exception as err:  # one setting's failure must not cost the next
            self.write(**{"kind": "measurement", **what, "status": "error",
                          "error": f"{type(err).__name__}: {err}"[:1000],
                          "cost_s": time.monotonic() - t0})
            return None
        finally:
            if family is not None:
                self.costs.record(family, size, time.monotonic() - t0)
        self.write(**{"kind": "measurement", **what, "status": "ok", **result,
                      "cost_s": time.monotonic() - t0, **estimate.record()})
        return result


def process_start() -> float:
    """The monotonic time this process started (Linux: from /proc, so the interpreter's start
    and torch's import count against the deadline too), else now."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = (time.clock_gettime(time.CLOCK_BOOTTIME)
               - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
        if 0 <= age < 3600:
            return time.monotonic() - age
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    return time.monotonic()


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

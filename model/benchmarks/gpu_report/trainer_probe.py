"""What the ``end_to_end`` stage sees of a run of ``trainer.train`` without changing it: the
start of each epoch, the seconds its steps waited for the loader, the end of the epochs; and
the run stopped (by the trainer's own stop request, as a Ctrl-C) before the report's deadline."""
from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

from ...engine import trainer
from ...engine.stopping import StopRequest


class TrainerProbe:
    """``deadline_at``: the perf_counter time the run must be done by. A pass over the loader
    ends (and the trainer is asked to stop, saving last.pt) when the epoch's end (evaluation,
    checkpoints: the previous epoch's, or at first as long as the epoch so far) would end past
    it; the run's end (``finish_run``: the test pass, results) is skipped when its estimate
    would."""

    def __init__(self, deadline_at: float) -> None:
        self.deadline_at, self.stop = deadline_at, StopRequest()
        self.starts: list[float] = []    # each epoch's first batch request
        self.ends: list[float] = []      # each pass's end (its batches done)
        self.wait_s: list[float] = []    # seconds inside next() per pass
        self.counts: list[int] = []      # batches handed out per pass
        self.finish_at: float | None = None
        self.finish_skipped = False

    def batches(self, loader: Any) -> Iterator[Any]:
        self.starts.append(time.perf_counter())
        self.wait_s.append(0.0)
        self.counts.append(0)
        source = iter(loader)
        while True:
            if time.perf_counter() + self._epoch_end_s() > self.deadline_at:
                self.stop.request("deadline")
                self.ends.append(time.perf_counter())
                return
            t0 = time.perf_counter()
            try:
                batch = next(source)
            except StopIteration:
                self.ends.append(time.perf_counter())
                return
            finally:
                self.wait_s[-1] += time.perf_counter() - t0
            self.counts[-1] += 1
            yield batch

    def step_s(self) -> float | None:
        """Seconds a training step took in the last pass (data wait included), if any."""
        if not self.counts or not self.counts[-1]:
            return None
        end = self.ends[-1] if len(self.ends) == len(self.starts) else time.perf_counter()
        return (end - self.starts[-1]) / self.counts[-1]

    def _epoch_end_s(self) -> float:
        """The last epoch's evaluation and checkpoints, or (in the first) the epoch so far."""
        n = len(self.starts)
        if n >= 2 and len(self.ends) >= n - 1:
            return self.starts[-1] - self.ends[n - 2]
        return time.perf_counter() - self.starts[-1]

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Within the block, ``trainer.train`` trains from this probe's view of its loader and
        reports when its epochs end; ``train`` looks both steps up in its module, the seam its
        tests patch too."""
        load_data, finish_run = trainer.load_data, trainer.finish_run

        def probed_load(*args: Any, **kwargs: Any) -> Any:
            data = load_data(*args, **kwargs)
            data.train_loader = ProbedLoader(data.train_loader, self)
            return data

        def probed_finish(run: Any, status: str) -> Any:
            self.finish_at = time.perf_counter()
            if self.finish_at + 2 * self._epoch_end_s() > self.deadline_at:
                self.finish_skipped = True  # the test pass would overrun: the epochs are timed
                return {"status": status}
            return finish_run(run, status)

        trainer.load_data, trainer.finish_run = probed_load, probed_finish
        try:
            yield
        finally:
            trainer.load_data, trainer.finish_run = load_data, finish_run


class ProbedLoader:
    """The trainer's DataLoader, unchanged, iterated through a TrainerProbe."""

    def __init__(self, loader: Any, probe: TrainerProbe) -> None:
        self.loader, self.probe = loader, probe

    def __getattr__(self, name: str) -> Any:  # batch_size, dataset, sampler: the loader's own
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Any]:
        return self.probe.batches(self.loader)

"""Training progress a person can follow: a bar that moves every batch, a run-level ETA and one
log line an epoch.

The bar is moved from the loop's own batch counter, never from a device value, so it costs no
host-device synchronisation; the loss it shows is refreshed only at the loop's existing sync
points. The ETA is measured wall time per batch trained in this process (evaluation included
once an epoch has ended) times the batches left until the epoch limit (early stopping may end
the run sooner).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

try:
    from tqdm import tqdm
except ImportError:  # a bare GPU image has no tqdm: no bars, the epoch log line still shows pace
    tqdm = None


class _NoBar:
    """What the loops need of a tqdm bar, doing nothing (tqdm not installed)."""

    def __init__(self, iterable: Iterable | None = None, **_: Any) -> None:
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(iterable: Iterable | None = None, **kwargs: Any) -> Any:
    """A tqdm bar, or one that shows nothing when tqdm is not installed."""
    make = tqdm or _NoBar
    return make(**kwargs) if iterable is None else make(iterable, **kwargs)


def fmt_duration(seconds: float | None) -> str:
    """``45s``, ``12m 05s``, ``3h 02m``; ``?`` when not known yet."""
    if seconds is None:
        return "?"
    seconds = int(round(max(seconds, 0.0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


class RunClock:
    """Where the run is (epoch, batch) and how long the rest will take at the pace so far."""

    def __init__(self, epochs: int, batches_per_epoch: int, done_epochs: int = 0,
                 done_batches: int = 0, clock: Callable[[], float] = time.perf_counter) -> None:
        self.epochs, self.per_epoch, self._clock = epochs, max(batches_per_epoch, 1), clock
        self.start = clock()
        self.first = self.position = done_epochs * self.per_epoch + done_batches

    def at(self, epoch: int, batch: int) -> None:
        """The loop has finished ``batch`` of ``epoch`` (both counted from 1)."""
        self.position = (epoch - 1) * self.per_epoch + batch

    @property
    def elapsed(self) -> float:
        return self._clock() - self.start

    def eta(self) -> float | None:
        """Seconds until the last epoch ends; None before the first batch of this process."""
        done = self.position - self.first
        if done <= 0:
            return None
        remaining = max(self.epochs * self.per_epoch - self.position, 0)
        return self.elapsed / done * remaining


class EpochBar:
    """The epoch's tqdm bar: ``step`` every batch (host counter only), ``synced`` at sync points."""

    def __init__(self, epoch: int, total: int, initial: int, clock: RunClock,
                 disable: bool | None) -> None:
        self.epoch, self.clock, self.shown, self.loss = epoch, clock, initial, None
        self.bar = progress_bar(total=total, initial=initial, desc=f"epoch {epoch}/{clock.epochs}",
                        leave=False, disable=disable, dynamic_ncols=True)

    def step(self, batch: int) -> None:
        self.clock.at(self.epoch, batch)
        self._postfix(refresh=False)  # drawn by the update's redraw, at tqdm's own pace
        self.bar.update(batch - self.shown)
        self.shown = batch

    def synced(self, mean_loss: float) -> None:
        self.loss = mean_loss
        self._postfix(refresh=True)

    def _postfix(self, refresh: bool) -> None:
        shown = {"loss": f"{self.loss:.4f}"} if self.loss is not None else {}
        shown["run ETA"] = fmt_duration(self.clock.eta())
        self.bar.set_postfix(shown, refresh=refresh)

    def close(self) -> None:
        self.bar.close()


def epoch_line(epoch: int, clock: RunClock, train_loss: float, select_on: str,
               shown: list[str], best: str, improved: bool, seconds: float) -> str:
    """The per-epoch log line: the one progress a log file (non-tty, --quiet) gets. Its ETA
    assumes every epoch up to the limit runs (early stopping may end the run sooner)."""
    clock.at(epoch + 1, 0)  # the epoch and its evaluation are done
    return (f"epoch {epoch}/{clock.epochs}: loss {train_loss:.4f} | {select_on} "
            f"{' '.join(shown)} | best {best}{' *' if improved else ''} | "
            f"{fmt_duration(seconds)}, elapsed {fmt_duration(clock.elapsed)}, "
            f"ETA {fmt_duration(clock.eta())}")


def metric_words(f1: float | None, icc: float | None) -> list[str]:
    """The selection metrics of the epoch line: F1 in percent (as the tables), ICC as is."""
    words = [f"F1 {100 * f1:.2f}%"] if f1 is not None else []
    return words + ([f"ICC {icc:.3f}"] if icc is not None else [])


def best_words(task: str, score: float, epoch: int) -> str:
    """The best selection score so far, named, in the unit of ``metric_words``."""
    if task == "occurrence":
        return f"F1 {100 * score:.2f}% (epoch {epoch})"
    name = "ICC" if task == "intensity" else "(F1 + ICC)/2"
    return f"{name} {score:.3f} (epoch {epoch})"

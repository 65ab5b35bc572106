"""Why a training run stops before its last epoch: a signal (or a caller's request), caught at
the next batch boundary so that last.pt can be saved, or a loss that is no longer finite."""
from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

log = logging.getLogger("model.train")


class StopRequest:
    """Set by SIGINT/SIGTERM (or a callback); the loop stops at the next batch boundary.

    A second signal raises KeyboardInterrupt at once, for a stuck data loader.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def request(self, reason: str) -> None:
        self.requested, self.reason = True, reason

    def _handler(self, signum, _frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: keep serving until the trainer stops it
        if self.requested:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
        log.warning("%s received: finishing the current batch, saving last.pt and exiting "
                    "(send again to abort at once)", signal.Signals(signum).name)

    def install(self) -> None:
        self._pid = os.getpid()
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def threading_is_main() -> bool:
    # Python only lets the main thread install signal handlers.
    return threading.current_thread() is threading.main_thread()


class NonFiniteLossError(FloatingPointError):
    pass

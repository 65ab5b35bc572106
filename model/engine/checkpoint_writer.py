"""Checkpoints written in the background: the state is copied to host memory at once (cheap
next to a step), and one worker thread writes the files with ``save_checkpoint``'s atomic
temp file and rename, so the next training step never waits for a disk.

At most one write is in flight: a new one first waits for the last (so files never pile up in
memory and last.pt is never older than the write before it). ``wait`` joins the write and
raises its error (a full disk is an OSError naming the file, as a synchronous write's); the
epoch loop calls it before the run ends, on a stop and on an error, so a stopped run leaves a
whole last.pt.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from .checkpoint import save_checkpoint

log = logging.getLogger("model.train")

THREAD_NAME = "checkpoint-writer"


def host_copy(value: Any, memo: dict[int, torch.Tensor] | None = None) -> Any:
    """``value`` with every tensor copied to host memory and every dict/list/tuple rebuilt, so
    that training may go on changing the originals (weights, momentum, the history list).
    ``memo``: tensors already copied (best.pt and last.pt share the weights: copied once)."""
    memo = {} if memo is None else memo
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.detach().to("cpu", copy=True)
        return memo[id(value)]
    if isinstance(value, dict):
        return {k: host_copy(v, memo) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [host_copy(v, memo) for v in value]
        return items if isinstance(value, list) else tuple(items)
    return value


class CheckpointWriter:
    """One background writer of checkpoint files (see the module's docstring)."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, files: Sequence[tuple[Path, dict[str, Any]]]) -> None:
        """Write each (path, payload) in order, in the background, after the write before it.

        The payloads are copied to the host here; the caller may change them after this
        returns. Raises the error of the previous write, if it failed."""
        self.wait()
        memo: dict[int, torch.Tensor] = {}
        copies = [(Path(path), host_copy(payload, memo)) for path, payload in files]
        # Not a daemon: an interpreter that exits (a second Ctrl-C) still finishes the file.
        self._thread = threading.Thread(target=self._write, args=(copies,), name=THREAD_NAME)
        self._thread.start()

    def _write(self, files: list[tuple[Path, dict[str, Any]]]) -> None:
        try:
            for path, payload in files:
                save_checkpoint(path, payload)
        except BaseException as err:  # handed to the training thread by wait()
            self._error = err

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Join the write in flight (if any); raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self, raising: bool = True) -> None:
        """Join the last write; ``raising=False`` (the run already fails): log its error."""
        try:
            self.wait()
        except Exception as err:
            if raising:
                raise
            log.error("the last checkpoint could not be written: %s", err)

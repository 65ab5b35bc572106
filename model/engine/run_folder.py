"""A run/output folder's life: its owner marker, its lock, and ``--fresh`` replacement.

A tool deletes only what it made: a folder it creates (or finds empty) gets the marker
``OUT/.tranet-run.json`` (tool, version); ``--fresh`` replaces only a folder that carries it (or,
for runs made before markers, holds nothing but the tool's own files). Replacement is atomic: the
new run is built beside (``.OUT.new-PID``) and swapped in by :meth:`RunFolder.commit` once it has
started cleanly; until then the old run stays, and a failed start leaves it untouched.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterable

from pipeline.cli import CommandError, check_out_dir, pid_alive
from pipeline.folder_lock import FolderLock

log = logging.getLogger(__name__)

MARKER = ".tranet-run.json"
#: What a model.train run folder holds (a run made before markers is recognised by these).
TRAIN_RUN_FILES = ("config.json", "last.pt", "best.pt", "metrics.csv", "metrics.json",
                   "results.json", "results.md", "loss.png", "mean_f1.png", "per_au_f1.png")
#: Files any tool may leave beside its own (lock, atomic-write temporaries).
_HOUSEKEEPING = (FolderLock.NAME, MARKER)


def _version() -> str:
    from pipeline import __version__

    return __version__


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_marker(folder: Path, tool: str, **extra: Any) -> None:
    from pipeline.cli import atomic_write_text

    atomic_write_text(folder / MARKER, json.dumps({"tool": tool, "version": _version(), **extra}))


def owned_by(folder: Path, tools: Iterable[str], legacy_files: Iterable[str] = ()) -> bool:
    """Whether ``folder`` was made by one of ``tools``: its marker names one, or (a run made
    before markers) every entry is one of ``legacy_files`` or housekeeping."""
    marker = read_marker(folder)
    if marker is not None:
        return marker.get("tool") in set(tools)
    known = set(legacy_files) | set(_HOUSEKEEPING)
    entries = list(folder.iterdir())
    return bool(legacy_files) and bool(entries) and all(
        p.name in known or ".tmp-" in p.name for p in entries)


def is_empty(folder: Path) -> bool:
    return not any(p for p in folder.iterdir() if p.name != FolderLock.NAME)


class RunFolder:
    """``OUT`` for one run of ``tool``: locked while the run writes; with ``fresh``, the new run
    is written to :attr:`path` (beside ``OUT``) until :meth:`commit` swaps it in.

    ``tools``: the tools whose folders ``fresh`` may replace; ``legacy_files``: what a folder
    made before markers holds (only such a folder is replaced without a marker)."""

    def __init__(self, out: Path | str, tool: str, *, fresh: bool = False, option: str = "--out",
                 tools: Iterable[str] = (), legacy_files: Iterable[str] = ()) -> None:
        self.out, self.tool, self.fresh, self.option = Path(out), tool, fresh, option
        self.tools = {tool, *tools}
        self.legacy_files = tuple(legacy_files)
        self.path = self.out
        self.lock: FolderLock | None = None

    def check(self) -> "RunFolder":
        """Refuse (CommandError naming the folder) a ``fresh`` replacement of a folder this tool
        did not make. Removes nothing."""
        if self.out.exists() and not self.out.is_dir():
            raise CommandError(f"{self.option} {self.out}: exists and is a file, not a folder")
        if (self.fresh and self.out.is_dir() and not is_empty(self.out)
                and not owned_by(self.out, self.tools, self.legacy_files)):
            raise CommandError(
                f"{self.option} {self.out}: --fresh replaces only a folder this tool made (it "
                f"carries {MARKER}); this one does not, so nothing was removed. Choose another "
                f"{self.option}, or empty the folder yourself")
        return self

    def open(self) -> Path:
        """Check, lock ``OUT`` (refusing a live writer) and prepare where the run writes now."""
        self.check()
        created = not self.out.exists() or is_empty(self.out)
        check_out_dir(self.out, self.option)
        self.lock = FolderLock(self.out).acquire()
        try:
            _remove_dead_stages(self.out)
            if self.fresh and not created:
                self.path = self._stage()
            elif created:
                write_marker(self.out, self.tool)  # a folder we made (or found empty) is ours
        except BaseException:
            self.close()
            raise
        return self.path

    def _stage(self) -> Path:
        """``.OUT.new-PID`` beside OUT, carrying the marker and this run's lock."""
        stage = self.out.with_name(f".{self.out.name}.new-{os.getpid()}")
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir()
        staged = FolderLock(stage)
        staged.token = self.lock.token  # after the swap, OUT/.lock is this run's
        staged.acquire()
        write_marker(stage, self.tool)
        return stage

    def commit(self) -> Path:
        """Swap the new run in (once it has started cleanly) and delete the old one."""
        if self.path == self.out:
            return self.out
        stage, self.path = self.path, self.out
        if not _exchange(stage, self.out):
            aside = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.rename(self.out, aside)
            os.rename(stage, self.out)
            stage = aside
        shutil.rmtree(stage, ignore_errors=True)  # the old run, now beside
        log.info("%s: the earlier run was replaced (--fresh)", self.out)
        return self.out

    def close(self) -> None:
        """Release the lock; a new run that never committed is removed, the old one stays."""
        if self.path != self.out:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = self.out
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __enter__(self) -> "RunFolder":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): ``OUT`` never goes missing
    for another process to grab. False where the call is unavailable."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    ok = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return ok


def _remove_dead_stages(out: Path) -> None:
    """Half-built new runs (and swapped-out old ones) of killed ``--fresh`` runs."""
    stages = [*out.parent.glob(f".{out.name}.new-*"), *out.parent.glob(f".{out.name}.old-*")]
    for stage in stages:
        pid = stage.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)) and read_marker(stage) is not None:
            shutil.rmtree(stage, ignore_errors=True)

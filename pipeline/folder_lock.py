"""``FOLDER/.lock``: one writer per output folder, for every command that writes one.

The lock file records its owner as PID + the process's start time (``/proc/PID/stat``) + command
line + since when. A lock whose process is gone, or whose PID now belongs to another process (a
reused PID: same number, other start time), is stale: it is named in the log and taken over. A
live owner makes the command refuse with one line naming it (pid, command, since when).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli import FailureError, pid_alive

log = logging.getLogger(__name__)


def process_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` in clock ticks since boot (field 22 of
    ``/proc/PID/stat``), None where /proc has no such process (or no /proc)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count from its last ')'.
    fields = text.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _command_line() -> str:
    return " ".join(["python", *sys.argv]) if sys.argv and sys.argv[0] else "python"


def read_owner(path: Path) -> dict[str, Any] | None:
    """The owner record of the lock file at ``path``; a lock of an older version holds only
    ``PID TIME``. None when unreadable."""
    try:
        text = path.read_text()
    except OSError:
        return None
    try:
        owner = json.loads(text)
        if isinstance(owner, dict) and isinstance(owner.get("pid"), int):
            return owner
    except ValueError:
        pass
    first = text.split()[:1]
    return {"pid": int(first[0]), "token": text} if first and first[0].isdigit() else None


def owner_state(owner: dict[str, Any] | None) -> str:
    """``live``, ``gone`` (no such process) or ``reused`` (the PID is another process now)."""
    if owner is None or owner["pid"] <= 0 or not pid_alive(owner["pid"]):
        return "gone"
    recorded, now = owner.get("start"), process_start_time(owner["pid"])
    if recorded is not None and now is not None and str(recorded) != now:
        return "reused"
    return "live"


def describe_owner(owner: dict[str, Any]) -> str:
    """``pid N, command '...', since ...`` (a long command line shortened)."""
    since = owner.get("since")
    words = [f"pid {owner['pid']}"]
    command = str(owner.get("command") or "")
    if command:
        words.append(f"command {command if len(command) <= 200 else command[:197] + '...'!r}")
    if since:
        words.append(f"since {since}")
    return ", ".join(words)


class FolderLock:
    """The lock of one folder (or, :meth:`for_file`, of one output file). Workers compare
    :meth:`held` before committing, so an orphaned worker of a killed run never overwrites the
    next run's files."""

    NAME = ".lock"

    def __init__(self, folder: Path | str, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else Path(folder) / self.NAME
        self.folder = Path(folder)
        self.token = f"{os.getpid()} {time.time():.6f}"

    @classmethod
    def for_file(cls, target: Path | str) -> "FolderLock":
        """The lock of one output file: ``.NAME.lock`` beside it."""
        target = Path(target)
        return cls(target, target.with_name(f".{target.name}.lock"))

    def record(self) -> dict[str, Any]:
        pid = os.getpid()
        return {"pid": pid, "start": process_start_time(pid), "command": _command_line(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": self.token}

    def acquire(self) -> "FolderLock":
        for _ in range(3):
            try:
                self._create()
            except FileExistsError:
                self._refuse_or_clear()
                continue
            return self
        raise FailureError(f"{self.path}: cannot take the lock (another run keeps taking it)")

    def _create(self) -> None:
        """Create the lock file with its content in one step (a hard link of a written temporary
        file): another process never reads an empty lock and takes it for a stale one."""
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.record()))
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: exclusive create, then write
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write(tmp.read_text())
        finally:
            tmp.unlink(missing_ok=True)

    def _refuse_or_clear(self) -> None:
        owner = read_owner(self.path)
        state = owner_state(owner)
        if state == "live" and owner["pid"] != os.getpid():
            raise FailureError(f"{self.folder}: another run is writing here "
                               f"({describe_owner(owner)}); wait for it or stop it "
                               f"(lock {self.path})")
        if owner is not None:
            why = {"gone": "its process is gone", "reused": "its pid now belongs to another "
                   "process started later", "live": "left by this process"}[state]
            log.warning("%s: stale lock (%s; %s), taking it over", self.path,
                        describe_owner(owner), why)
        self._clear(owner)

    def _clear(self, stale: dict[str, Any] | None) -> None:
        """Remove the stale lock ``stale``; if another run replaced it meanwhile (it cleared the
        same stale lock first), the lock moved aside is that run's and is put back."""
        grave = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return
        moved = read_owner(grave)
        if stale is not None and moved is not None and moved.get("token") != stale.get("token"):
            try:
                os.link(grave, self.path)
            except OSError:
                pass
        grave.unlink(missing_ok=True)

    def held(self) -> bool:
        """Whether the lock still belongs to this lock's run (False once a new run took it)."""
        return lock_holds(self.path, self.token)

    def release(self) -> None:
        if self.held():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holds(path: Path | str, token: str) -> bool:
    """Whether the lock file at ``path`` still carries ``token`` (callable in worker processes)."""
    owner = read_owner(Path(path))
    return owner is not None and owner.get("token") == token

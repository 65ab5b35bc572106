"""What every command (pipeline.* and model.*) shares: the error types a user can cause, the one
top-level handler that turns them into a one-line message and an exit code, option ranges,
atomic writes and the clean-up of temporary files left by killed runs (the run-folder lock is
:mod:`pipeline.folder_lock`).

Exit codes: 0 done, 1 failed (the machine's state: full disk, a subject that failed), 2 bad input
or usage (an option out of range, a file that is not what it should be), 130 interrupted.
Unexpected errors (bugs) are not caught: their traceback is what a developer needs.
"""
from __future__ import annotations

import argparse
import errno
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

log = logging.getLogger(__name__)
#: The exit code of the last command run through handle_errors (for pipeline.shards' exit hook).
LAST_EXIT_CODE = EXIT_OK


class CommandError(Exception):
    """A problem the user can fix (bad file, bad option, wrong folder); the message names it."""

    exit_code = EXIT_USAGE


class FailureError(CommandError):
    """The command could not finish for a reason outside the input (disk full, lock held)."""

    exit_code = EXIT_ERROR


#: OSError numbers that describe the machine's or the user's paths, not a bug: errno -> (what, exit)
OS_ERRORS = {
    errno.ENOSPC: ("disk full", EXIT_ERROR),
    errno.EDQUOT: ("disk quota exceeded", EXIT_ERROR),
    errno.EACCES: ("permission denied", EXIT_USAGE),
    errno.EPERM: ("operation not permitted", EXIT_USAGE),
    errno.EROFS: ("read-only file system", EXIT_USAGE),
    errno.ENOTDIR: ("a path component is a file, not a folder", EXIT_USAGE),
    errno.EEXIST: ("exists already", EXIT_USAGE),
    errno.EISDIR: ("is a folder, not a file", EXIT_USAGE),
    errno.ENOENT: ("no such file or folder", EXIT_USAGE),
    errno.ENAMETOOLONG: ("file name too long", EXIT_USAGE),
}
#: Some libraries (h5py, OpenCV) lose the errno but keep the C library's text.
_TEXT_ERRNO = {"no space left on device": errno.ENOSPC, "disk quota exceeded": errno.EDQUOT,
               "read-only file system": errno.EROFS, "permission denied": errno.EACCES}


def os_error_code(err: OSError) -> int | None:
    """The errno of ``err``, recovered from its text when a library dropped it."""
    if err.errno in OS_ERRORS:
        return err.errno
    text = str(err).lower()
    return next((code for words, code in _TEXT_ERRNO.items() if words in text), None)


def describe_os_error(err: OSError) -> str | None:
    """One line for an OSError of :data:`OS_ERRORS` naming the file (None for other errors)."""
    code = os_error_code(err)
    if code is None:
        return None
    names = [str(n) for n in (err.filename, err.filename2) if n]
    where = " -> ".join(names) if names else (err.strerror or str(err))
    return f"{OS_ERRORS[code][0]}: {where}"


def handle_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a command's ``main(argv)``: known errors become ``prog: error: ...`` on stderr
    and an exit code; Ctrl-C becomes exit 130 with one line; anything else propagates."""

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: Sequence[str] | None = None) -> int:
            global LAST_EXIT_CODE
            code = _run(main, argv, prog)
            LAST_EXIT_CODE = code if isinstance(code, int) else EXIT_OK
            return code

        return wrapper

    return decorate


def _run(main: Callable[..., int], argv: Sequence[str] | None, prog: str) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:
        _say(prog, "interrupted (rerun the same command to continue where it stopped)")
        return EXIT_INTERRUPTED
    except CommandError as err:
        _say(prog, _one_line(str(err)))
        return err.exit_code
    except OSError as err:
        text = describe_os_error(err)
        if text is None:
            raise
        _say(prog, text)
        return OS_ERRORS[os_error_code(err)][1]


def _one_line(message: str) -> str:
    """A DataLoader worker re-raises an error with the worker's traceback in its message; the
    error's own line is the last one."""
    if "Original Traceback" in message:
        message = message.strip().splitlines()[-1].split(": ", 1)[-1]
    return message


def _say(prog: str, message: str) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- option ranges


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``low..high`` (``high`` None: no upper bound)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def positive_float(text: str) -> float:
    """An argparse ``type``: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def threshold_arg(text: str) -> int:
    """An argparse ``type``: a FACS letter A-E or an intensity 1-5."""
    from .datasets.disfa.facts import FACS_LETTERS

    word = text.strip().upper()
    if word in FACS_LETTERS:
        return FACS_LETTERS[word]
    if word.isdigit() and 1 <= int(word) <= 5:
        return int(word)
    raise argparse.ArgumentTypeError(f"must be a FACS letter A-E or an intensity 1-5, got {text!r}")


def fraction_pair(text: str) -> tuple[float, float]:
    """An argparse ``type``: ``x,y`` fractions of the frame, each inside [0, 1]."""
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'x,y' fractions, got {text!r}") from None
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise argparse.ArgumentTypeError(f"must lie inside the frame (0..1 each), got {text!r}")
    return x, y


# --------------------------------------------------------------------------- output folders


def check_out_dir(path: Path | str, option: str = "--out") -> Path:
    """``path`` as a folder that exists (created) and is writable, or a CommandError naming it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{option} {path}: exists and is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CommandError(f"{option} {path}: cannot create the folder "
                           f"({describe_os_error(err) or err})") from err
    if not os.access(path, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: the folder is not writable")
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``path`` through ``.NAME.tmp-PID`` and a rename; on failure (disk full) the
    temporary file is removed and the OSError names ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from err
    return path


def remove_stale_temp_files(folder: Path | str) -> list[Path]:
    """Delete ``.NAME.tmp-PID`` files in ``folder`` whose writer process is gone (killed runs)."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        pid = path.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)) and path.is_file():
            try:
                path.unlink()
                removed.append(path)
            except OSError:
                pass
    if removed:
        log.info("removed %d temporary file(s) left by killed runs in %s", len(removed), folder)
    return removed


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` for every command: each option's default shown once, in plain words.

    "(default: X)" is appended unless the help text already names its default; on/off switches
    and options whose default is "not given" add nothing (their text says what they do), so a
    ``--no-flip`` never reads "(default: True)".
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        # `is`, not `in (None, True, False)`: 0 == False, and a default of 0 or 0.0 is a value
        # to state (--upsample 0, --min-confidence 0.0), not an on/off switch.
        if ("default" in text or not action.option_strings or action.nargs == 0
                or action.default is None or action.default is argparse.SUPPRESS
                or isinstance(action.default, bool)
                or isinstance(action, argparse.BooleanOptionalAction)):
            return text
        return text + " (default: %(default)s)"

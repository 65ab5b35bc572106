"""What a full disk does to an HDF5 writer: how to recognise it, and how a process holding a
handle that could not be flushed ends without crashing."""
from __future__ import annotations

import atexit
import errno
import logging
import os
import sys
from typing import Any


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC, also when h5py reports it as a RuntimeError with the errno in its text."""
    text = str(err)
    return (getattr(err, "errno", None) == errno.ENOSPC or "errno = 28," in text
            or "No space left on device" in text)


#: Writers whose HDF5 file could not be flushed (a full disk). Freeing such a handle crashes the
#: HDF5 library (segfault), also at interpreter exit, so they are kept, and a process holding
#: any ends with os._exit (after flushing its output) instead of tearing the library down.
_UNCLOSABLE: list[Any] = []


def keep_unclosed(writer: Any) -> None:
    if not _UNCLOSABLE:
        atexit.register(_exit_without_freeing)
    _UNCLOSABLE.append(writer)


def _exit_without_freeing() -> None:
    from . import cli  # the exit code the command's handler set

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(cli.LAST_EXIT_CODE)

"""What every model command shares: logging set-up, exit codes, the top-level error handler
(:func:`pipeline.cli.handle_errors`, one for every command) and the device check."""
from __future__ import annotations

import argparse
import logging

from pipeline.cli import (EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,  # noqa: F401
                          CommandError, FailureError, handle_errors)


def setup_logging(quiet: bool = False, rank: int = 0) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def check_device(name: str, option: str = "--device", allow_auto: bool = True) -> str:
    """``name`` if torch knows the device and this machine has it, else a CommandError (exit 2)."""
    import torch

    if allow_auto and name == "auto":
        return name
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError) as err:
        raise CommandError(f"{option} {name!r}: not a device torch knows (cpu, cuda, cuda:N, "
                           f"mps{', auto' if allow_auto else ''})") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CommandError(f"{option} {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CommandError(f"{option} {name}: this machine has {torch.cuda.device_count()} "
                               "CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CommandError(f"{option} {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise CommandError(f"{option} {name}: unsupported device type {device.type!r}")
    return name


def device_arg(name: str) -> str:
    """An argparse ``type`` for --device (exit 2 with the reason for an unknown device)."""
    try:
        return check_device(name)
    except CommandError as err:
        raise argparse.ArgumentTypeError(str(err).split(": ", 1)[1]) from None

"""Plots are optional: where matplotlib cannot be imported, a command says so once and goes on.

Every drawing module imports matplotlib at its top (or inside its functions); the callers reach
them through :func:`plots_module` / :func:`draw`, so a missing or broken plotting library never
costs a training run, an evaluation or a prediction.
"""
from __future__ import annotations

import importlib
import logging
from types import ModuleType
from typing import Any, Callable

#: Loggers that have already said "no plots" (one warning a process and command, not an epoch).
_WARNED: set[str] = set()


def plots_module(log: logging.Logger) -> ModuleType | None:
    """``model.evaluation.plots``, or None (with one warning on ``log``) without matplotlib."""
    try:
        plots = importlib.import_module(f"{__package__}.plots")
    except ImportError as err:
        warn_no_plots(log, err)
        return None
    return plots


def draw(log: logging.Logger, what: str, fn: Callable[..., Any], *args: Any,
         **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or None: a missing plotting library is said once, another
    drawing problem is logged with ``what`` (the file or plot); neither is raised."""
    try:
        return fn(*args, **kwargs)
    except ImportError as err:
        warn_no_plots(log, err)
    except Exception as err:  # a plotting problem must never cost the command's results
        log.warning("could not draw %s: %s", what, err)
    return None


def warn_no_plots(log: logging.Logger, err: ImportError) -> None:
    """The one "no plots" warning of ``log``'s command (later calls say nothing)."""
    if log.name in _WARNED:
        return
    _WARNED.add(log.name)
    log.warning("no plots: the plotting library cannot be imported (%s); everything else goes "
                "on (pip install matplotlib to draw them)", err)

"""Command-line options into a ``TrainConfig``: the command line's spellings typed, and with
``--recipe`` the recipe's settings under the options the command line gave.

Apart from ``config`` (which ``recipes`` builds on) so that the two import in one direction.
"""
from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from .config import TrainConfig
from .recipes import load_recipe
from .validation import check_task_options


def config_from_args(args: argparse.Namespace, explicit: set[str] | None = None,
                     **overrides: Any) -> TrainConfig:
    """A TrainConfig from parsed options (unknown keys ignored), with ``overrides`` applied.

    With ``args.recipe`` the recipe's settings replace every option not in ``explicit`` (the
    options the command line gave; None: those whose value differs from the default).
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = _typed({k: v for k, v in vars(args).items() if k in known})
    if isinstance(values.get("recipe"), str):
        recipe = load_recipe(values["recipe"])
        given = explicit if explicit is not None else _changed_from_defaults(values)
        values.update({k: v for k, v in recipe.settings.items() if k not in given})
        values["recipe"] = recipe.record(global_batch="batch_size" not in given)
    values.update({k: v for k, v in overrides.items() if k in known})
    cfg = TrainConfig(**_typed(values))
    # An option the command line gave that the task cannot use is refused even at its default.
    check_task_options(cfg.task, {k: getattr(cfg, k) for k in (explicit or ()) if k in known})
    return cfg


def _typed(values: dict[str, Any]) -> dict[str, Any]:
    """Command-line spellings to TrainConfig types: --au-weights on/off, --threshold B or 2."""
    from pipeline.datasets.disfa.facts import parse_threshold

    if isinstance(values.get("au_weights"), str):
        values["au_weights"] = values["au_weights"] == "on"
    if isinstance(values.get("threshold"), str):
        values["threshold"] = parse_threshold(values["threshold"])
    return values


def _changed_from_defaults(values: dict[str, Any]) -> set[str]:
    defaults = TrainConfig(shards="", manifest="", fold=1, out="")
    return {k for k, v in values.items() if hasattr(defaults, k) and getattr(defaults, k) != v}

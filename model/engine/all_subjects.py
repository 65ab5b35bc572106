"""The deployable model: ``model.train --all-subjects`` trains on every subject of the shards.

No subject is held out, so nothing can select an epoch or measure the model without leaking:
the run trains a fixed number of epochs and keeps the last one. With ``--from-crossval DIR``
it takes the recipe that crossval validated (its fold runs' train_config) and trains for the
median of the folds' best epochs (where held-out subjects stopped improving); the card then
carries the crossval's pooled metrics, labelled as those of the recipe, not of this model.
Without a crossval record it trains the options given for ``--epochs`` and says "no held-out
estimate". The epoch loop's per-epoch score reads training frames: a monitor, never a metric.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from ..cards.crossval_record import fixed_epochs, read_crossval
from .config import RUNTIME_OPTIONS, TrainConfig
from .data import DataError, FoldSpec, all_subjects_spec, fold_spec, training_subjects
from .early_stopping import EarlyStopping

log = logging.getLogger("model.train")

#: Options an --all-subjects run may set whatever the crossval recipe said: how it runs, not
#: what it learns, plus the epoch count (the crossval's is the default) and the monitor's size
#: and frequency.
FREE_OPTIONS = set(RUNTIME_OPTIONS) | {"manifest", "fold", "epochs", "patience", "select_on",
                                       "eval_batches", "eval_every", "tune_threshold",
                                       "all_subjects", "from_crossval"}
#: Training frames the per-epoch monitor scores (batches of eval_batch_size), unless given.
MONITOR_BATCHES = 2


class FixedEpochs(EarlyStopping):
    """Never stops early, and every epoch is the newest "best": best.pt is the last epoch."""

    def step(self, score: float, epoch: int) -> bool:
        super().step(score, epoch)
        self.best_score, self.best_epoch, self.bad_epochs = float(score), int(epoch), 0
        return True

    @property
    def should_stop(self) -> bool:
        return False


def make_stopper(cfg: TrainConfig) -> EarlyStopping:
    return FixedEpochs(patience=cfg.patience) if cfg.all_subjects else \
        EarlyStopping(patience=cfg.patience)


def run_subjects(cfg: TrainConfig) -> FoldSpec:
    """The subjects a run trains, selects and tests on."""
    spec = fold_spec(cfg.manifest, cfg.fold)
    return all_subjects_spec(spec) if cfg.all_subjects else training_subjects(spec, cfg.select_on)


def needs_test(cfg: TrainConfig) -> tuple[str, ...]:
    """The splits that must hold frames besides the selection split."""
    return ("train",) if cfg.all_subjects else ("train", "test")


def all_subjects_config(cfg: TrainConfig, explicit: set[str]) -> TrainConfig:
    """``cfg`` for an --all-subjects run: refused with an explicit fold; with --from-crossval,
    the crossval's recipe (options given here that change it are refused) and epoch count."""
    if "fold" in explicit:
        raise DataError("--all-subjects trains on every subject: drop --fold (there are no test "
                        "subjects; the fold's only use would be to hold some out)")
    if cfg.tune_threshold:
        raise DataError("--all-subjects: --tune-threshold needs held-out subjects; there are none")
    changes: dict[str, Any] = {"eval_batches": cfg.eval_batches or MONITOR_BATCHES,
                               "select_on": "val"}
    if not cfg.from_crossval:
        log.warning("--all-subjects without --from-crossval: no crossval record, so this model "
                    "has no held-out estimate (its card says so); train it after a model.crossval "
                    "of the same recipe and pass --from-crossval CROSSVAL_OUT")
        return dataclasses.replace(cfg, **changes)
    record = read_crossval(cfg.from_crossval, cfg.variant)
    recipe = {k: v for k, v in record["train_config"].items()
              if k not in FREE_OPTIONS and k in {f.name for f in dataclasses.fields(TrainConfig)}}
    differ = [f"--{k.replace('_', '-')} {getattr(cfg, k)!r} (crossval has {v!r})"
              for k, v in recipe.items() if k in explicit and _normal(getattr(cfg, k)) != _normal(v)]
    if differ:
        raise DataError(f"--from-crossval {cfg.from_crossval}: {'; '.join(differ)}: its metrics "
                        "would describe another recipe; drop these options")
    changes.update(recipe)
    if "recipe" not in explicit:  # the named recipe it started from, for the card's recipe line
        changes["recipe"] = record["train_config"].get("recipe")
    if "epochs" not in explicit:
        changes["epochs"] = fixed_epochs(record)
    log.info("--all-subjects: the recipe of %s, %d epochs (median best epoch of its folds: %s)",
             cfg.from_crossval, changes.get("epochs", cfg.epochs),
             ", ".join(str(r.get("best_epoch")) for r in record["runs"]))
    return dataclasses.replace(cfg, **changes)


def _normal(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value

"""Resuming a run from its last.pt: the stored settings (only a few options may change), the
number of processes it may continue on, and the state put back where it stopped."""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from .checkpoint import (CheckpointError, check_compatible, check_shapes, load_checkpoint,
                         restore_rng_state)
from .config import LEGACY_TRAIN_CONFIG, TrainConfig, differs, world_bound
from .distributed import DistInfo
from .run import TrainingRun
from .selection import SCORE_NAMES
from .step_log import EpochAccumulator

log = logging.getLogger("model.train")

#: Options that may change when a run is resumed; every other one must match the stored run.
RESUME_OVERRIDABLE = ("epochs", "device", "workers", "eval_batch_size", "resume", "out",
                      "shards", "manifest", "threads", "quiet", "plot_every", "compile",
                      "cache_frames_mb", "cuda_graphs")


def resume_config(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict[str, Any]]:
    """The stored configuration of ``cfg.resume``, with the options allowed to change applied."""
    run_dir = Path(cfg.resume)
    path = run_dir / "last.pt"
    state = load_checkpoint(path)
    for key in ("train_config", "optimizer", "progress", "sampler", "rng"):
        if key not in state:
            raise CheckpointError(f"{path}: no '{key}' entry; not a resumable training checkpoint")
    if "variant" in explicit:
        check_compatible(state, path, variant=cfg.variant)
    stored = dict(state["train_config"])
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {**LEGACY_TRAIN_CONFIG, **{k: v for k, v in stored.items() if k in known}}
    conflicts = []
    for name in explicit:
        if name in RESUME_OVERRIDABLE or name not in values:
            continue
        mine = getattr(cfg, name)
        if mine != values[name]:
            conflicts.append(differs(name, mine, values[name]))
    if values.get("lr_schedule") == "cosine" and "epochs" in explicit \
            and cfg.epochs != values.get("epochs"):
        conflicts.append(f"--epochs {cfg.epochs!r} (the cosine schedule decays over the run's "
                         f"{values.get('epochs')} epochs; another horizon would make the learning "
                         "rate jump: start a new run with --epochs instead)")
    if conflicts:
        raise ValueError(f"{path}: cannot resume with different settings: {', '.join(conflicts)}")
    for name in RESUME_OVERRIDABLE:
        if name in explicit or name == "resume":
            values[name] = getattr(cfg, name)
    values["out"] = str(run_dir)
    return TrainConfig(**values), state


def check_resume_world(state: dict[str, Any], cfg: TrainConfig, info: DistInfo) -> None:
    """Resuming on another number of processes is allowed at an epoch boundary (labelled, not
    bit-exact: ranks beyond the saved ones start fresh sampler streams); mid-epoch, or with
    --lr-scaling linear or a recipe's global batch (lr or global batch would change), refused."""
    saved = int(state.get("world_size", 1))
    if saved == info.world:
        return
    path = f"{cfg.resume}/last.pt"
    if int(state["progress"]["accumulator"].get("batches", 0)):
        raise CheckpointError(f"{path}: stopped mid-epoch with {saved} processes; resume with "
                              f"{saved} (got {info.world}) to continue that epoch exactly")
    if world_bound(cfg):
        raise CheckpointError(f"{path}: saved by {saved} processes under {world_bound(cfg)}; "
                              f"resuming with {info.world} would change it")
    if info.is_main:
        log.warning("%s: saved by %d processes, resumed with %d: global batch %d -> %d; the "
                    "continuation is not bit-identical to an uninterrupted run", path, saved,
                    info.world, cfg.batch_size * saved, cfg.batch_size * info.world)


def resume_run(run: TrainingRun, state: dict[str, Any]) -> None:
    """Put the weights, optimiser, schedule, sampler and RNG streams back where last.pt left them."""
    check_shapes(run.model, state["model"], Path(run.cfg.resume) / "last.pt")
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    run.stopper.load_state_dict(state["early_stopping"])
    run.history = list(state.get("history", []))
    if int(state.get("world_size", 1)) != run.info.world:
        run.resumed_world = int(state.get("world_size", 1))
    run.completed = int(state["progress"]["epoch"])
    run.acc = EpochAccumulator(**state["progress"]["accumulator"])
    rank = run.info.rank
    if rank < len(state["sampler"]):  # a rank the saved run did not have starts a fresh stream
        run.data.sampler.load_state_dict(state["sampler"][rank])
    restore_rng_state(state["rng"][min(rank, len(state["rng"]) - 1)])
    log.info("resuming %s after epoch %d, batch %d (best %s %.4f at epoch %d)",
             run.cfg.resume, run.completed, run.acc.batches, SCORE_NAMES[run.cfg.task],
             run.stopper.best_score, run.stopper.best_epoch)

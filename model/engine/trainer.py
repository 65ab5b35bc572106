"""``train()``: one training run (or its resumption) in named steps.

Layout follows torchvision's reference ``train.py`` and detectron2's ``engine/``: the steps live
in their own modules and this one composes them. Under ``torchrun`` every process trains on its
own sampler stream (seeded by rank) with ``batch_size`` frames a step (``--batch-size`` is per
GPU, as in torchvision and timm; a recipe's batch is global and split), gradients are averaged
by DDP, evaluation counts are summed over ranks, and only rank 0 writes files.

* ``fold_data``        the fold's shards, sampler and loaders (``load_data``)
* ``run``              ``TrainingRun`` and what its checkpoints hold; ``build``, ``resume``,
                       ``ddp``, ``run_record``, ``epochs``, ``finish``: the run's stages
* ``loop``             one step, one epoch, the host's sync points; ``stopping``: signals;
                       ``graph_step``: the step as one CUDA graph; ``checkpoint_writer``:
                       checkpoints written in the background
* ``evaluation_loop``  one scored pass over a loader; ``selection``, ``tuning``: what picks the
                       epoch and the decision thresholds
* ``freezing``, ``plotting``

The run's stages are imported here under their names, so ``from model.engine.trainer import
build_run`` (and the other names of ``__all__``) keeps working.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from .build import build_run, prepare_runtime
from .config import TrainConfig
from .ddp import distribute, with_sync_batchnorm
from .distributed import DistInfo
from .epochs import run_epochs
from .evaluation_loop import evaluate, run_task_evaluation
from .finish import finish_run
from .fold_data import FoldData, load_data
from .graph_step import graphs_wanted
from .loop import train_one_epoch, train_step
from .precision import choose_precision
from .resume import RESUME_OVERRIDABLE, check_resume_world, resume_run
from .run import TrainingRun
from .run_record import record_run_start
from .step_log import EpochAccumulator
from .stopping import NonFiniteLossError, StopRequest

# What callers imported from here before the split. ``train`` looks its steps up here, so a test
# may patch ``trainer.load_data``; what other modules use (``loop.SYNC_EVERY``,
# ``epochs.evaluate_tasks``) is not re-exported: patching a copy here would change nothing.
__all__ = ["RESUME_OVERRIDABLE", "DistInfo", "EpochAccumulator", "FoldData",
           "NonFiniteLossError", "StopRequest", "TrainingRun", "build_run", "check_resume_world",
           "distribute", "evaluate", "finish_run", "load_data", "prepare_runtime",
           "record_run_start", "resume_run", "run_epochs", "run_task_evaluation", "train",
           "train_one_epoch", "train_step", "with_sync_batchnorm"]

def train(
    cfg: TrainConfig, *,
    explicit: set[str] | None = None,
    on_batch_end: Callable[[int, int, float], None] | None = None,
    stop: StopRequest | None = None,
    stage: Any = None,
) -> dict[str, Any]:
    """Run (or resume) one training run; returns the summary also written to results.json.

    Raises DataError/CheckpointError/ValueError on bad input before training starts, and
    NonFiniteLossError if the loss turns NaN/inf. A stop request (SIGINT/SIGTERM or ``stop``)
    saves last.pt and returns with ``status == "interrupted"``. ``stage`` (a RunFolder):
    where a --fresh run is written until it has started cleanly.
    """
    cfg, info, device, resume_state = prepare_runtime(cfg, explicit or set())
    # --cuda-graphs on where no graph can run is refused now, before any file is written
    graphs_wanted(cfg, device, info, choose_precision(device, cfg.amp))
    data = load_data(cfg, info, device)
    run = build_run(cfg, info, device, data, resume_state)
    run.run_dir = stage.path if stage is not None else run.run_dir  # run_folder.RunFolder
    if resume_state is not None:
        resume_run(run, resume_state)
    if info.enabled:
        distribute(run)
    if cfg.compile:
        run.model = torch.compile(run.model)
    if info.is_main:
        record_run_start(run)
        run.run_dir = stage.commit() if stage is not None else run.run_dir  # started cleanly
    status = run_epochs(run, stop or StopRequest(), on_batch_end)
    return finish_run(run, status)

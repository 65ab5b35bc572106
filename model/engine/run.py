"""The training run: one ``TrainingRun`` holds everything a run's steps share (configuration,
data, model, optimiser, progress), and what its checkpoints record.

The run's API, shared by ``model.train``, cross-validation, ``model.demo`` and the benchmarks,
is one function a stage, each in its own module:

* ``build.prepare_runtime`` / ``build.build_run``: process group, device, the stored settings of
  a resumed run; then the model (with ``--pretrained``), optimiser, schedule and loss;
* ``resume.resume_run``: weights, optimiser, sampler and RNG streams back from last.pt;
* ``ddp.distribute``: the DDP wrapper under torchrun;
* ``run_record.record_run_start``: config.json and the opening log lines;
* ``epochs.run_epochs``: train, evaluate, checkpoint until done or stopped;
* ``finish.finish_run``: best.pt on the test split, results.json/results.md.

``trainer.train`` composes them in that order.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import capture_rng_state
from .config import TrainConfig
from .distributed import DistInfo, gather_objects
from .early_stopping import EarlyStopping
from .fold_data import FoldData
from .forward import unwrap
from .progress import RunClock
from .step_log import EpochAccumulator
from ..cards.build import run_card
from ..cards.card import CARD_KEY
from ..evaluation.label_rules import dataset_record
from ..nets.tranet import TRANetConfig


@dataclass
class TrainingRun:
    """Everything one run's steps share: configuration, data, model, optimiser and progress."""

    cfg: TrainConfig
    info: DistInfo
    device: torch.device
    run_dir: Path
    data: FoldData
    model_config: TRANetConfig
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    scheduler: Any
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    stopper: EarlyStopping
    note: str
    pretrained: dict[str, Any] | None = None  # PretrainedReport.as_dict() of a new run's weights
    freezing: dict[str, Any] = field(default_factory=dict)
    sync_batchnorm: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    completed: int = 0
    resumed_world: int | None = None
    acc: EpochAccumulator = field(default_factory=EpochAccumulator)
    clock: RunClock | None = None  # made when the epochs start (the ETA counts from there)

    @property
    def au_ids(self) -> list[int]:
        return list(self.data.spec.au_ids)

    def payload(self) -> dict[str, Any]:
        """What every checkpoint records about how the model was made."""
        g = self.data.geometry
        return {
            "model_config": asdict(self.model_config),
            "data": {"au_ids": self.au_ids, "threshold": self.data.threshold,
                     "image_size": g["image_size"], "nose_target": g["nose_target"],
                     "chin_target": g["chin_target"], "alignment": self.data.alignment,
                     "fold": self.cfg.fold, "subjects": self.data.spec.subjects,
                     "manifest": str(self.cfg.manifest),
                     # the dataset(s), their label rules and the AUs' regions (#26)
                     **dataset_record(self.data.train.datasets, self.data.threshold,
                                      self.au_ids)},
            "train_config": asdict(self.cfg),
            "protocol": self.note,
            "pretrained": self.pretrained,
            CARD_KEY: run_card(self).to_dict(),
        }



def checkpoint_state(run: TrainingRun, progress_epoch: int, accumulator: EpochAccumulator,
                     consumed: int | None) -> dict[str, Any]:
    """last.pt's content. Collective: every rank contributes its sampler and RNG streams."""
    samplers = gather_objects(run.data.sampler.state_dict(consumed), run.info)
    rngs = gather_objects(capture_rng_state(), run.info)
    return {**run.payload(), "model": unwrap(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "sampler": samplers, "rng": rngs, "early_stopping": run.stopper.state_dict(),
            "history": run.history, "epoch": progress_epoch, "world_size": run.info.world,
            "progress": {"epoch": progress_epoch, "accumulator": accumulator.state_dict()}}



def run_name(cfg: TrainConfig) -> str:
    return "all subjects" if cfg.all_subjects else f"fold {cfg.fold}"

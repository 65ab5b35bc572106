"""Building a run: the process group, threads and device, the stored settings when resuming;
then the model (with ``--pretrained`` on a new run), frozen blocks, optimiser, schedule and loss."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch

from .all_subjects import make_stopper
from .checkpoint import check_compatible
from .config import TrainConfig, effective_lr, hold_global_batch, protocol_note
from .distributed import DistInfo, init_distributed, resolve_device
from .fold_data import FoldData
from .freezing import freeze_pretrained_blocks
from .losses import task_loss_for
from .precision import choose_precision
from .resume import check_resume_world, resume_config
from .run import TrainingRun
from ..evaluation.label_rules import labels_phrase
from ..nets.regions import ALL_AUS
from ..nets.tranet import TRANetConfig, build_model
from ..weights.pretrained import load_pretrained

log = logging.getLogger("model.train")


def prepare_runtime(cfg: TrainConfig, explicit: set[str]
                    ) -> tuple[TrainConfig, DistInfo, torch.device, dict[str, Any] | None]:
    """Process group, threads, the stored configuration when resuming, the device, the run folder."""
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif info.enabled and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get(
            "LOCAL_WORLD_SIZE", info.world))))
    resume_state = None
    if cfg.resume:
        cfg, resume_state = resume_config(cfg, explicit)
    else:
        cfg = hold_global_batch(cfg, info.world)  # a recipe's batch is global: split it
    device = resolve_device(cfg.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)  # so that nothing (no context) lands on GPU 0 by default
        torch.backends.cudnn.benchmark = True  # fixed-size input: pick the fastest kernels once
    if info.is_main:
        Path(cfg.out).mkdir(parents=True, exist_ok=True)
    return cfg, info, device, resume_state


def build_run(cfg: TrainConfig, info: DistInfo, device: torch.device, data: FoldData,
              resume_state: dict[str, Any] | None) -> TrainingRun:
    """The model (with pretrained weights on a new run), optimiser, schedule and loss."""
    au_ids = list(data.spec.au_ids)
    size = data.geometry["image_size"]
    if resume_state is not None:
        check_compatible(resume_state, Path(cfg.resume) / "last.pt", variant=cfg.variant,
                         au_ids=au_ids, image_size=size)
        check_resume_world(resume_state, cfg, info)
    model_cfg = TRANetConfig(
        variant=cfg.variant, preset=cfg.preset, au_ids=tuple(au_ids), image_size=size,
        center=tuple(v / size for v in data.geometry["nose_target"]), backbone=cfg.backbone,
        input_transform=None if cfg.input_transform == "auto" else cfg.input_transform,
        decoder_se=cfg.decoder_se, channels_last=cfg.channels_last, frozen_blocks=0,
        intensity_aus=tuple(ALL_AUS) if cfg.task != "occurrence" else ())
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(model_cfg)
    pretrained = _initial_weights(cfg, model, resume_state)
    freezing = freeze_pretrained_blocks(model, cfg, resume_state, pretrained)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=effective_lr(cfg, info.world), momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scaler = choose_precision(device, cfg.amp).grad_scaler()
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs * cfg.batches_per_epoch)
        if cfg.lr_schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    loss_weights = (torch.as_tensor(data.au_weights, dtype=torch.float32, device=device)
                    if cfg.au_weights else None)
    # One loss for every variant: the paper's three AU groups, whichever head made the logits.
    criterion = task_loss_for(cfg.task, au_ids, model_cfg.intensity_aus, loss_weights,
                              cfg.intensity_weight, cfg.intensity_loss,
                              getattr(data, "has_uncoded", False))
    return TrainingRun(cfg=cfg, info=info, device=device, run_dir=Path(cfg.out), data=data,
                       model_config=model_cfg, model=model, optimizer=optimizer, scaler=scaler,
                       scheduler=scheduler, criterion=criterion,
                       stopper=make_stopper(cfg), pretrained=pretrained,
                       note=protocol_note(cfg.select_on, data.threshold, cfg.all_subjects,
                                          labels_phrase(_datasets(data), data.threshold,
                                                        au_ids)),
                       freezing=freezing)


def _datasets(data: FoldData) -> tuple[str, ...]:
    """The training shards' datasets (a stand-in without shards, as some tests pass: DISFA's)."""
    return tuple(getattr(getattr(data, "train", None), "datasets", ()) or ())


def _initial_weights(cfg: TrainConfig, model: torch.nn.Module,
                     resume_state: dict[str, Any] | None) -> dict[str, Any] | None:
    """Load ``--pretrained`` into a new run's backbone and settle the input transform: the
    user's, else the one the weights were trained with, else the backbone's default; a resumed
    run keeps what its checkpoint recorded. Returns the pretrained report (or None)."""
    model_cfg = model.config
    if resume_state is not None:
        model_cfg.input_transform = resume_state["model_config"].get("input_transform")
        report = resume_state.get("pretrained")
    else:
        report = load_pretrained(model, cfg.pretrained).as_dict() if cfg.pretrained else None
        if model_cfg.input_transform is None and report is not None:
            model_cfg.input_transform = report["input_transform"]
    model_cfg.input_transform = model.input_transform.as_dict()  # recorded explicitly
    return report

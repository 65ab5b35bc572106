"""What a run records when it starts: config.json (how it was made) and the opening log lines,
the recipe block first."""
from __future__ import annotations

import logging
import platform
from dataclasses import asdict
from typing import Sequence

import torch

from .config import TrainConfig, batch_record
from .fold_data import loader_workers
from .precision import choose_precision
from .run import TrainingRun, run_name
from ..evaluation.provenance import recipe_line
from ..evaluation.records import write_json

log = logging.getLogger("model.train")


def record_run_start(run: TrainingRun) -> None:
    """config.json (how the run was made) and the opening log lines."""
    cfg, data, au_ids = run.cfg, run.data, run.au_ids
    params = [p for p in run.model.parameters() if p.requires_grad]
    write_json(run.run_dir / "config.json", {
        "train_config": asdict(cfg), "model_config": asdict(run.model_config),
        "data": run.payload()["data"], "protocol": run.note, "world_size": run.info.world,
        "batch": batch_record(cfg, run.info.world),
        "loader": {"workers": loader_workers(cfg), "pin_memory": run.device.type == "cuda"},
        "precision": choose_precision(run.device, cfg.amp).name,
        "resumed_from_world_size": run.resumed_world,
        "pretrained": run.pretrained,
        "sampler": {"kind": cfg.sampler, "au_weights": data.au_weights.tolist(),
                    "frame_weight": "max(1, sum of the weights of the frame's positive AUs)",
                    "natural_positive_rate": data.natural_rate.tolist(),
                    "expected_drawn_positive_rate": data.expected_rate.tolist()},
        "frames": {"train": len(data.train), "select": data.select_frames,
                   "test": data.test_frames}, "selection": data.selection,
        "trainable_parameters": sum(p.numel() for p in params),
        "frozen": run.freezing, "recipe": cfg.recipe,
        "sync_batchnorm": run.sync_batchnorm or {"enabled": False, "note": "one process"},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    })
    log_recipe_block(run)
    log.info("%s: %d train frames (%s), %s (%d frames), %d test frames", run_name(cfg),
             len(data.train), ", ".join(data.spec.subjects["train"]),
             "monitor on training frames" if cfg.all_subjects else f"selection on {cfg.select_on}",
             data.select_frames, data.test_frames)
    log.info("%s", run.note)
    batch = batch_record(cfg, run.info.world)
    log.info("batch %d per process x %d processes = global batch %d; lr %g (--lr-scaling %s); "
             "precision %s", batch["per_process"], run.info.world, batch["global"],
             batch["lr"], cfg.lr_scaling, choose_precision(run.device, cfg.amp).name)
    log.info("per-AU positive rate: natural %s -> expected under the sampler %s",
             fmt_rates(au_ids, data.natural_rate), fmt_rates(au_ids, data.expected_rate))


def log_recipe_block(run: TrainingRun) -> None:
    """The run's recipe in one block at the start: what was trained, on what, and how."""
    cfg = run.cfg
    record = {**run.payload(), "pretrained": run.pretrained}
    jitter = (f"jitter scale {cfg.jitter_scale:g} / {cfg.jitter_degrees:g} deg / shift "
              f"{cfg.jitter_shift:g}" if cfg.jitter_scale or cfg.jitter_degrees or cfg.jitter_shift
              else "no jitter")
    lines = [f"recipe: {cfg.recipe['name']}" if cfg.recipe else "recipe: options as given",
             recipe_line(record),
             f"task {cfg.task}{_intensity_note(cfg)}; lr {cfg.lr:g} ({cfg.lr_schedule}), "
             f"momentum {cfg.momentum:g}, weight decay {cfg.weight_decay:g}; "
             f"{cfg.epochs} epochs x {cfg.batches_per_epoch} "
             f"batches of {cfg.batch_size}, patience {cfg.patience}",
             f"augmentation: {'flip' if cfg.flip else 'no flip'}, {jitter}; sampler {cfg.sampler}"]
    log.info("run %s\n  %s", run.run_dir, "\n  ".join(lines))


def _intensity_note(cfg: TrainConfig) -> str:
    """How the intensity head is trained, for the recipe block ('' for occurrence)."""
    if cfg.task == "occurrence":
        return ""
    weight = f"{cfg.intensity_weight:g} x " if cfg.task == "both" else ""
    return f" (intensity loss {weight}{cfg.intensity_loss})"



def fmt_rates(au_ids: Sequence[int], rates: Sequence[float]) -> str:
    return " ".join(f"AU{a}:{r:.3f}" for a, r in zip(au_ids, rates))

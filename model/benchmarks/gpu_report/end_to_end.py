"""The ``end_to_end`` stage: short runs through ``model.engine.trainer.train`` (``model.train``'s
own path: DataLoader workers on shards, every epoch evaluated and checkpointed), timed per epoch
with and without its evaluation and checkpoints, the time the step waited for data, and the GPU's
utilisation."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from ...engine import trainer
from .config import ReportConfig
from .loader import SMALL_FRAMES, ensure_shards
from .report import Report
from .trainer_fields import graph_settings, train_config
from .trainer_probe import TrainerProbe
from .utilisation import UtilisationSampler


def stage_end_to_end(report: Report) -> None:
    cfg = report.cfg
    _, manifest = ensure_shards(report, SMALL_FRAMES if cfg.small else 512)
    epochs, batches = (2, 2) if cfg.small else (3, 30)
    for graphs in graph_settings(report.device.type):
        optional = {"eval_every": 1, **({"cuda_graphs": graphs} if graphs else {})}
        what = {"batch": cfg.batches[0], "batches": batches, "epochs": epochs, "amp": not cfg.small}
        # every epoch's steps, its evaluation (~a third of a step a batch), worker start-ups
        estimate = report.costs.steps_estimate(cfg.batches[0], epochs * batches * 1.5,
                                               3 if cfg.small else 20, 5 if cfg.small else 90,
                                               "fp32" if cfg.small else None)
        report.measure(what, estimate,
                       lambda _left, o=optional: run_end_to_end(report, manifest, o, epochs,
                                                                batches))


def run_end_to_end(report: Report, manifest: Path, optional: dict[str, Any], epochs: int,
                   batches: int) -> dict[str, Any]:
    """One short run through ``trainer.train``; per epoch: its wall time (train steps,
    evaluation, checkpoints, metrics and plots: from one epoch's first batch request to the
    next's), its training seconds (the trainer's own count), their images/s, and the share of
    the training seconds spent waiting for the loader."""
    cfg = report.cfg
    out = Path(tempfile.mkdtemp(prefix="e2e-", dir=report.dir))
    train_cfg, fields = train_config(optional, **_config(cfg, report, manifest, out, epochs,
                                                          batches))
    probe = TrainerProbe(time.perf_counter() + report.remaining())
    t0 = time.perf_counter()
    with UtilisationSampler(report.device) as util, probe.attached():
        summary = trainer.train(train_cfg, stop=probe.stop)
    wall = time.perf_counter() - t0
    history = trainer_history(out)
    if probe.step_s() is not None:  # the next stages estimate their cost from it
        report.costs.note_step(cfg.batches[0], probe.step_s())
    marks = probe.starts + ([probe.finish_at] if probe.finish_at else [])
    epoch_s = [b - a for a, b in zip(marks, marks[1:])][:len(history)]  # whole epochs only
    train_s = [row["seconds"] for row in history]
    images = batches * cfg.batches[0]
    return {"wall_s": wall, "start_s": probe.starts[0] - t0 if probe.starts else None,
            "finish_s": None if probe.finish_skipped or probe.finish_at is None
            else t0 + wall - probe.finish_at, "finish_skipped": probe.finish_skipped,
            "epoch_wall_s": epoch_s,
            "train_s": train_s, "eval_checkpoint_s": [e - t for e, t in zip(epoch_s, train_s)],
            "epoch_images_per_s": [images / s for s in epoch_s],
            "train_images_per_s": [images / s for s in train_s],
            "data_wait_s": probe.wait_s,
            "data_wait_share": [w / t for w, t in zip(probe.wait_s, train_s) if t > 0],
            "run_status": summary.get("status"), "cut_by_deadline": probe.stop.requested,
            "workers": train_cfg.workers,
            "eval_frames": _eval_frames(out), **fields, **util.result()}


def _config(cfg: ReportConfig, report: Report, manifest: Path, out: Path, epochs: int,
            batches: int) -> dict[str, Any]:
    return dict(shards=str(manifest.parent / "shards"), manifest=str(manifest), fold=1,
                out=str(out), preset=cfg.preset, epochs=epochs, batches_per_epoch=batches,
                batch_size=cfg.batches[0], eval_batch_size=cfg.batches[1],
                amp=not cfg.small,  # the test mode in fp32: bf16 on a CPU is slow
                quiet=True, device=str(report.device), plot_every=1,
                workers=1 if cfg.small else min(8, os.cpu_count() or 1))


def trainer_history(run_root: Path) -> list[dict[str, Any]]:
    """The epochs of the run's metrics.json (in ``run_root`` or a folder below it)."""
    paths = sorted(run_root.rglob("metrics.json"))
    payload = json.loads(paths[0].read_text()) if paths else {}
    return payload.get("epochs", []) if isinstance(payload, dict) else payload


def _eval_frames(run_root: Path) -> Any:
    paths = sorted(run_root.rglob("config.json"))
    with contextlib.suppress(Exception):
        return json.loads(paths[0].read_text())["frames"]["select"]
    return None


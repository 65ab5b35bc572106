"""Stages 4 and 6: the trainer's own ``train_one_epoch`` on in-memory batches (host syncs
counted), and two short epochs through ``model.engine.trainer.train`` on synthetic shards."""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ...engine import loop
from ...engine.config import TrainConfig
from ...engine.distributed import DistInfo
from ...engine.losses import region_bce_criterion
from ...engine.precision import choose_precision
from ...engine.sync_count import count_host_syncs
from ...engine.trainer import train
from .ceiling import build
from .config import ReportConfig
from .loader import SMALL_FRAMES, ensure_shards
from .report import Report, cudnn_benchmark, sync


def stage_trainer_epoch(report: Report) -> None:
    cfg, device = report.cfg, report.device
    batches = 2 if cfg.small else 30
    for amp in ((True,) if cfg.small else (True, False)):
        what = {"kind": "measurement", "amp": amp,
                "precision": choose_precision(device, amp).name, "batches": batches,
                "batch": cfg.batches[0]}
        if report.out_of_time(reserve=15 if not cfg.small else 1):
            report.skip(what, "deadline")
            continue
        report.write(**what, status="ok", **run_trainer_epoch(cfg, device, amp, batches))


def run_trainer_epoch(cfg: ReportConfig, device: torch.device, amp: bool,
                      batches: int) -> dict[str, Any]:
    """Two calls of ``train_one_epoch`` (the first warms up cudnn and the allocator); the second
    is timed and its host syncs counted (``model.engine.sync_count``)."""
    run = trainer_fixture(cfg, device, amp, batches)
    loop.train_one_epoch(**run)
    run["acc"] = loop.EpochAccumulator()
    sync(device)
    with cudnn_benchmark(True), count_host_syncs(device) as syncs:
        t0 = time.perf_counter()
        loop.train_one_epoch(**run)
        sync(device)
        seconds = time.perf_counter() - t0
    return {"images_per_s": batches * cfg.batches[0] / seconds, "seconds": seconds,
            "syncs": syncs.total, "syncs_per_step": syncs.total / batches,
            "sync_kinds": dict(syncs.by_kind), "sync_method": syncs.method,
            "loss_mean": run["acc"].loss_sum / max(run["acc"].batches, 1)}


def trainer_fixture(cfg: ReportConfig, device: torch.device, amp: bool,
                    batches: int) -> dict[str, Any]:
    """The keyword arguments of ``train_one_epoch``: model, optimiser, schedule and a list of
    pinned uint8 batches standing in for the DataLoader."""
    train_cfg = TrainConfig(shards="", manifest="", fold=1, out="", preset=cfg.preset,
                            batches_per_epoch=batches, batch_size=cfg.batches[0], amp=amp,
                            channels_last=True, quiet=True, device=str(device))
    model = build(cfg, device, channels_last=True)
    precision = choose_precision(device, amp)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                momentum=0.9, weight_decay=1e-3)
    gen = torch.Generator().manual_seed(0)
    pin = device.type == "cuda"
    distinct = []
    for _ in range(min(batches, 4)):
        images = torch.randint(0, 256, (cfg.batches[0], cfg.size, cfg.size, 3), generator=gen,
                               dtype=torch.uint8)
        targets = (torch.rand(cfg.batches[0], len(model.config.au_ids),
                              generator=gen) > 0.7).float()
        if pin:
            images, targets = images.pin_memory(), targets.pin_memory()
        distinct.append((images, targets, torch.arange(cfg.batches[0])))
    return dict(model=model, optimizer=optimizer,
                criterion=region_bce_criterion(model.config.au_ids),
                loader=[distinct[i % len(distinct)] for i in range(batches)], device=device,
                epoch=1, cfg=train_cfg, scaler=precision.grad_scaler(),
                scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
                acc=loop.EpochAccumulator(), stop=loop.StopRequest(),
                info=DistInfo())


def stage_end_to_end(report: Report) -> None:
    cfg = report.cfg
    _, manifest = ensure_shards(report, SMALL_FRAMES if cfg.small else 512)
    batches = 1 if cfg.small else 30
    out = Path(tempfile.mkdtemp(prefix="e2e-", dir=report.dir))
    train_cfg = TrainConfig(shards=str(manifest.parent / "shards"), manifest=str(manifest), fold=1,
                            out=str(out), preset=cfg.preset, epochs=2, batches_per_epoch=batches,
                            batch_size=cfg.batches[0], eval_batches=1 if cfg.small else 8,
                            eval_batch_size=cfg.batches[1], amp=True, quiet=True,
                            device=str(report.device), plot_every=2,
                            workers=min(8, os.cpu_count() or 1) if not cfg.small else 1)
    t0 = time.perf_counter()
    summary = train(train_cfg)
    wall = time.perf_counter() - t0
    history = summary_history(out)
    train_s = [row["seconds"] for row in history]
    report.write(kind="measurement", status="ok", epochs=len(history), batches=batches,
                 batch=cfg.batches[0], wall_s=wall, train_s_per_epoch=train_s,
                 train_images_per_s=[batches * cfg.batches[0] / s for s in train_s],
                 run_status=summary.get("status"), workers=train_cfg.workers,
                 config=asdict(train_cfg))


def summary_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.json"
    payload = json.loads(path.read_text()) if path.exists() else {}
    return payload.get("epochs", []) if isinstance(payload, dict) else payload

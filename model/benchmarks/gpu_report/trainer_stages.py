"""The ``trainer_epoch`` stage: the trainer's own ``train_one_epoch`` on in-memory batches (host
syncs counted), ``--amp`` and fp32, and the trainer's ``cuda_graphs`` off and on where the build
has the field."""
from __future__ import annotations

import time
from typing import Any

import torch

from ...engine import loop
from ...engine.distributed import DistInfo
from ...engine.losses import region_bce_criterion
from ...engine.precision import choose_precision
from ...engine.sync_count import count_host_syncs
from .ceiling import build
from .config import ReportConfig
from .report import Report, cudnn_benchmark
from .timing import sync
from .trainer_fields import NOT_AVAILABLE, graph_settings, has_field, train_config


def stage_trainer_epoch(report: Report) -> None:
    cfg, device = report.cfg, report.device
    batches = 2 if cfg.small else 30
    for amp in ((False,) if cfg.small else (True, False)):  # test mode: fp32 (CPU bf16 is slow)
        for graphs in graph_settings(device.type):
            what = {"amp": amp, "precision": choose_precision(device, amp).name,
                    "batches": batches, "batch": cfg.batches[0],
                    "cuda_graphs": graphs or _default_graphs()}
            # two epochs (a warm one, a timed one) and the model's build
            estimate = report.costs.steps_estimate(cfg.batches[0], 2 * batches,
                                                   0.5 if cfg.small else 5,
                                                   3 if cfg.small else 60, what["precision"],
                                                   device.type == "cuda")
            report.measure(what, estimate,
                           lambda _left, a=amp, g=graphs: run_trainer_epoch(cfg, device, a,
                                                                            batches, g))


def _default_graphs() -> str:
    return "auto (the default)" if has_field("cuda_graphs") else NOT_AVAILABLE


def run_trainer_epoch(cfg: ReportConfig, device: torch.device, amp: bool, batches: int,
                      graphs: str | None = None) -> dict[str, Any]:
    """Two calls of ``train_one_epoch`` (the first warms up cudnn and the allocator); the second
    is timed and its host syncs counted (``model.engine.sync_count``)."""
    run = trainer_fixture(cfg, device, amp, batches, graphs)
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


def trainer_fixture(cfg: ReportConfig, device: torch.device, amp: bool, batches: int,
                    graphs: str | None = None) -> dict[str, Any]:
    """The keyword arguments of ``train_one_epoch``: model, optimiser, schedule and a list of
    pinned uint8 batches standing in for the DataLoader; ``graphs``: the trainer's
    ``cuda_graphs`` value where the build has it (None: its default)."""
    train_cfg, _ = train_config({"cuda_graphs": graphs} if graphs else {}, shards="",
                                manifest="", fold=1, out="", preset=cfg.preset,
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

"""Train TRA-Net (or an ablation) on one fold of aligned DISFA shards.

    python -m model.train --shards SHARDS --manifest SHARDS/folds.json --fold 1 --out runs/fold1

The paper's recipe is the default: batches of 64 drawn by the weighted random sampler
(model.sampler), 100 batches an epoch, random horizontal flips, SGD (momentum 0.9, weight decay
0.001, lr 0.001), the sum of per-branch BCE losses, evaluation after every epoch and early
stopping after 10 epochs without a better mean F1. Unlike the paper, the model is selected on the
fold's validation subjects; ``--select-on test`` reproduces the paper's (optimistic) protocol and
every report then says so.

Layout follows torchvision's reference ``train.py``: ``load_data``, ``train_one_epoch``,
``evaluate`` and ``main`` are kept apart. Under ``torchrun`` every process trains on its own
sampler stream (seeded by rank) with ``batch_size / world_size`` frames a step, gradients are
averaged by DDP, evaluation counts are summed over ranks, and only rank 0 writes files.

Outputs in ``--out``: config.json, metrics.csv, metrics.json, loss.png, mean_f1.png,
per_au_f1.png, last.pt, best.pt, results.json and results.md (test metrics of best.pt).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from .augment import AlignmentJitter
from .checkpoint import (CheckpointError, capture_rng_state, check_compatible, load_checkpoint,
                         restore_rng_state, save_checkpoint)
from .distributed import (DistInfo, all_reduce_sum, gather_objects, init_distributed,
                          resolve_device)
from .data import (DataError, FoldSpec, ShardFrames, check_consistent, check_flip_symmetry,
                   collate_frames, evaluation_indices, fold_spec, open_shards)
from .early_stopping import EarlyStopping
from .losses import branch_bce_loss
from .metrics import PROBABILITY_THRESHOLD, AUMetrics, MetricAccumulator
from .records import results_markdown, write_json, write_metrics
from .sampler import (WeightedFrameSampler, au_weights_from_labels, expected_positive_rate,
                      frame_weights)
from .tranet import PRESETS, VARIANTS, TRANetConfig, build_model, load_backbone_weights
from .transforms import to_model_input

log = logging.getLogger("model.train")

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130
#: Options that may change when a run is resumed; every other one must match the stored run.
RESUME_OVERRIDABLE = ("epochs", "device", "workers", "eval_batch_size", "resume", "out",
                      "shards", "manifest", "threads", "quiet", "plot_every")


# ------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class TrainConfig:
    """One training run. Defaults are the paper's values where the paper gives one."""

    shards: str
    manifest: str
    fold: int
    out: str
    variant: str = "tranet"
    preset: str = "full"
    epochs: int = 100
    batches_per_epoch: int = 100
    batch_size: int = 64
    lr: float = 0.001
    lr_schedule: str = "constant"
    momentum: float = 0.9
    weight_decay: float = 0.001
    patience: int = 10
    select_on: str = "val"
    au_weights: bool = False
    sampler: str = "weighted"
    flip: bool = True
    jitter_scale: float = 0.0
    jitter_degrees: float = 0.0
    jitter_shift: float = 0.0
    threshold: int | None = None
    cameras: list[str] = field(default_factory=lambda: ["left"])
    image_size: int | None = None
    eval_batches: int | None = None
    eval_batch_size: int = 128
    workers: int = 2
    device: str = "auto"
    amp: bool = False
    channels_last: bool = False
    pretrained: str | None = None
    seed: int = 0
    resume: str | None = None
    threads: int | None = None
    quiet: bool = False
    plot_every: int = 1

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; choose one of {list(VARIANTS)}")
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}")
        if self.select_on not in ("val", "test"):
            raise ValueError("select_on must be 'val' or 'test'")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError("lr_schedule must be 'constant' or 'cosine'")
        if self.sampler not in ("weighted", "uniform"):
            raise ValueError("sampler must be 'weighted' or 'uniform'")
        for name in ("epochs", "batches_per_epoch", "batch_size", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.lr <= 0:
            raise ValueError("lr must be positive")


def protocol_note(select_on: str, threshold: int) -> str:
    """One line every report carries: how labels, decisions and model selection were made."""
    selection = ("model selected on the TEST subjects (the paper's protocol; optimistic, test-set "
                 "leakage)" if select_on == "test" else
                 "model selected on the held-out validation subjects (test subjects unseen)")
    return (f"labels: FACS intensity >= {threshold}; decision: sigmoid >= {PROBABILITY_THRESHOLD}; "
            f"{selection}; F1/accuracy pooled over all frames of the split")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m model.train", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--shards", help="folder of aligned shards (SN001_left.h5 ...); required "
                   "unless --resume")
    p.add_argument("--manifest", help="folds.json written by pipeline.build_folds; required "
                   "unless --resume")
    p.add_argument("--fold", type=int, help="fold number (from 1); required unless --resume")
    p.add_argument("--out", help="run folder (created); required unless --resume")
    p.add_argument("--variant", default="tranet", choices=list(VARIANTS),
                   help="model variant: TRA-Net or a Table 2 ablation")
    p.add_argument("--resume", default=None, metavar="RUN",
                   help="continue RUN (its last.pt) exactly where it stopped")
    add_training_options(p)
    return p


def add_training_options(p: argparse.ArgumentParser) -> None:
    """The recipe and runtime options (shared with model.crossval and model.demo)."""
    d = TrainConfig(shards="", manifest="", fold=1, out="")
    p.add_argument("--preset", default=d.preset, choices=list(PRESETS),
                   help="full = SENet-50 backbone; small = reduced CPU model (from scratch)")
    p.add_argument("--epochs", type=int, default=d.epochs, help="maximum number of epochs")
    p.add_argument("--batches-per-epoch", type=int, default=d.batches_per_epoch)
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="frames per optimiser step, summed over all DDP processes")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=["constant", "cosine"],
                   help="constant (the paper) or cosine decay to 0 over --epochs, stepped "
                        "every batch")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--patience", type=int, default=d.patience,
                   help="stop after this many epochs without a better mean F1")
    p.add_argument("--select-on", default=d.select_on, choices=["val", "test"],
                   help="split for early stopping / best.pt; 'test' is the paper's protocol "
                        "(optimistic) and is labelled so in every report")
    p.add_argument("--au-weights", default="off", choices=["on", "off"],
                   help="weight each AU's BCE by the fold's per-AU weights (sum K)")
    p.add_argument("--sampler", default=d.sampler, choices=["weighted", "uniform"],
                   help="weighted = the paper's sampler (model.sampler); uniform for comparison")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="disable the random horizontal flip")
    p.add_argument("--jitter-scale", type=float, default=d.jitter_scale,
                   help="alignment jitter (model.augment): random scale 1 +- this (default 0, "
                        "the paper's recipe; ~0.05 makes a model tolerant of dlib-aligned faces)")
    p.add_argument("--jitter-degrees", type=float, default=d.jitter_degrees,
                   help="alignment jitter: random rotation +- this many degrees (default 0)")
    p.add_argument("--jitter-shift", type=float, default=d.jitter_shift,
                   help="alignment jitter: random shift +- this fraction of the size (default 0)")
    p.add_argument("--threshold", default=None,
                   help="positive label = intensity >= this (FACS letter or 0-5); default: the "
                        "manifest's")
    p.add_argument("--cameras", nargs="+", default=d.cameras, choices=["left", "right"],
                   help="cameras whose shards are used")
    p.add_argument("--image-size", type=int, default=None,
                   help="network input size; frames are resized on the fly when the shards "
                        "differ (default: the shards' size)")
    p.add_argument("--eval-batches", type=int, default=None,
                   help="per-epoch evaluation on at most this many batches, spread evenly over "
                        "the split (final test evaluation always uses every frame)")
    p.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader worker processes")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision (float16 + GradScaler on CUDA, bfloat16 on CPU)")
    p.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    p.add_argument("--pretrained", default=None,
                   help="VGGFace2 SENet-50 weight file (senet50_ft_weight.pkl) for the backbone")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--plot-every", type=int, default=d.plot_every,
                   help="redraw the PNG curves every N epochs (always at the end)")


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """A TrainConfig from parsed options (unknown keys ignored), with ``overrides`` applied."""
    from pipeline.disfa import parse_threshold

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in {**vars(args), **overrides}.items() if k in known}
    if isinstance(values.get("au_weights"), str):
        values["au_weights"] = values["au_weights"] == "on"
    if isinstance(values.get("threshold"), str):
        values["threshold"] = parse_threshold(values["threshold"])
    return TrainConfig(**values)


def explicit_options(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Names of the options the command line actually gave (for the resume rules)."""
    probe = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            kwargs = {"dest": action.dest, "default": argparse.SUPPRESS}
            if action.nargs == 0:
                kwargs["action"] = "store_const"
                kwargs["const"] = True
            else:
                kwargs["nargs"] = action.nargs
            probe.add_argument(*action.option_strings, **kwargs)
    return set(vars(probe.parse_known_args(list(argv))[0]))


# ------------------------------------------------------------------------------------------------
# Interruption


class StopRequest:
    """Set by SIGINT/SIGTERM (or a callback); the loop stops at the next batch boundary.

    A second signal raises KeyboardInterrupt at once, for a stuck data loader.
    """

    def __init__(self) -> None:
        self.requested = False
        self.reason = ""
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def request(self, reason: str) -> None:
        self.requested, self.reason = True, reason

    def _handler(self, signum, _frame) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: keep serving until the trainer stops it
        if self.requested:
            raise KeyboardInterrupt
        self.request(signal.Signals(signum).name)
        log.warning("%s received: finishing the current batch, saving last.pt and exiting "
                    "(send again to abort at once)", signal.Signals(signum).name)

    def install(self) -> None:
        self._pid = os.getpid()
        if threading_is_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def threading_is_main() -> bool:
    # Python only lets the main thread install signal handlers.
    return threading.current_thread() is threading.main_thread()


class NonFiniteLossError(FloatingPointError):
    pass


# ------------------------------------------------------------------------------------------------
# Data


@dataclass
class FoldData:
    spec: FoldSpec
    threshold: int
    geometry: dict[str, Any]          # image_size (network input), nose/chin targets (scaled)
    alignment: dict[str, Any]         # shard attrs describing how frames were aligned
    train: ShardFrames
    sampler: WeightedFrameSampler
    train_loader: DataLoader
    select_loader: DataLoader
    test_loader: DataLoader
    au_weights: np.ndarray            # per-AU weights on the training frames (sum K)
    natural_rate: np.ndarray
    expected_rate: np.ndarray
    select_frames: int
    test_frames: int


def _loader_generator() -> torch.Generator:
    # DataLoader draws worker seeds from the global RNG unless given its own generator; keeping
    # the global stream untouched makes resumed runs match uninterrupted ones bit for bit.
    return torch.Generator().manual_seed(0)


def _eval_loader(dataset: ShardFrames, indices: np.ndarray, cfg: TrainConfig,
                 info: DistInfo, pin: bool, persistent: bool) -> DataLoader:
    mine = indices[info.rank::info.world]  # disjoint slices: counts add up to the whole split
    return DataLoader(Subset(dataset, mine.tolist()), batch_size=cfg.eval_batch_size,
                      shuffle=False, num_workers=cfg.workers, collate_fn=collate_frames,
                      pin_memory=pin, generator=_loader_generator(),
                      persistent_workers=persistent and cfg.workers > 0)


def load_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> FoldData:
    """Check the shards against the manifest and build the loaders. Fails before any training."""
    spec = fold_spec(cfg.manifest, cfg.fold)
    context = f"{spec.manifest} fold {spec.fold}"
    if not spec.subjects["train"]:
        raise DataError(f"{context}: no training subjects")
    if not spec.subjects["test"]:
        raise DataError(f"{context}: no test subjects")
    if cfg.select_on == "val" and not spec.subjects["val"]:
        raise DataError(f"{context}: no validation subjects to select the model on; rebuild the "
                        "folds with validation subjects or pass --select-on test (paper protocol)")
    threshold = cfg.threshold if cfg.threshold is not None else spec.threshold
    readers = {split: open_shards(cfg.shards, spec.subjects[split], cfg.cameras, context)
               for split in ("train", "val", "test")}
    geometry = check_consistent([r for rs in readers.values() for r in rs], spec)
    if cfg.flip:
        check_flip_symmetry(geometry, context)
    source_size = geometry["image_size"]
    size = cfg.image_size or source_size
    scale = size / source_size
    geometry = {"image_size": size, "source_image_size": source_size,
                "nose_target": [v * scale for v in geometry["nose_target"]],
                "chin_target": [v * scale for v in geometry["chin_target"]]}
    first = readers["train"][0]
    alignment = {"config": first.attrs.get("config", {}),
                 "pipeline_version": str(first.attrs.get("pipeline_version", "")),
                 "source_image_size": source_size}

    jitter = AlignmentJitter(cfg.jitter_scale, cfg.jitter_degrees, cfg.jitter_shift)
    datasets = {split: ShardFrames(rs, spec.au_ids, threshold, size,
                                   jitter=jitter if split == "train" else None) if rs else None
                for split, rs in readers.items()}
    train = datasets["train"]
    for split in ("train", "test") + (("val",) if cfg.select_on == "val" else ()):
        if datasets[split] is None or len(datasets[split]) == 0:
            raise DataError(f"{context}: the {split} subjects {spec.subjects[split]} have no frames")

    au_weights = au_weights_from_labels(train.labels)
    if spec.au_weights is not None and threshold == spec.threshold:
        if not np.allclose(spec.au_weights, au_weights, rtol=1e-3, atol=1e-4):
            log.warning("%s: au_weights %s differ from those of the training shards %s; using the "
                        "shards'", context, np.round(spec.au_weights, 4).tolist(),
                        np.round(au_weights, 4).tolist())
    weights = (frame_weights(train.labels, au_weights) if cfg.sampler == "weighted"
               else np.ones(len(train)))
    if cfg.batch_size % info.world:
        raise ValueError(f"--batch-size {cfg.batch_size} is not divisible by the {info.world} "
                         "processes")
    per_rank = cfg.batch_size // info.world
    # Each rank draws its own stream; seeds are spaced so no two (seed, rank) pairs collide.
    sampler = WeightedFrameSampler(weights, per_rank * cfg.batches_per_epoch,
                                   seed=cfg.seed * 100_003 + info.rank + 1, flip=cfg.flip,
                                   jitter=jitter.enabled)
    pin = device.type == "cuda"
    train_loader = DataLoader(train, batch_size=per_rank, sampler=sampler, drop_last=False,
                              num_workers=cfg.workers, collate_fn=collate_frames, pin_memory=pin,
                              generator=_loader_generator(), persistent_workers=cfg.workers > 0)
    select = datasets[cfg.select_on]
    select_idx = evaluation_indices(
        len(select), cfg.eval_batches * cfg.eval_batch_size if cfg.eval_batches else None)
    test = datasets["test"]
    return FoldData(
        spec=spec, threshold=threshold, geometry=geometry, alignment=alignment, train=train,
        sampler=sampler, train_loader=train_loader,
        select_loader=_eval_loader(select, select_idx, cfg, info, pin, persistent=True),
        test_loader=_eval_loader(test, np.arange(len(test)), cfg, info, pin, persistent=False),
        au_weights=au_weights, natural_rate=train.natural_positive_rate(),
        expected_rate=expected_positive_rate(train.labels, weights),
        select_frames=len(select_idx), test_frames=len(test),
    )


# ------------------------------------------------------------------------------------------------
# One epoch of training, one evaluation


@dataclass
class EpochAccumulator:
    """Running sums of the current epoch (saved mid-epoch so a resumed epoch logs whole)."""

    loss_sum: float = 0.0
    batches: int = 0
    frames: int = 0
    positives: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)


def _prepare(images: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = to_model_input(images.to(device, non_blocking=True))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _autocast(device: torch.device, enabled: bool):
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def train_one_epoch(
    model: torch.nn.Module,
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    cfg: TrainConfig,
    scaler: torch.amp.GradScaler,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    acc: EpochAccumulator,
    stop: StopRequest,
    info: DistInfo,
    on_batch_end: Callable[[int, int, float], None] | None = None,
) -> bool:
    """Train until the epoch's batches are done (True) or a stop is requested (False).

    ``acc`` carries on from a resumed mid-epoch state; ``acc.batches`` is the batch to start at.
    """
    model.train()
    total = cfg.batches_per_epoch
    bar = tqdm(total=total, initial=acc.batches, desc=f"epoch {epoch}", leave=False,
               disable=cfg.quiet or not info.is_main, dynamic_ncols=True)
    start = time.perf_counter()
    batches = iter(loader)
    try:
        while True:
            try:
                images, targets, _ = next(batches)
            except StopIteration:
                break
            except Exception:
                # A terminal Ctrl-C also reaches the DataLoader workers, which then exit; the
                # loader reports that as an error. The stop request is what counts.
                if stop.requested:
                    return False
                raise
            batch = acc.batches + 1
            x = _prepare(images, device, cfg.channels_last)
            y = targets.to(device, non_blocking=True)
            with _autocast(device, cfg.amp):
                logits = model(x)
            loss = criterion(logits.float(), y)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"epoch {epoch}, batch {batch}: the loss is "
                                         f"{loss.item()}; stopping (lower --lr, or check the "
                                         "input frames)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            value = float(loss.detach())
            acc.loss_sum += value
            acc.batches = batch
            acc.frames += len(y)
            pos = targets.sum(0).double().tolist()
            acc.positives = [a + b for a, b in zip(acc.positives, pos)] if acc.positives else pos
            bar.update(1)
            bar.set_postfix(loss=f"{acc.loss_sum / acc.batches:.4f}")
            if on_batch_end is not None:
                on_batch_end(epoch, batch, value)
            if _agree_stop(stop, info, device):
                return acc.batches >= total
    finally:
        acc.seconds += time.perf_counter() - start
        bar.close()
    return True


def _agree_stop(stop: StopRequest, info: DistInfo, device: torch.device) -> bool:
    """Every rank must stop at the same batch, or DDP's next all-reduce would hang."""
    if not info.enabled:
        return stop.requested
    flag = all_reduce_sum(torch.tensor([1.0 if stop.requested else 0.0]), info, device)
    return bool(flag.item() > 0)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    au_ids: Sequence[int],
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    *,
    amp: bool = False,
    channels_last: bool = False,
    info: DistInfo | None = None,
    desc: str = "eval",
    quiet: bool = True,
) -> AUMetrics:
    """Pooled per-AU F1/accuracy at 0.5 over every frame the loader yields (all ranks summed)."""
    info = info or DistInfo()
    model.eval()
    acc = MetricAccumulator(au_ids)
    for images, targets, _ in tqdm(loader, desc=desc, leave=False, disable=quiet):
        x = _prepare(images, device, channels_last)
        with _autocast(device, amp):
            logits = model(x).float()
        y = targets.to(device)
        acc.update(logits, y, float(criterion(logits, y)) if criterion else None)
    acc.load_counts_tensor(all_reduce_sum(acc.counts_tensor(), info, device))
    return acc.compute()


# ------------------------------------------------------------------------------------------------
# The run


def setup_logging(quiet: bool = False, rank: int = 0) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def _resume_config(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, dict[str, Any]]:
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
    values = {k: v for k, v in stored.items() if k in known}
    conflicts = []
    for name in explicit:
        if name in RESUME_OVERRIDABLE or name not in values:
            continue
        mine = getattr(cfg, name)
        if mine != values[name]:
            conflicts.append(f"--{name.replace('_', '-')} {mine!r} (run has {values[name]!r})")
    if values.get("lr_schedule") == "cosine" and "epochs" in explicit \
            and cfg.epochs != values.get("epochs"):
        conflicts.append(f"--epochs {cfg.epochs!r} (the cosine schedule spans the run's "
                         f"{values.get('epochs')} epochs)")
    if conflicts:
        raise ValueError(f"{path}: cannot resume with different settings: {', '.join(conflicts)}")
    for name in RESUME_OVERRIDABLE:
        if name in explicit or name == "resume":
            values[name] = getattr(cfg, name)
    values["out"] = str(run_dir)
    return TrainConfig(**values), state


def train(
    cfg: TrainConfig,
    *,
    explicit: set[str] | None = None,
    on_batch_end: Callable[[int, int, float], None] | None = None,
    stop: StopRequest | None = None,
) -> dict[str, Any]:
    """Run (or resume) one training run; returns the summary also written to results.json.

    Raises DataError/CheckpointError/ValueError on bad input before training starts, and
    NonFiniteLossError if the loss turns NaN/inf. A stop request (SIGINT/SIGTERM or ``stop``)
    saves last.pt and returns with ``status == "interrupted"``.
    """
    info = init_distributed(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif info.enabled and not torch.cuda.is_available():
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get(
            "LOCAL_WORLD_SIZE", info.world))))
    resume_state = None
    if cfg.resume:
        cfg, resume_state = _resume_config(cfg, explicit or set())
    device = resolve_device(cfg.device, info)
    run_dir = Path(cfg.out)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)

    data = load_data(cfg, info, device)
    au_ids = list(data.spec.au_ids)
    note = protocol_note(cfg.select_on, data.threshold)
    model_cfg = TRANetConfig(
        variant=cfg.variant, preset=cfg.preset, au_ids=tuple(au_ids),
        image_size=data.geometry["image_size"],
        center=tuple(v / data.geometry["image_size"] for v in data.geometry["nose_target"]))
    if resume_state is not None:
        check_compatible(resume_state, Path(cfg.resume) / "last.pt", variant=cfg.variant,
                         au_ids=au_ids, image_size=data.geometry["image_size"])
        if int(resume_state.get("world_size", 1)) != info.world:
            raise CheckpointError(f"{cfg.resume}/last.pt: saved by {resume_state['world_size']} "
                                  f"processes; resume with the same number (got {info.world})")

    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = build_model(model_cfg)
    if cfg.pretrained and resume_state is None:
        report = load_backbone_weights(model, cfg.pretrained)
        log.info("loaded backbone weights from %s (%s)", cfg.pretrained,
                 {k: len(v) for k, v in report.items()} if isinstance(report, dict) else report)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp and device.type == "cuda")
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=cfg.epochs * cfg.batches_per_epoch)
        if cfg.lr_schedule == "cosine" else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0))
    loss_weights = (torch.as_tensor(data.au_weights, dtype=torch.float32, device=device)
                    if cfg.au_weights else None)
    branch_groups = model.branch_groups

    def criterion(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return branch_bce_loss(logits, targets, branch_groups, loss_weights)

    stopper = EarlyStopping(patience=cfg.patience)
    history: list[dict[str, Any]] = []
    completed, acc = 0, EpochAccumulator()
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        if "scaler" in resume_state and resume_state["scaler"]:
            scaler.load_state_dict(resume_state["scaler"])
        stopper.load_state_dict(resume_state["early_stopping"])
        history = list(resume_state.get("history", []))
        completed = int(resume_state["progress"]["epoch"])
        acc = EpochAccumulator(**resume_state["progress"]["accumulator"])
        data.sampler.load_state_dict(resume_state["sampler"][info.rank])
        restore_rng_state(resume_state["rng"][info.rank])
        log.info("resuming %s after epoch %d, batch %d (best mean F1 %.4f at epoch %d)",
                 cfg.resume, completed, acc.batches, stopper.best_score, stopper.best_epoch)
    if info.enabled:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    payload_base = {
        "model_config": asdict(model_cfg),
        "data": {"au_ids": au_ids, "threshold": data.threshold,
                 "image_size": data.geometry["image_size"],
                 "nose_target": data.geometry["nose_target"],
                 "chin_target": data.geometry["chin_target"],
                 "alignment": data.alignment, "fold": cfg.fold,
                 "subjects": data.spec.subjects, "manifest": str(cfg.manifest)},
        "train_config": asdict(cfg),
        "protocol": note,
    }
    header = {
        "protocol": note, "select_on": cfg.select_on, "au_ids": au_ids,
        "natural_positive_rate": data.natural_rate.tolist(),
        "expected_drawn_positive_rate": data.expected_rate.tolist(),
        "au_weights": data.au_weights.tolist(), "sampler": cfg.sampler,
        "subjects": data.spec.subjects,
    }
    if info.is_main:
        write_json(run_dir / "config.json", {
            "train_config": asdict(cfg), "model_config": asdict(model_cfg),
            "data": payload_base["data"], "protocol": note, "world_size": info.world,
            "sampler": {"kind": cfg.sampler, "au_weights": data.au_weights.tolist(),
                        "frame_weight": "max(1, sum of the weights of the frame's positive AUs)",
                        "natural_positive_rate": data.natural_rate.tolist(),
                        "expected_drawn_positive_rate": data.expected_rate.tolist()},
            "frames": {"train": len(data.train), "select": data.select_frames,
                       "test": data.test_frames},
            "trainable_parameters": sum(p.numel() for p in params),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
        })
        log.info("fold %d: %d train frames (%s), selection on %s (%d frames), %d test frames",
                 cfg.fold, len(data.train), ", ".join(data.spec.subjects["train"]),
                 cfg.select_on, data.select_frames, data.test_frames)
        log.info("%s", note)
        log.info("per-AU positive rate: natural %s -> expected under the sampler %s",
                 _fmt_rates(au_ids, data.natural_rate), _fmt_rates(au_ids, data.expected_rate))

    def checkpoint_state(progress_epoch: int, accumulator: EpochAccumulator,
                         consumed: int | None) -> dict[str, Any]:
        # Collective: every rank contributes its sampler and RNG streams.
        samplers = gather_objects(data.sampler.state_dict(consumed), info)
        rngs = gather_objects(capture_rng_state(), info)
        return {**payload_base, "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(),
                "sampler": samplers, "rng": rngs, "early_stopping": stopper.state_dict(),
                "history": history, "epoch": progress_epoch, "world_size": info.world,
                "progress": {"epoch": progress_epoch, "accumulator": accumulator.state_dict()}}

    stop = stop or StopRequest()
    stop.install()
    status = "finished"
    try:
        epoch = completed + 1
        while epoch <= cfg.epochs and not stopper.should_stop:
            done = train_one_epoch(model, criterion, optimizer, data.train_loader, device, epoch,
                                   cfg, scaler, scheduler, acc, stop, info, on_batch_end)
            if not done:
                consumed = acc.batches * data.train_loader.batch_size
                state = checkpoint_state(epoch - 1, acc, consumed)
                if info.is_main:
                    save_checkpoint(run_dir / "last.pt", state)
                    log.warning("stopped (%s) in epoch %d after batch %d; saved %s; continue with "
                                "--resume %s", stop.reason or "request", epoch, acc.batches,
                                run_dir / "last.pt", run_dir)
                status = "interrupted"
                break
            totals = all_reduce_sum(torch.tensor([acc.loss_sum, acc.batches, acc.frames,
                                                  *acc.positives], dtype=torch.float64),
                                    info, device)
            train_loss = float(totals[0] / totals[1])
            drawn = (totals[3:] / totals[2]).tolist()
            metrics = evaluate(_unwrap(model), data.select_loader, device, au_ids, criterion,
                               amp=cfg.amp, channels_last=cfg.channels_last, info=info,
                               desc=f"eval {cfg.select_on}", quiet=cfg.quiet or not info.is_main)
            improved = stopper.step(metrics.mean_f1, epoch)
            row = {"epoch": epoch, "train_loss": train_loss, "seconds": acc.seconds,
                   "lr": optimizer.param_groups[0]["lr"],
                   "select_on": cfg.select_on, "eval": metrics.as_dict(),
                   "drawn_positive_rate": drawn,
                   "natural_positive_rate": data.natural_rate.tolist(),
                   "best_epoch": stopper.best_epoch}
            history.append(row)
            acc = EpochAccumulator()
            state = checkpoint_state(epoch, acc, None)
            if info.is_main:
                if improved:
                    best = {k: v for k, v in state.items()
                            if k not in ("optimizer", "sampler", "rng", "scaler", "scheduler")}
                    save_checkpoint(run_dir / "best.pt", {**best, "metrics": metrics.as_dict()})
                save_checkpoint(run_dir / "last.pt", state)
                write_metrics(run_dir, history, au_ids, header)
                if epoch % max(cfg.plot_every, 1) == 0:
                    _plot(run_dir, history, au_ids, cfg)
                log.info("epoch %d: train loss %.4f | %s mean F1 %.4f acc %.4f%s | %.1fs | positive "
                         "rate drawn/natural %s", epoch, train_loss, cfg.select_on,
                         metrics.mean_f1, metrics.mean_accuracy, " (best)" if improved else "",
                         row["seconds"], " ".join(f"AU{a}:{d:.3f}/{n:.3f}" for a, d, n in
                                                  zip(au_ids, drawn, data.natural_rate)))
            if _agree_stop(stop, info, device):
                if info.is_main:
                    log.warning("stopped (%s) after epoch %d; saved %s; continue with --resume %s",
                                stop.reason or "request", epoch, run_dir / "last.pt", run_dir)
                status = "interrupted"
                break
            epoch += 1
        if status == "finished" and stopper.should_stop and info.is_main:
            log.info("early stop: no better %s mean F1 for %d epochs (best %.4f at epoch %d)",
                     cfg.select_on, cfg.patience, stopper.best_score, stopper.best_epoch)
    finally:
        stop.uninstall()

    if info.is_main and history:
        _plot(run_dir, history, au_ids, cfg)
    summary: dict[str, Any] = {"status": status, "run_dir": str(run_dir), "protocol": note,
                               "select_on": cfg.select_on, "fold": cfg.fold,
                               "variant": cfg.variant, "best_epoch": stopper.best_epoch,
                               "best_select_mean_f1": stopper.best_score,
                               "epochs_run": len(history)}
    if status == "finished" and history:
        summary["test"] = final_test(model, run_dir, data, device, cfg, au_ids, criterion,
                                     info).as_dict()
        if info.is_main:
            write_json(run_dir / "results.json", summary)
            (run_dir / "results.md").write_text(results_markdown(
                f"Fold {cfg.fold}, {cfg.variant}: test subjects, best epoch "
                f"{stopper.best_epoch}", summary["test"], note))
            log.info("fold %d test (best epoch %d): mean F1 %.4f, mean accuracy %.4f  [%s]",
                     cfg.fold, stopper.best_epoch, summary["test"]["mean_f1"],
                     summary["test"]["mean_accuracy"], note)
    if info.enabled:
        dist.barrier()
    return summary


def final_test(model, run_dir: Path, data: FoldData, device, cfg: TrainConfig, au_ids,
               criterion, info: DistInfo) -> AUMetrics:
    """best.pt's weights on every test frame."""
    if info.enabled:
        dist.barrier()  # rank 0 may still be writing best.pt
    best = load_checkpoint(run_dir / "best.pt", map_location="cpu")
    _unwrap(model).load_state_dict(best["model"])
    return evaluate(_unwrap(model), data.test_loader, device, au_ids, criterion, amp=cfg.amp,
                    channels_last=cfg.channels_last, info=info, desc="test",
                    quiet=cfg.quiet or not info.is_main)


def _plot(run_dir: Path, history, au_ids, cfg: TrainConfig) -> None:
    from .plots import plot_history

    try:
        plot_history(history, au_ids, run_dir, split=cfg.select_on,
                     title=f"fold {cfg.fold}, {cfg.variant}")
    except Exception as err:  # a plotting problem must never cost a training run
        log.warning("could not draw the plots: %s", err)


def _fmt_rates(au_ids: Sequence[int], rates: Sequence[float]) -> str:
    return " ".join(f"AU{a}:{r:.3f}" for a, r in zip(au_ids, rates))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.resume:
        missing = [f"--{n}" for n in ("shards", "manifest", "fold", "out") if getattr(args, n) is None]
        if missing:
            parser.error(f"the following arguments are required: {', '.join(missing)}")
    else:
        # Placeholders: the stored configuration of the run supplies what was not given.
        for name, placeholder in (("shards", ""), ("manifest", ""), ("fold", 0), ("out", "")):
            if getattr(args, name) is None:
                setattr(args, name, placeholder)
    setup_logging(args.quiet, int(os.environ.get("RANK", "0")))
    try:
        cfg = config_from_args(args)
        summary = train(cfg, explicit=explicit_options(parser, argv))
    except (DataError, CheckpointError, ValueError) as err:
        log.error("%s", err)
        return EXIT_ERROR
    except NonFiniteLossError as err:
        log.error("%s", err)
        return EXIT_ERROR
    except KeyboardInterrupt:
        log.error("aborted")
        return EXIT_INTERRUPTED
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if summary["status"] == "interrupted":
        return EXIT_INTERRUPTED
    if "test" in summary and int(os.environ.get("RANK", "0")) == 0:
        test = summary["test"]
        print(f"\n{results_markdown(f'Fold {cfg.fold}, {cfg.variant}', test, summary['protocol'])}")
        print(f"run folder: {summary['run_dir']} (metrics.csv, metrics.json, *.png, best.pt)")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())

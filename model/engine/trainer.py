"""The training engine: one fold's data, the epoch loop, evaluation, selection and final test.

Layout follows torchvision's reference ``train.py``: ``load_data``, ``train_one_epoch``,
``evaluate`` and ``main`` are kept apart. Under ``torchrun`` every process trains on its own
sampler stream (seeded by rank) with ``batch_size`` frames a step (``--batch-size`` is per GPU,
as in torchvision and timm; a recipe's batch is global and split), gradients are
averaged by DDP, evaluation counts are summed over ranks, and only rank 0 writes files.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import signal
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
from .checkpoint import (CheckpointError, capture_rng_state, check_compatible, check_shapes,
                         load_checkpoint, restore_rng_state, save_checkpoint)
from .distributed import (DistInfo, all_reduce_sum, gather_objects, init_distributed,
                          resolve_device)
from .data import (DataError, FoldSpec, ShardFrames, check_consistent, check_flip_symmetry,
                   check_frame_counts, collate_frames, default_workers, evaluation_indices,
                   load_manifest, open_shards, shard_origin, single_threaded_opencv)
from .config import (LEGACY_TRAIN_CONFIG, TrainConfig, batch_record, effective_lr,
                     hold_global_batch, protocol_note, differs, threshold_note, world_bound)
from .all_subjects import make_stopper, needs_test, run_subjects
from .early_stopping import EarlyStopping
from .run_card import finish_all_subjects, record_held_out_metrics
from ..cards.build import run_card, write_card_file
from ..cards.card import CARD_KEY
from .losses import task_loss_for
from .precision import Precision, choose_precision
from .progress import EpochBar, RunClock, best_words, epoch_line, metric_words
from .selection import selection_record
from .step_log import StepLog
from ..evaluation.intensity import IntensityAccumulator, IntensityMetrics
from ..evaluation.metrics import PROBABILITY_THRESHOLD, AUMetrics, MetricAccumulator
from ..evaluation.ranking import logits_to_probabilities, tune_logit_thresholds
from ..evaluation.provenance import recipe_line
from ..evaluation.records import write_json, write_metrics
from ..evaluation.run_report import add_test_metrics, result_log_line, run_markdown
from ..evaluation.tasks import reports_occurrence, task_record
from .sampler import (WeightedFrameSampler, au_weights_from_labels, expected_positive_rate,
                      task_frame_weights)
from ..nets.backbones import default_frozen_blocks
from ..nets.regions import ALL_AUS
from ..nets.tranet import TRANetConfig, build_model, config_from_record
from ..weights.pretrained import load_pretrained
from ..nets.transforms import InputTransform, to_model_input

log = logging.getLogger("model.train")

#: Options that may change when a run is resumed; every other one must match the stored run.
RESUME_OVERRIDABLE = ("epochs", "device", "workers", "eval_batch_size", "resume", "out",
                      "shards", "manifest", "threads", "quiet", "plot_every", "compile",
                      "cache_frames_mb")


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
    tune_loader: DataLoader | None    # every frame of the --tune-threshold split (None: off)
    au_weights: np.ndarray            # per-AU weights on the training frames (sum K)
    natural_rate: np.ndarray
    expected_rate: np.ndarray
    select_frames: int
    test_frames: int
    selection: dict[str, Any] = field(default_factory=dict)  # selection.selection_record


def _loader_generator() -> torch.Generator:
    # DataLoader draws worker seeds from the global RNG unless given its own generator; keeping
    # the global stream untouched makes resumed runs match uninterrupted ones bit for bit.
    return torch.Generator().manual_seed(0)


def loader_workers(cfg: TrainConfig) -> int:
    """``--workers``, or by default this process's share of the node's CPU cores."""
    if cfg.workers is not None:
        return cfg.workers
    return default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _loader(dataset, cfg: TrainConfig, device: torch.device, persistent: bool,
            **kwargs) -> DataLoader:
    workers = loader_workers(cfg)
    single_threaded_opencv(workers)
    return DataLoader(dataset, num_workers=workers, collate_fn=collate_frames,
                      pin_memory=device.type == "cuda", generator=_loader_generator(),
                      persistent_workers=persistent and workers > 0, **kwargs)


def _eval_loader(dataset: ShardFrames, indices: np.ndarray, cfg: TrainConfig,
                 info: DistInfo, device: torch.device, persistent: bool) -> DataLoader:
    mine = indices[info.rank::info.world]  # disjoint slices: counts add up to the whole split
    return _loader(Subset(dataset, mine.tolist()), cfg, device, persistent,
                   batch_size=cfg.eval_batch_size, shuffle=False)


def _check_subjects(spec: FoldSpec, cfg: TrainConfig, context: str) -> None:
    if not spec.subjects["train"]:
        raise DataError(f"{context}: no training subjects")
    if not spec.subjects["test"] and not cfg.all_subjects:
        raise DataError(f"{context}: no test subjects")
    if cfg.tune_threshold == "val" and not spec.subjects["val"]:
        raise DataError(f"{context}: no validation subjects to tune the decision thresholds on")
    if cfg.select_on == "val" and not spec.subjects["val"]:
        raise DataError(f"{context}: no validation subjects to select the model on; rebuild the "
                        "folds with validation subjects or pass --select-on test (paper protocol)")


def _geometry(cfg: TrainConfig, spec: FoldSpec, readers: dict[str, list],
              context: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(network input geometry, the shards' alignment record), checked across all shards."""
    geometry = check_consistent([r for rs in readers.values() for r in rs], spec)
    check_frame_counts(spec, [r for rs in readers.values() for r in rs],
                       load_manifest(cfg.manifest).get("camera", "left"))
    if cfg.flip:
        check_flip_symmetry(geometry, context)
    source_size = geometry["image_size"]
    size = cfg.image_size or source_size
    scale = size / source_size
    first = readers["train"][0]
    alignment = {"config": first.attrs.get("config", {}),
                 "pipeline_version": str(first.attrs.get("pipeline_version", "")),
                 "source_image_size": source_size,
                 **shard_origin([r for rs in readers.values() for r in rs])}
    return ({"image_size": size, "source_image_size": source_size,
             "nose_target": [v * scale for v in geometry["nose_target"]],
             "chin_target": [v * scale for v in geometry["chin_target"]]}, alignment)


def _datasets(cfg: TrainConfig, spec: FoldSpec, readers: dict[str, list], threshold: int,
              size: int, jitter: AlignmentJitter, context: str) -> dict[str, ShardFrames | None]:
    datasets = {split: ShardFrames(rs, spec.au_ids, threshold, size,
                                   jitter=jitter if split == "train" else None) if rs else None
                for split, rs in readers.items()}
    for split in needs_test(cfg) + (("val",) if cfg.select_on == "val" else ()):
        if datasets[split] is None or len(datasets[split]) == 0:
            raise DataError(f"{context}: the {split} subjects {spec.subjects[split]} have no frames")
    _cache_frames(cfg, [datasets["train"], datasets[cfg.select_on]])
    return datasets


def _cache_frames(cfg: TrainConfig, datasets: Sequence[ShardFrames]) -> None:
    """Decode the frames read every epoch (the training and selection splits) into memory once,
    when they fit ``--cache-frames-mb`` (a budget per training process). Not with DataLoader
    workers started by spawn/forkserver: each would get a pickled copy, where fork shares one."""
    import torch.multiprocessing as mp

    distinct = list({id(d): d for d in datasets}.values())
    total = sum(d.decoded_bytes for d in distinct)
    copied = (cfg.workers or 0) > 0 and mp.get_start_method(allow_none=True) not in (None, "fork")
    if not cfg.cache_frames_mb or total > cfg.cache_frames_mb * 2**20 or copied:
        log.debug("frames not cached in memory (%.0f MB, --cache-frames-mb %d)", total / 2**20,
                  cfg.cache_frames_mb)
        return
    start = time.perf_counter()
    for dataset in distinct:
        dataset.preload()
    log.info("decoded %d frames (%.0f MB) into memory in %.1f s (--cache-frames-mb %d)",
             sum(len(d) for d in distinct), total / 2**20, time.perf_counter() - start,
             cfg.cache_frames_mb)


def _au_weights(spec: FoldSpec, train: ShardFrames, threshold: int, context: str) -> np.ndarray:
    au_weights = au_weights_from_labels(train.labels)
    if spec.au_weights is not None and threshold == spec.threshold:
        if not np.allclose(spec.au_weights, au_weights, rtol=1e-3, atol=1e-4):
            log.warning("%s: au_weights %s differ from those of the training shards %s; using the "
                        "shards'", context, np.round(spec.au_weights, 4).tolist(),
                        np.round(au_weights, 4).tolist())
    return au_weights


def load_data(cfg: TrainConfig, info: DistInfo, device: torch.device) -> FoldData:
    """Check the shards against the manifest and build the loaders. Fails before any training.

    ``--batch-size`` is per process (per GPU): every rank draws its own ``batch_size`` frames a
    step from its own sampler stream, so the global batch is ``batch_size * world``."""
    spec = run_subjects(cfg)
    context = f"{spec.manifest} fold {spec.fold}"
    _check_subjects(spec, cfg, context)
    threshold = cfg.threshold if cfg.threshold is not None else spec.threshold
    readers = {split: open_shards(cfg.shards, spec.subjects[split], cfg.cameras, context, spec)
               for split in ("train", "val", "test")}
    geometry, alignment = _geometry(cfg, spec, readers, context)
    jitter = AlignmentJitter(cfg.jitter_scale, cfg.jitter_degrees, cfg.jitter_shift)
    datasets = _datasets(cfg, spec, readers, threshold, geometry["image_size"], jitter, context)
    train = datasets["train"]
    au_weights = _au_weights(spec, train, threshold, context)
    weights = (task_frame_weights(cfg.task, train.labels, train.intensity)
               if cfg.sampler == "weighted" else np.ones(len(train)))
    # Each rank draws its own stream; seeds are spaced so no two (seed, rank) pairs collide.
    sampler = WeightedFrameSampler(weights, cfg.batch_size * cfg.batches_per_epoch,
                                   seed=cfg.seed * 100_003 + info.rank + 1, flip=cfg.flip,
                                   jitter=jitter.enabled)
    select, test = datasets[cfg.select_on], datasets["test"]
    select_idx = evaluation_indices(
        len(select), cfg.eval_batches * cfg.eval_batch_size if cfg.eval_batches else None)
    tune = datasets[cfg.tune_threshold] if cfg.tune_threshold else None
    return FoldData(
        spec=spec, threshold=threshold, geometry=geometry, alignment=alignment, train=train,
        sampler=sampler, train_loader=_loader(train, cfg, device, True, sampler=sampler,
                                              batch_size=cfg.batch_size, drop_last=False),
        select_loader=_eval_loader(select, select_idx, cfg, info, device, persistent=True),
        test_loader=(_eval_loader(test, np.arange(len(test)), cfg, info, device, False)
                     if test is not None else None),
        tune_loader=(_eval_loader(tune, np.arange(len(tune)), cfg, info, device, False)
                     if tune is not None else None),
        au_weights=au_weights, natural_rate=train.natural_positive_rate(),
        expected_rate=expected_positive_rate(train.labels, weights),
        select_frames=len(select_idx), test_frames=len(test) if test is not None else 0,
        selection=selection_record(select, select_idx, spec.au_ids, cfg.select_on, spec.fold,
                                   warn=info.is_main),
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


#: Training steps between the host's looks at the device: the losses of the steps since the last
#: look are copied over at once, the non-finite check and (under DDP) the agreement to stop are
#: made then, and the bar's loss is refreshed (the bar itself moves every step, from the host
#: counter). Every step's own synchronisations would stall the GPU.
SYNC_EVERY = 20


def _prepare(images: torch.Tensor, device: torch.device, channels_last: bool,
             transform: InputTransform) -> torch.Tensor:
    x = to_model_input(images.to(device, non_blocking=True), transform)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_step(model, criterion, optimizer, scaler, scheduler, images, targets, device, cfg,
               precision, transform: InputTransform | None = None, index=None,
               frames=None) -> torch.Tensor:
    """One optimiser step; returns the loss (on the device, not waited for).

    ``transform`` defaults to the model's own input transform (looked up each call; the epoch
    loop passes it once). ``index`` and ``frames`` (the batch's frame indices and their
    ShardFrames) feed an intensity loss."""
    if transform is None:
        transform = _unwrap(model).input_transform
    x = _prepare(images, device, cfg.channels_last, transform)
    y = targets.to(device, non_blocking=True)
    loss = _forward_loss(model, criterion, x, y, device, precision, index, frames)[0]
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    return loss


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
    clock: RunClock | None = None,
) -> bool:
    """Train until the epoch's batches are done (True) or a stop is requested (False).

    ``acc`` carries on from a resumed mid-epoch state; ``acc.batches`` is the batch to start at.
    The host waits for the device only every ``SYNC_EVERY`` steps (and when ``on_batch_end``,
    which gets each step's loss as a float, is given); the bar moves every step. ``clock``: the
    run's (for its ETA), else one for this epoch alone.
    """
    model.train()
    total, precision = cfg.batches_per_epoch, choose_precision(device, cfg.amp)
    transform = _unwrap(model).input_transform  # the one this model is trained with
    clock = clock or RunClock(epoch, total, epoch - 1, acc.batches)
    bar = EpochBar(epoch, total, acc.batches, clock,
                   disable=True if cfg.quiet or not info.is_main else None)  # None: off if no tty
    steps = StepLog(acc, total, device)
    start = time.perf_counter()
    try:
        frames = _shard_frames(loader) if _uses_intensity(criterion) else None
        for images, targets, index in _batches(loader, stop):
            batch = acc.batches + 1
            loss = train_step(model, criterion, optimizer, scaler, scheduler, images, targets,
                              device, cfg, precision, transform, index=index, frames=frames)
            steps.record(batch, loss, targets)
            bar.step(batch)
            if on_batch_end is not None:
                on_batch_end(epoch, batch, float(loss.detach()))
            at_sync = batch % SYNC_EVERY == 0 or batch >= total
            if (at_sync or (stop.requested and not info.enabled)) and \
                    _sync_point(steps, bar, stop, info, device, epoch):
                return acc.batches >= total
    finally:
        steps.flush()
        acc.seconds += time.perf_counter() - start
        bar.close()
    return not stop.requested or acc.batches >= total


def _batches(loader, stop: StopRequest):
    """The loader's batches; a loader error after a stop request ends the epoch quietly."""
    batches = iter(loader)
    while True:
        try:
            yield next(batches)
        except StopIteration:
            return
        except Exception:
            # A terminal Ctrl-C also reaches the DataLoader workers, which then exit; the
            # loader reports that as an error. The stop request is what counts.
            if stop.requested:
                return
            raise


def _sync_point(steps: StepLog, bar: EpochBar, stop: StopRequest, info: DistInfo,
                device: torch.device, epoch: int) -> bool:
    """Copy the losses over, check them, show their mean on the bar; True when every rank
    agrees to stop.

    A non-finite loss on any rank stops every rank here (not at the collective timeout)."""
    acc = steps.acc
    bad = steps.flush()
    stop_all, bad_any = _agree(stop.requested, bad is not None, info, device)
    if bad_any:
        where = (f"batch {bad[0]} (seen at batch {bad[1]})" if bad
                 else f"batch <= {acc.batches} of another process")
        raise NonFiniteLossError(f"epoch {epoch}, {where}: the loss is not finite; stopping "
                                 "(lower --lr, or check the input frames)")
    bar.synced(acc.loss_sum / max(acc.batches, 1))
    return stop_all


def _agree(stop: bool, bad: bool, info: DistInfo, device: torch.device) -> tuple[bool, bool]:
    """(any rank asks to stop, any rank saw a non-finite loss): one all-reduce under DDP."""
    if not info.enabled:
        return stop, bad
    flags = all_reduce_sum(torch.tensor([float(stop), float(bad)]), info, device)
    return bool(flags[0] > 0), bool(flags[1] > 0)


def _uses_intensity(criterion: Any) -> bool:
    return bool(getattr(criterion, "uses_intensity", False))


def _forward_loss(model: torch.nn.Module, criterion: Callable | None, x: torch.Tensor,
                  y: torch.Tensor, device: torch.device, precision: Precision,
                  index: torch.Tensor | None = None, frames: ShardFrames | None = None,
                  with_intensity: bool = False
                  ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None,
                             torch.Tensor | None]:
    """(loss or None, logits, intensity or None, intensity targets or None) of one batch.

    Intensity targets are looked up on the host by the frames' global ``index`` in ``frames``
    (the batches carry only the occurrence labels) and copied without waiting; nothing here
    synchronises with the device."""
    with_intensity = with_intensity or _uses_intensity(criterion)
    with precision.autocast():
        out = model(x, with_intensity=True) if with_intensity else model(x)
    logits, intensity = (out[0].float(), out[1].float()) if with_intensity else (out.float(), None)
    target_r = None
    if intensity is not None:
        if frames is None or index is None:
            raise ValueError("intensity targets need the batch's frame index and its ShardFrames")
        target_r = frames.intensities(index, ALL_AUS).to(device, non_blocking=True)
    loss = None
    if criterion is not None:
        loss = (criterion(logits, y, intensity, target_r) if _uses_intensity(criterion)
                else criterion(logits, y))
    return loss, logits, intensity, target_r


def _agree_stop(stop: StopRequest, info: DistInfo, device: torch.device) -> bool:
    """Every rank must stop at the same batch, or DDP's next all-reduce would hang."""
    return _agree(stop.requested, False, info, device)[0]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    au_ids: Sequence[int],
    criterion: Callable | None = None,
    *,
    amp: bool = False,
    channels_last: bool = False,
    info: DistInfo | None = None,
    desc: str = "eval",
    quiet: bool = True,
    by_subject: bool = False,
    scores: bool = False,
    thresholds: float | Sequence[float] | None = None,
) -> AUMetrics:
    """Pooled per-AU F1/accuracy at 0.5 (or per-AU ``thresholds``) over every frame the loader
    yields (all ranks summed); ``by_subject`` keeps the counts per subject, ``scores`` adds
    ROC-AUC and average precision."""
    return run_evaluation(model, loader, device, au_ids, criterion, amp=amp,
                          channels_last=channels_last, info=info, desc=desc, quiet=quiet,
                          by_subject=by_subject, scores=scores, thresholds=thresholds).compute()


def evaluate_tasks(model: torch.nn.Module, loader: DataLoader, device: torch.device,
                   au_ids: Sequence[int], criterion: Callable | None = None, **kwargs: Any
                   ) -> tuple[AUMetrics, IntensityMetrics | None]:
    """``evaluate``'s occurrence metrics, plus ICC/r/MAE of the 12 coded AUs (means over
    ``au_ids``) when the model has an intensity head (None otherwise)."""
    acc, regression = run_task_evaluation(model, loader, device, au_ids, criterion, **kwargs)
    return acc.compute(), regression.compute() if regression is not None else None


def _shard_frames(loader: DataLoader) -> ShardFrames | None:
    dataset = getattr(loader, "dataset", None)  # None for a plain list of batches
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, ShardFrames) else None


def run_evaluation(model, loader, device, au_ids, criterion=None, **kwargs) -> MetricAccumulator:
    """The filled occurrence accumulator of one pass over ``loader`` (see ``evaluate``); an
    intensity head, if any, is not scored."""
    return run_task_evaluation(model, loader, device, au_ids, criterion, intensity=False,
                               **kwargs)[0]


@torch.no_grad()
def run_task_evaluation(model, loader, device, au_ids, criterion=None, *, amp=False,
                        channels_last=False, info=None, desc="eval", quiet=True,
                        by_subject=False, scores=False, thresholds=None, intensity=True
                        ) -> tuple[MetricAccumulator, IntensityAccumulator | None]:
    """The filled occurrence accumulator of one pass over ``loader`` and, when ``intensity``
    and the model has an intensity head, the filled intensity accumulator (else None)."""
    info = info or DistInfo()
    model.eval()
    transform = _unwrap(model).input_transform  # the one the model was trained with
    frames = _shard_frames(loader)
    names, groups = frames.subject_groups() if frames is not None and by_subject else (None, None)
    acc = MetricAccumulator(au_ids, names, keep_scores=scores,
                            thresholds=PROBABILITY_THRESHOLD if thresholds is None else thresholds)
    with_intensity = intensity and bool(getattr(model, "has_intensity", False))
    regression = (IntensityAccumulator(ALL_AUS, mean_over=au_ids, subjects=names)
                  if with_intensity else None)
    precision = choose_precision(device, amp)
    for images, targets, index in tqdm(loader, desc=desc, leave=False, disable=True if quiet else None):
        x = _prepare(images, device, channels_last, transform)
        y = targets.to(device)
        loss, logits, predicted, target_r = _forward_loss(
            model, criterion, x, y, device, precision, index, frames, with_intensity)
        batch_groups = groups[index.numpy()] if groups is not None else None
        acc.update(logits, y, float(loss) if loss is not None else None, groups=batch_groups)
        if regression is not None:
            regression.update(predicted, target_r, groups=batch_groups)
    acc.load_counts_tensor(all_reduce_sum(acc.counts_tensor(), info, device))
    if scores and info.enabled:
        acc.extend_scores(gather_objects(acc.score_arrays(), info))
    if regression is not None:
        regression.load_sums_tensor(all_reduce_sum(regression.sums_tensor(), info, device))
    return acc, regression


def selection_score(task: str, metrics: AUMetrics, intensity: IntensityMetrics | None) -> float:
    """What early stopping maximises: mean F1 (occurrence), mean ICC over the evaluated AUs
    (intensity), or the average of the two (both; each lies in [0, 1] where it matters)."""
    if task == "occurrence" or intensity is None:
        return metrics.mean_f1
    if task == "intensity":
        return intensity.mean_icc
    return 0.5 * (metrics.mean_f1 + intensity.mean_icc)


SCORE_NAMES = {"occurrence": "mean F1", "intensity": "mean ICC",
               "both": "(mean F1 + mean ICC) / 2"}


# ------------------------------------------------------------------------------------------------
# The run


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and/or torch.compile wrappers."""
    model = getattr(model, "_orig_mod", model)
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
                     "manifest": str(self.cfg.manifest)},
            "train_config": asdict(self.cfg),
            "protocol": self.note,
            "pretrained": self.pretrained,
            CARD_KEY: run_card(self).to_dict(),
        }


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
        cfg, resume_state = _resume_config(cfg, explicit)
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
                              cfg.intensity_weight, cfg.intensity_loss)
    return TrainingRun(cfg=cfg, info=info, device=device, run_dir=Path(cfg.out), data=data,
                       model_config=model_cfg, model=model, optimizer=optimizer, scaler=scaler,
                       scheduler=scheduler, criterion=criterion,
                       stopper=make_stopper(cfg), pretrained=pretrained,
                       note=protocol_note(cfg.select_on, data.threshold, cfg.all_subjects),
                       freezing=freezing)


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


#: A full-preset training step on a 2-core CPU (model.bench, idle machine): images per second.
CPU_FULL_PRESET_IMAGES_PER_SECOND = 4.7


def freeze_pretrained_blocks(model: torch.nn.Module, cfg: TrainConfig,
                             resume_state: dict[str, Any] | None,
                             report: dict[str, Any] | None) -> dict[str, Any]:
    """Freeze the leading blocks (``--frozen-blocks``, else the backbone's default) only as far
    as ``--pretrained`` filled them (``report``: what ``load_pretrained`` loaded).

    The paper freezes blocks 1-2 to keep VGGFace2 features; a random block frozen would only be
    crippled, so without weights nothing is frozen unless ``--frozen-blocks`` asks for it.
    Returns what config.json records.
    """
    wanted = (cfg.frozen_blocks if cfg.frozen_blocks is not None
              else default_frozen_blocks(cfg.backbone, model.config.preset_spec.frozen_blocks))
    if resume_state is not None:
        blocks = config_from_record(resume_state["model_config"]).resolved_frozen_blocks
        reason = "as recorded by the run being resumed"
    elif report is not None:
        missing = set(report.get("missing", []))
        loaded = {f"backbone.{n}" for n, _ in model.backbone.named_parameters() if n not in missing}
        blocks = _loaded_leading_blocks(model, wanted, loaded)
        reason = (f"loaded from {cfg.pretrained}; the pretrained leading blocks are frozen"
                  if blocks else f"{cfg.pretrained} did not fill the leading blocks")
    elif cfg.frozen_blocks:
        blocks = wanted
        reason = "--frozen-blocks without pretrained weights: random blocks frozen as asked"
    else:
        blocks = 0
        reason = ("no pretrained weights: every layer starts random and is trained (freezing "
                  "only protects pretrained features)")
        _warn_from_scratch(cfg)
    model.set_frozen_blocks(blocks)
    frozen = {n: p.numel() for n, p in model.named_parameters() if not p.requires_grad}
    log.info("frozen: %s (%d parameters): %s", _block_names(blocks), sum(frozen.values()), reason)
    return {"frozen_blocks": blocks, "blocks": _block_names(blocks), "reason": reason,
            "frozen_parameters": sum(frozen.values()), "parameter_names": sorted(frozen)}


def _loaded_leading_blocks(model: torch.nn.Module, wanted: int, loaded: set[str]) -> int:
    """The largest n <= wanted whose first n blocks' parameters all came from the weight file."""
    names = {id(p): n for n, p in model.named_parameters()}
    for blocks in range(wanted, 0, -1):
        model.set_frozen_blocks(blocks)
        if all(names[id(p)] in loaded for m in model.frozen_modules() for p in m.parameters()):
            return blocks
    return 0


def _block_names(blocks: int) -> str:
    return ("nothing", "block 1 (stem)", "blocks 1-2 (stem + stride-4 stage)",
            "blocks 1-3 (stem + stride-4 and stride-8 stages)",
            "blocks 1-4 (stem + stride-4, 8 and 16 stages)")[blocks]


def _warn_from_scratch(cfg: TrainConfig) -> None:
    if cfg.preset != "full":
        return
    minutes = cfg.batches_per_epoch * cfg.batch_size / CPU_FULL_PRESET_IMAGES_PER_SECOND / 60
    log.warning("the full preset without --pretrained trains SENet-50 from scratch, which the "
                "paper's recipe (lr %g) does not expect; on a CPU it runs ~%.1f images/s "
                "(2 cores), i.e. ~%.0f min an epoch of %d x %d frames: use a GPU, the VGGFace2 "
                "weights (--pretrained), or --recipe cpu-demo", cfg.lr,
                CPU_FULL_PRESET_IMAGES_PER_SECOND, minutes, cfg.batches_per_epoch, cfg.batch_size)


def distribute(run: TrainingRun) -> None:
    """Wrap the model in DDP, with SyncBatchNorm (``--no-sync-bn`` aside) where torch has it."""
    cfg, device = run.cfg, run.device
    wanted, possible = cfg.sync_bn, device.type == "cuda"
    if wanted and possible:
        run.model = with_sync_batchnorm(run.model)
        note = f"BatchNorm statistics synchronised over the {run.info.world} processes"
    elif wanted:
        note = ("per-process BatchNorm: torch's SyncBatchNorm runs on CUDA only, these "
                f"{run.info.world} processes train on the CPU")
        if run.info.is_main:
            log.warning("%s", note)
    else:
        note = "per-process BatchNorm (--no-sync-bn)"
    run.sync_batchnorm = {"enabled": wanted and possible, "note": note}
    run.model = torch.nn.parallel.DistributedDataParallel(
        run.model, device_ids=[device.index] if device.type == "cuda" else None)


def with_sync_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """Every BatchNorm as a SyncBatchNorm sharing its parameters and buffers (frozen ones stay
    frozen: ``TRANet.train`` keeps them in eval mode, where nothing is synchronised)."""
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return converted.train(model.training)


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
    log.info("%s: %d train frames (%s), %s (%d frames), %d test frames", _run_name(cfg),
             len(data.train), ", ".join(data.spec.subjects["train"]),
             "monitor on training frames" if cfg.all_subjects else f"selection on {cfg.select_on}",
             data.select_frames, data.test_frames)
    log.info("%s", run.note)
    batch = batch_record(cfg, run.info.world)
    log.info("batch %d per process x %d processes = global batch %d; lr %g (--lr-scaling %s); "
             "precision %s", batch["per_process"], run.info.world, batch["global"],
             batch["lr"], cfg.lr_scaling, choose_precision(run.device, cfg.amp).name)
    log.info("per-AU positive rate: natural %s -> expected under the sampler %s",
             _fmt_rates(au_ids, data.natural_rate), _fmt_rates(au_ids, data.expected_rate))


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


def checkpoint_state(run: TrainingRun, progress_epoch: int, accumulator: EpochAccumulator,
                     consumed: int | None) -> dict[str, Any]:
    """last.pt's content. Collective: every rank contributes its sampler and RNG streams."""
    samplers = gather_objects(run.data.sampler.state_dict(consumed), run.info)
    rngs = gather_objects(capture_rng_state(), run.info)
    return {**run.payload(), "model": _unwrap(run.model).state_dict(),
            "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "sampler": samplers, "rng": rngs, "early_stopping": run.stopper.state_dict(),
            "history": run.history, "epoch": progress_epoch, "world_size": run.info.world,
            "progress": {"epoch": progress_epoch, "accumulator": accumulator.state_dict()}}


def run_epochs(run: TrainingRun, stop: StopRequest,
               on_batch_end: Callable[[int, int, float], None] | None) -> str:
    """The epoch loop: train, evaluate on the selection split, checkpoint; "finished" or
    "interrupted"."""
    cfg, info = run.cfg, run.info
    stop.install()
    run.clock = RunClock(cfg.epochs, cfg.batches_per_epoch, run.completed, run.acc.batches)
    try:
        epoch = run.completed + 1
        while epoch <= cfg.epochs and not run.stopper.should_stop:
            done = train_one_epoch(run.model, run.criterion, run.optimizer, run.data.train_loader,
                                   run.device, epoch, cfg, run.scaler, run.scheduler, run.acc,
                                   stop, info, on_batch_end, run.clock)
            if not done:
                save_interrupted(run, epoch, stop)
                return "interrupted"
            end_of_epoch(run, epoch)
            if _agree_stop(stop, info, run.device):
                if info.is_main:
                    log.warning("stopped (%s) after epoch %d; saved %s; continue with --resume %s",
                                stop.reason or "request", epoch, run.run_dir / "last.pt",
                                run.run_dir)
                return "interrupted"
            epoch += 1
        if run.stopper.should_stop and info.is_main:
            log.info("early stop: no better %s %s for %d epochs (best %.4f at epoch %d)",
                     cfg.select_on, SCORE_NAMES[cfg.task], cfg.patience, run.stopper.best_score,
                     run.stopper.best_epoch)
        return "finished"
    finally:
        stop.uninstall()


def save_interrupted(run: TrainingRun, epoch: int, stop: StopRequest) -> None:
    """last.pt in the middle of an epoch, so that --resume continues with the next batch."""
    consumed = run.acc.batches * run.data.train_loader.batch_size
    state = checkpoint_state(run, epoch - 1, run.acc, consumed)
    if run.info.is_main:
        save_checkpoint(run.run_dir / "last.pt", state)
        log.warning("stopped (%s) in epoch %d after batch %d; saved %s; continue with "
                    "--resume %s", stop.reason or "request", epoch, run.acc.batches,
                    run.run_dir / "last.pt", run.run_dir)


def end_of_epoch(run: TrainingRun, epoch: int) -> None:
    """Evaluate on the selection split, step early stopping, save last.pt/best.pt and metrics."""
    cfg, info, data, acc, au_ids = run.cfg, run.info, run.data, run.acc, run.au_ids
    totals = all_reduce_sum(torch.tensor([acc.loss_sum, acc.batches, acc.frames, *acc.positives],
                                         dtype=torch.float64), info, run.device)
    train_loss = float(totals[0] / totals[1])
    drawn = (totals[3:] / totals[2]).tolist()
    metrics, intensity = evaluate_tasks(
        _unwrap(run.model), data.select_loader, run.device, au_ids, run.criterion, amp=cfg.amp,
        channels_last=cfg.channels_last, info=info, desc=f"eval {cfg.select_on}",
        quiet=cfg.quiet or not info.is_main)
    score = selection_score(cfg.task, metrics, intensity)
    improved = run.stopper.step(score, epoch)
    row = {"epoch": epoch, "train_loss": train_loss, "seconds": acc.seconds,
           "lr": run.optimizer.param_groups[0]["lr"], "select_on": cfg.select_on,
           "eval": metrics.as_dict(), "score": score, "drawn_positive_rate": drawn,
           "natural_positive_rate": data.natural_rate.tolist(),
           "best_epoch": run.stopper.best_epoch}
    if intensity is not None:
        row["eval_intensity"] = intensity.as_dict()
    run.history.append(row)
    run.acc = EpochAccumulator()
    state = checkpoint_state(run, epoch, run.acc, None)
    if not info.is_main:
        return
    if improved:
        best = {k: v for k, v in state.items()
                if k not in ("optimizer", "sampler", "rng", "scaler", "scheduler")}
        save_checkpoint(run.run_dir / "best.pt", {
            **best, "metrics": metrics.as_dict(),
            **({"intensity_metrics": intensity.as_dict()} if intensity is not None else {})})
        write_card_file(run.run_dir, state)
    save_checkpoint(run.run_dir / "last.pt", state)
    write_metrics(run.run_dir, run.history, au_ids, _metrics_header(run))
    if epoch % max(cfg.plot_every, 1) == 0:
        _plot(run)
    # One short line an epoch; the drawn positive rates per AU go to metrics.csv/json.
    # an intensity run's occurrence head never trains: its F1 is not shown (#21)
    shown = metric_words(metrics.mean_f1 if reports_occurrence(cfg.task) else None,
                         intensity.mean_icc if intensity is not None else None)
    best = best_words(cfg.task, run.stopper.best_score, run.stopper.best_epoch)
    log.info("%s", epoch_line(epoch, run.clock or RunClock(epoch, 1), train_loss, cfg.select_on,
                              shown, best, improved, row["seconds"]))


def _metrics_header(run: TrainingRun) -> dict[str, Any]:
    data = run.data
    return {"protocol": run.note, "select_on": run.cfg.select_on, "au_ids": run.au_ids,
            "natural_positive_rate": data.natural_rate.tolist(),
            "expected_drawn_positive_rate": data.expected_rate.tolist(),
            "au_weights": data.au_weights.tolist(), "sampler": run.cfg.sampler,
            "subjects": data.spec.subjects, **task_record(run.cfg.task)}


def finish_run(run: TrainingRun, status: str) -> dict[str, Any]:
    """Final plots, best.pt on every test frame, results.json/results.md; the run's summary."""
    cfg, info, stopper = run.cfg, run.info, run.stopper
    if info.is_main and run.history:
        _plot(run)
        drawn = np.mean([row["drawn_positive_rate"] for row in run.history], axis=0)
        log.info("positive rate drawn by the sampler over the run / natural: %s", " ".join(
            f"AU{a}:{d:.2f}/{n:.2f}" for a, d, n in zip(run.au_ids, drawn, run.data.natural_rate)))
    summary: dict[str, Any] = {"status": status, "run_dir": str(run.run_dir),
                               "protocol": run.note, "select_on": cfg.select_on,
                               "fold": cfg.fold, "variant": cfg.variant,
                               "best_epoch": stopper.best_epoch,
                               "task": cfg.task, "selection_score": SCORE_NAMES[cfg.task],
                               "best_select_score": stopper.best_score,
                               "epochs_run": len(run.history)}
    if cfg.task == "occurrence":  # the key older tools read
        summary["best_select_mean_f1"] = stopper.best_score
    if status == "finished" and run.history and cfg.all_subjects:
        finish_all_subjects(run, summary)
    elif status == "finished" and run.history:
        tested, intensity = final_test(run.model, run.run_dir, run.data, run.device, cfg,
                                       run.au_ids, run.criterion, info)
        add_test_metrics(summary, cfg.task, tested.compute().as_dict(),
                         intensity.as_dict() if intensity is not None else None)
        if info.is_main:
            record_held_out_metrics(run.run_dir, summary)
        if cfg.tune_threshold:
            summary.update(tune_decision_thresholds(run, tested))
        if info.is_main:
            write_json(run.run_dir / "results.json", summary)
            (run.run_dir / "results.md").write_text(run_markdown(
                f"Fold {cfg.fold}, {cfg.variant}: test subjects, best epoch {stopper.best_epoch}",
                summary, run.note, run.au_ids))
            log.info("fold %d test (best epoch %d): %s  [%s]", cfg.fold, stopper.best_epoch,
                     result_log_line(summary), run.note)
    if info.enabled:
        dist.barrier()
    return summary


def final_test(model, run_dir: Path, data: FoldData, device, cfg: TrainConfig, au_ids,
               criterion, info: DistInfo) -> tuple[MetricAccumulator, IntensityMetrics | None]:
    """best.pt's weights on every test frame (each rank tests its share): counts per subject,
    scores kept for ROC-AUC/AP; and the intensity metrics when the model has an intensity head."""
    _unwrap(model).load_state_dict(best_weights(run_dir, info))
    acc, regression = run_task_evaluation(
        _unwrap(model), data.test_loader, device, au_ids, criterion, amp=cfg.amp,
        channels_last=cfg.channels_last, info=info, desc="test",
        quiet=cfg.quiet or not info.is_main, by_subject=True, scores=True)
    return acc, regression.compute() if regression is not None else None


def tune_decision_thresholds(run: TrainingRun, tested: MetricAccumulator) -> dict[str, Any]:
    """Per-AU F1-optimal thresholds from the best model's scores on the ``--tune-threshold``
    split only (never the test labels unless that split is the test split), written into
    best.pt; and the test metrics at those thresholds, from the test scores already computed."""
    cfg = run.cfg
    tuned = run_evaluation(_unwrap(run.model), run.data.tune_loader, run.device, run.au_ids,
                           amp=cfg.amp, channels_last=cfg.channels_last, info=run.info,
                           desc=f"tune {cfg.tune_threshold}", quiet=True, scores=True)
    logits = tune_logit_thresholds(*tuned.score_arrays()[:2])  # float64: no saturated ties
    values = logits_to_probabilities(logits)
    record = {"au_ids": run.au_ids, "values": values, "logits": logits,
              "tuned_on": cfg.tune_threshold, "note": threshold_note(cfg.tune_threshold)}
    if run.info.is_main:
        best = load_checkpoint(run.run_dir / "best.pt", map_location="cpu")
        save_checkpoint(run.run_dir / "best.pt", {**best, "decision_thresholds": record})
        log.info("decision thresholds tuned on %s: %s", cfg.tune_threshold,
                 _fmt_rates(run.au_ids, values))
    return {"decision_thresholds": record,
            "test_tuned": tested.at_thresholds(values, logits).compute().as_dict()}


def best_weights(run_dir: Path, info: DistInfo) -> dict[str, torch.Tensor]:
    """best.pt's weights on every rank: rank 0 (which wrote it) reads the file and broadcasts
    them, so the ranks need no shared filesystem."""
    box = [load_checkpoint(run_dir / "best.pt", map_location="cpu")["model"]
           if info.is_main else None]
    if info.enabled:
        dist.broadcast_object_list(box, src=0)
    return box[0]


def _run_name(cfg: TrainConfig) -> str:
    return "all subjects" if cfg.all_subjects else f"fold {cfg.fold}"


def _plot(run: TrainingRun) -> None:
    from ..evaluation.plots import plot_history

    cfg = run.cfg
    try:
        plot_history(run.history, run.au_ids, run.run_dir, split=cfg.select_on,
                     title=f"{_run_name(cfg)}, {cfg.variant}",
                     occurrence=reports_occurrence(cfg.task), notes=[recipe_line(run.payload())])
    except Exception as err:  # a plotting problem must never cost a training run
        log.warning("could not draw the plots: %s", err)


def _fmt_rates(au_ids: Sequence[int], rates: Sequence[float]) -> str:
    return " ".join(f"AU{a}:{r:.3f}" for a, r in zip(au_ids, rates))



"""One fold's data: the shards checked against the manifest, the training sampler and the
loaders of the training, selection, test and threshold-tuning splits, with the frames read
every epoch decoded into memory when they fit.

``--batch-size`` is per process (per GPU): every rank draws its own ``batch_size`` frames a step
from its own sampler stream, and evaluation splits are cut into disjoint slices per rank.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from pipeline.datasets.base import NOT_CODED

from .all_subjects import needs_test, run_subjects
from .augment import AlignmentJitter
from .config import TrainConfig
from .data import (DataError, FoldSpec, ShardFrames, check_consistent, check_flip_symmetry,
                   check_frame_counts, collate_frames, default_workers, evaluation_indices,
                   load_manifest, open_shards, shard_origin, single_threaded_opencv)
from .dataset_checks import check_datasets, dataset_cameras
from .distributed import DistInfo
from .sampler import (WeightedFrameSampler, au_weights_from_labels, expected_positive_rate,
                      task_frame_weights)
from .selection import selection_record

log = logging.getLogger("model.train")


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
    #: Some label of the fold's frames is "not coded" (NaN): the loss masks (DISFA: never).
    has_uncoded: bool = False


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
    if not spec.subjects["test"] and not cfg.all_subjects and not spec.test_manifest:
        raise DataError(f"{context}: no test subjects")
    if cfg.tune_threshold == "val" and not spec.subjects["val"]:
        raise DataError(f"{context}: no validation subjects to tune the decision thresholds on")
    if cfg.select_on == "val" and not spec.subjects["val"]:
        raise DataError(f"{context}: no validation subjects to select the model on; rebuild the "
                        "folds with validation subjects or pass --select-on test (paper protocol)")


def _geometry(cfg: TrainConfig, spec: FoldSpec, readers: dict[str, list],
              context: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(network input geometry, the shards' alignment record), checked across all shards."""
    every = [r for rs in readers.values() for r in rs]
    check_datasets(every, spec, cfg.mix_datasets)
    geometry = check_consistent(every, spec, cfg.mix_datasets)
    check_frame_counts(spec, every, load_manifest(cfg.manifest).get("camera", "left"))
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
    _check_intensity_task(cfg, datasets["train"], context)
    # a training-only fold (its test set is another dataset's manifest) has no test split here
    wanted = [s for s in needs_test(cfg) if s != "test" or spec.subjects["test"]]
    for split in wanted + (["val"] if cfg.select_on == "val" else []):
        if datasets[split] is None or len(datasets[split]) == 0:
            raise DataError(f"{context}: the {split} subjects {spec.subjects[split]} have no frames")
    _cache_frames(cfg, [datasets["train"], datasets[cfg.select_on]])
    return datasets


def _check_intensity_task(cfg: TrainConfig, train: ShardFrames, context: str) -> None:
    """--task intensity/both trains on DISFA's 12 intensity columns, every one coded (the
    intensity losses do not mask; the intensity metrics do)."""
    if cfg.task == "occurrence":
        return
    if train.intensity is None:
        raise DataError(f"{context}: --task {cfg.task} reads DISFA's 12 intensity AUs; "
                        f"{', '.join(train.datasets)} shards have other intensity columns "
                        "(train with --task occurrence)")
    if (train.intensity == NOT_CODED).any():
        raise DataError(f"{context}: --task {cfg.task}: some training intensities are not "
                        "coded, which the intensity loss cannot mask yet (train with --task "
                        "occurrence)")


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
    cameras = dataset_cameras(cfg.cameras, spec.dataset, context)
    readers = {split: open_shards(cfg.shards, spec.subjects[split], cameras, context, spec)
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
        has_uncoded=any(d.has_uncoded for d in datasets.values() if d is not None),
    )

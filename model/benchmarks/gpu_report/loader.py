"""Stage 5: the training DataLoader alone, on synthetic shards written with pipeline.shards."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import DataLoader

from pipeline.datasets.disfa.facts import ALL_AUS, EVAL_AUS
from pipeline.shards import ShardReader, ShardWriter, shard_name

from ...engine.augment import AlignmentJitter
from ...engine.data import ShardFrames, collate_frames, single_threaded_opencv
from ...engine.sampler import WeightedFrameSampler, au_weights_from_labels
from .config import ReportConfig
from .report import Report


SUBJECTS = ("SN001", "SN002", "SN003", "SN004")
SMALL_FRAMES = 16  # frames a subject in the test mode


def synth_shards(root: Path, frames: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Shards of smooth random frames (JPEG sizes near aligned faces', not noise) and a one-fold
    folds.json (train SN001-2, val SN003, test SN004), written with pipeline.shards' writer."""
    rng = np.random.default_rng(seed)
    shards = root / "shards"
    train_labels = []
    for subject in SUBJECTS:
        with ShardWriter(shards / shard_name(subject, "left"), size) as writer:
            for start in range(0, frames, 64):
                k = min(64, frames - start)
                coarse = rng.integers(0, 256, (k, 12, 12, 3), dtype=np.uint8)
                images = np.stack([cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC)
                                   for c in coarse])
                intensity = rng.choice(6, (k, len(ALL_AUS)), p=[.6, .1, .1, .1, .05, .05])
                writer.append_many(images, range(start, start + k), intensity.astype(np.uint8),
                                   rng.uniform(0, size, (k, 66, 2)))
                if subject in SUBJECTS[:2]:
                    train_labels.append(intensity[:, [ALL_AUS.index(a) for a in EVAL_AUS]] >= 3)
            writer.commit(subject=subject, camera="left", threshold=3, au_ids=EVAL_AUS,
                          nose_target=(size / 2, size * 0.55), chin_target=(size / 2, size * 0.9),
                          n_source_frames=frames, config={"gpu_report": "synthetic"})
    manifest = root / "folds.json"
    manifest.write_text(json.dumps({
        "scheme": "kfold", "au_ids": list(EVAL_AUS), "threshold": 3, "image_size": size,
        "shards_dir": str(shards), "config": {"gpu_report": "synthetic"},
        "folds": [{"fold": 1, "train": list(SUBJECTS[:2]), "val": [SUBJECTS[2]],
                   "test": [SUBJECTS[3]],
                   "au_weights": au_weights_from_labels(np.concatenate(train_labels)).tolist()}]}))
    return shards, manifest


#: Worker counts the loader is timed with (those above the CPU count are recorded as skipped).
WORKERS = (1, 2, 4, 8, 16)


def loader_settings(cfg: ReportConfig, cpus: int | None = None
                    ) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """(settings to time, (setting, why not) for the others): flip + jitter at each worker
    count up to the CPU count (1 in the test mode), then flip only and neither at the largest."""
    cpus = cpus or os.cpu_count() or 1
    run, skipped = [], []
    for w in WORKERS:
        setting = {"workers": w, "flip": True, "jitter": True}
        if w > cpus:
            skipped.append((setting, f"capped: {w} workers > {cpus} CPUs"))
        elif cfg.small and w > 1:
            skipped.append((setting, "the test mode times 1 worker"))
        else:
            run.append(setting)
    if not cfg.small:
        top = run[-1]["workers"]
        run += [{"workers": top, "flip": True, "jitter": False},
                {"workers": top, "flip": False, "jitter": False}]
    return run, skipped


def stage_loader(report: Report) -> None:
    cfg = report.cfg
    frames = SMALL_FRAMES if cfg.small else 512
    t0 = time.perf_counter()
    shards, _ = ensure_shards(report, frames)
    report.write(kind="shards", frames_per_subject=frames, subjects=len(SUBJECTS),
                 write_s=time.perf_counter() - t0, bytes_per_frame=_jpeg_bytes(shards, frames),
                 cpu_count=os.cpu_count())
    settings, capped = loader_settings(cfg)
    for setting, why in capped:
        report.skip({**setting, "batch": cfg.batches[0]}, why)
    for setting in settings:
        # the same frames each time: fewer workers cost more, so the last cost bounds the next
        estimate = report.costs.estimate("loader", 1, 2 if cfg.small else 20)
        report.measure({**setting, "batch": cfg.batches[0]}, estimate,
                       lambda _left, s=setting: time_loader(report, shards, **s),
                       family="loader")


def ensure_shards(report: Report, frames: int) -> tuple[Path, Path]:
    """Synthetic shards under OUT/data (written once per run folder)."""
    root = report.dir / "data"
    manifest = root / "folds.json"
    if manifest.exists() and (root / "shards").is_dir():
        return root / "shards", manifest
    return synth_shards(root, frames, report.cfg.size)


def _jpeg_bytes(shards: Path, frames: int) -> float:
    return sum(p.stat().st_size for p in shards.glob("*.h5")) / (frames * len(SUBJECTS))


def time_loader(report: Report, shards: Path, workers: int, flip: bool,
                jitter: bool) -> dict[str, Any]:
    """Frames/s of the training DataLoader (weighted sampler, flip/jitter as asked, pinned
    memory on CUDA); the first batch (worker start-up) is timed apart."""
    cfg = report.cfg
    readers = [ShardReader(p) for p in sorted(shards.glob("*.h5"))]
    aug = AlignmentJitter(0.05, 5.0, 0.03) if jitter else None
    dataset = ShardFrames(readers, EVAL_AUS, 3, jitter=aug)
    batches = 2 if cfg.small else 40
    batch = cfg.batches[0]
    sampler = WeightedFrameSampler(np.ones(len(dataset)), batch * (batches + 1), seed=1,
                                   flip=flip, jitter=jitter)
    single_threaded_opencv(workers)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                        collate_fn=collate_frames, pin_memory=report.device.type == "cuda")
    t0 = time.perf_counter()
    it = iter(loader)
    next(it)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    n = sum(len(images) for images, _, _ in it)
    seconds = time.perf_counter() - t0
    return {"frames_per_s": n / seconds, "frames": n, "first_batch_s": first}

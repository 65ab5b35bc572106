"""Tiny schema-2 shards of any supported dataset (DISFA, DISFA+, BP4D), with "not coded" labels
where asked, and their folds manifests: what the masked-label and cross-dataset tests train and
evaluate on (written with pipeline.shards directly; the real twins come from pipeline.synth)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.datasets.base import NOT_CODED
from pipeline.datasets.registry import dataset_info
from pipeline.shards import ShardWriter, shard_name
from trainer_fixtures import REGION_ROWS


def camera_of(dataset: str) -> str:
    return "left" if dataset == "disfa" else "frontal"


def write_dataset_shard(folder: Path, dataset: str, subject: str, n: int = 24, size: int = 32,
                        seed: int = 0, uncoded: float = 0.0, threshold: int | None = None,
                        camera: str | None = None) -> Path:
    """One subject's shard of ``dataset``: random codes (about 30 % positive), ``uncoded`` of
    the label entries NOT_CODED, a mark per positive label so there is something to learn."""
    info = dataset_info(dataset)
    rng = np.random.default_rng(seed)
    camera = camera or camera_of(dataset)
    path = Path(folder) / shard_name(subject, camera)
    with ShardWriter(path, size, encoding="raw", dataset=dataset) as writer:
        for i in range(n):
            occurrence = (rng.random(len(info.occurrence_aus)) < 0.3).astype(np.uint8)
            positive = rng.random(len(info.intensity_aus)) < 0.3
            intensity = np.where(positive, rng.integers(3, 6, positive.shape),
                                 rng.integers(0, 2, positive.shape)).astype(np.uint8)
            occurrence[rng.random(occurrence.shape) < uncoded] = NOT_CODED
            intensity[rng.random(intensity.shape) < uncoded] = NOT_CODED
            image = np.full((size, size, 3), 90, np.uint8)
            marks = occurrence if info.occurrence_aus else intensity >= 3
            for k, on in enumerate(marks[:8]):
                if on == 1:
                    row = int(REGION_ROWS[k] * size)
                    image[row:row + 3, 2 + 3 * (k % 3):4 + 3 * (k % 3)] = 250
            writer.append(image, i, intensity,
                          rng.uniform(0, size, (info.n_landmarks, 2)).astype(np.float32),
                          occurrence=occurrence if info.occurrence_aus else None)
        writer.commit(subject=subject, camera=camera,
                      threshold=info.default_threshold if threshold is None else threshold,
                      nose_target=(size / 2, size * 0.5), chin_target=(size / 2, size * 0.9),
                      n_source_frames=n, config={"fixture": True})
    return path


def write_dataset_manifest(path: Path, dataset: str, train: Sequence[str], val: Sequence[str],
                           test: Sequence[str], size: int = 32,
                           threshold: int | None = None) -> Path:
    """A one-fold folds.json of ``dataset`` (its evaluated AUs, the ``dataset`` key)."""
    info = dataset_info(dataset)
    payload = {"scheme": "kfold", "dataset": dataset, "au_ids": list(info.eval_aus),
               "threshold": info.default_threshold if threshold is None else threshold,
               "image_size": size, "camera": camera_of(dataset), "config": {},
               "folds": [{"fold": 1, "train": list(train), "val": list(val), "test": list(test),
                          "au_weights": [1.0] * len(info.eval_aus)}]}
    Path(path).write_text(json.dumps(payload))
    return Path(path)


def make_dataset_folds(root: Path, dataset: str, subjects: Sequence[str], uncoded: float = 0.0,
                       n: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Shards of ``subjects`` (train all but the last two, then val, then test) and a manifest;
    returns (shards folder, manifest)."""
    shards = Path(root) / "shards"
    for j, subject in enumerate(subjects):
        write_dataset_shard(shards, dataset, subject, n=n, seed=seed + j, uncoded=uncoded)
    subjects = list(subjects)
    manifest = write_dataset_manifest(Path(root) / "folds.json", dataset, subjects[:-2],
                                      subjects[-2:-1], subjects[-1:])
    return shards, manifest

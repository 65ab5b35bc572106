"""Which dataset a fold's shards are of: one dataset a run (the manifest's) unless
``--mix-datasets``, and the cameras an image-folder dataset's shards are named by."""
from __future__ import annotations

from typing import Sequence

from pipeline.datasets.registry import dataset_info
from pipeline.shards import ShardReader

from .data import DataError, FoldSpec

#: The one camera of the image-folder datasets (DISFA+, BP4D): their shards are
#: ``<subject>_frontal.h5``.
FRONTAL = "frontal"


def dataset_cameras(cameras: Sequence[str], dataset: str, context: str) -> list[str]:
    """The shards' cameras to read: DISFA's as given; an image-folder dataset has one, "frontal",
    which the default ``left`` means there (a DataError for ``right``)."""
    cameras = list(cameras)
    if dataset_info(dataset).name == "disfa":
        return cameras
    others = sorted(set(cameras) - {"left", FRONTAL})
    if others:
        raise DataError(f"{context}: {dataset_info(dataset).title} has one camera ({FRONTAL}); "
                        f"there is no {others[0]} camera")
    return [FRONTAL]


def check_datasets(readers: Sequence[ShardReader], spec: FoldSpec, mix: bool = False) -> None:
    """The shards are of the manifest's dataset; shards of several datasets only with ``mix``
    (``--mix-datasets``: each dataset's own label rule, its uncoded AUs masked)."""
    found: dict[str, list[str]] = {}
    for r in readers:
        found.setdefault(r.dataset, []).append(r.path.name)
    if len(found) > 1 and not mix:
        kinds = "; ".join(f"{d}: {', '.join(names[:3])}" for d, names in sorted(found.items()))
        raise DataError(f"{spec.manifest} fold {spec.fold}: the shards are of {len(found)} "
                        f"datasets ({kinds}); pass --mix-datasets to train on them together")
    if len(found) == 1 and spec.dataset not in found:
        (dataset, names), = found.items()
        raise DataError(f"{names[0]}: a {dataset} shard, but the manifest {spec.manifest} is "
                        f"of {spec.dataset} (its 'dataset' key); use that dataset's manifest")

"""The protocol manifests shipped in ``data_manifests/`` (``disfa_train_without_disfa_plus.json``,
``disfa_plus_test.json``) used as folds manifests, as they are.

They name a dataset and its folds' subjects but, being written before any shard exists, no
scheme, no image size and no per-AU weights. A folds manifest needs those, so they are filled
here: the AUs and threshold from the manifest if given, else the dataset's evaluated AUs and
default rule; the image size from the shards (``None``: whatever they hold, as long as they
agree); the per-AU weights from the training shards (the trainer always derives them there and
only compares a manifest's). A fold with no test subjects is a training-only fold when the
manifest names its ``test_manifest`` (another dataset's test set, scored by ``model.evaluate``).
"""
from __future__ import annotations

from typing import Any

from .datasets.registry import dataset_info

#: The ``scheme`` a completed shipped manifest reports.
SHIPPED_SCHEME = "shipped"


def is_shipped_manifest(manifest: dict[str, Any]) -> bool:
    """A manifest of ``data_manifests/`` (a dataset and folds, no scheme), not a folds.json."""
    return "scheme" not in manifest and "dataset" in manifest and "folds" in manifest


def complete_shipped_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with the keys a folds manifest has, filled as the module docstring says."""
    info = dataset_info(str(manifest["dataset"]))
    filled = dict(manifest)
    filled["scheme"] = SHIPPED_SCHEME
    filled.setdefault("au_ids", list(info.eval_aus))
    filled.setdefault("threshold", info.default_threshold)
    filled.setdefault("image_size", None)
    if isinstance(manifest["folds"], list):
        filled["folds"] = [{**fold, "au_weights": fold.get("au_weights")}
                           if isinstance(fold, dict) else fold for fold in manifest["folds"]]
    return filled


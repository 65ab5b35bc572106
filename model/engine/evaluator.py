"""Evaluate a checkpoint on a fold's split, and average results over folds."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from torch.utils.data import DataLoader

from .checkpoint import check_compatible, load_checkpoint, load_for_inference
from .config import protocol_note
from .data import (DataError, ShardFrames, check_consistent, collate_frames, default_workers,
                   fold_spec, load_manifest, open_shards, select_frames,
                   single_threaded_opencv)
from .dataset_checks import check_datasets, dataset_cameras
from .distributed import DistInfo, resolve_device
from .evaluation_loop import run_task_evaluation
from .shared_columns import SharedColumns
from ..evaluation.cells import Num
from ..evaluation.cross_dataset import (CrossDatasetPlan, frames_row, is_cross_dataset,
                                        plan_cross_dataset)
from ..evaluation.label_rules import labels_phrase
from ..evaluation.provenance import recipe_line
from ..evaluation.statistics import DEFAULT_RESAMPLES
from ..evaluation.tables import metric_rows, summary

log = logging.getLogger("model.evaluate")


def evaluate_checkpoint(
    checkpoint: Path | str,
    shards: Path | str,
    manifest: Path | str,
    fold: int | None = None,
    *,
    split: str = "test",
    variant: str | None = None,
    batch_size: int = 128,
    workers: int | None = None,
    device: str = "auto",
    cameras: Sequence[str] = ("left",),
    amp: bool | None = None,
    allow_seen: bool = True,
    keep_frames: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Metrics of one checkpoint on one fold's ``split`` subjects, with the protocol it used.

    Checks before evaluating: the checkpoint is readable and of ``variant`` (if given), it
    predicts the manifest's AUs, and the shards agree with the manifest and with the
    checkpoint's input geometry. Runs as the trainer's evaluation does: ``workers`` from the
    CPU count, pinned memory on CUDA, and ``amp`` (None) as the run was trained.
    ``keep_frames`` (subject -> 0-based video frames): only those (a cross-camera frame set).
    Another dataset's shards: the AUs both code, by its rule (``evaluation.cross_dataset``).
    """
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    fold = int(fold if fold is not None else state["data"].get("fold", 0))
    spec, seen, threshold, dataset, plan = _checked_split(
        state, checkpoint, shards, manifest, fold, split, variant, cameras, allow_seen,
        keep_frames)
    subjects = spec.subjects[split]
    target = resolve_device(device, DistInfo())
    model, meta, au_ids = _scored_model(checkpoint, state, target, spec, plan)
    workers = default_workers() if workers is None else workers
    single_threaded_opencv(workers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_frames, pin_memory=target.type == "cuda")
    train_cfg = meta.get("train_config", {})
    amp = bool(train_cfg.get("amp", False)) if amp is None else amp
    acc, regression = run_task_evaluation(model, loader, target, au_ids, amp=amp,
                                          desc=f"fold {fold} {split}",
                                          quiet=not sys.stderr.isatty(), by_subject=True,
                                          scores=True)
    select_on = train_cfg.get("select_on", "val")
    note = protocol_note(select_on, threshold, labels=_labels_rule(spec, threshold, au_ids, plan))
    if seen:
        log.warning("%s: evaluated on subjects it was trained or selected on: %s",
                    checkpoint, ", ".join(seen))
        note += f"; EVALUATED ON SUBJECTS THE MODEL SAW ({', '.join(seen)}): optimistic"
    result = {
        "checkpoint": str(checkpoint), "fold": fold, "split": split, "subjects": subjects,
        "cameras": list(cameras), "variant": meta["model_config"].get("variant"),
        "epoch": meta.get("epoch"), "task": train_cfg.get("task", "occurrence"),
        "threshold": threshold, "select_on": select_on,
        "protocol": note, "seen_subjects": seen,
        "recipe": recipe_line(state, load_manifest(manifest)),
        "metrics": acc.compute().as_dict()}
    return _add_extras(result, acc, regression, state, plan)


def _labels_rule(spec: Any, threshold: int, au_ids: Sequence[int],
                 plan: CrossDatasetPlan | None) -> str | None:
    """The protocol line's label rule: the test side's on another dataset, and on the same
    dataset its own where it is not DISFA's (BP4D's codes are no intensity >= 3)."""
    return plan.test_rule if plan else labels_phrase([spec.dataset], threshold, au_ids)


def _scored_model(checkpoint: Path, state: dict[str, Any], target: Any, spec: Any,
                  plan: CrossDatasetPlan | None) -> tuple[Any, dict[str, Any], list[int]]:
    """(model, its meta, the AUs scored): on another dataset, only the shared AUs' columns."""
    model, meta = load_for_inference(checkpoint, device=str(target), state=state)
    if plan is None:
        return model, meta, list(spec.au_ids)
    return SharedColumns(model, plan.columns).to(target), meta, list(plan.shared)


def _checked_split(state: dict[str, Any], checkpoint: Path, shards: Path | str,
                   manifest: Path | str, fold: int, split: str, variant: str | None,
                   cameras: Sequence[str], allow_seen: bool, keep_frames: Mapping[str, Sequence[int]] | None
                   ) -> tuple[Any, list[str], int, Any, CrossDatasetPlan | None]:
    """(fold spec, subjects the model saw, label threshold, dataset, cross-dataset plan or
    None) of ``split``, after every check ``evaluate_checkpoint`` makes before loading the
    model."""
    spec = fold_spec(manifest, fold)
    cross = is_cross_dataset(state["data"], spec.dataset)
    check_compatible(state, checkpoint, variant=variant, au_ids=None if cross else spec.au_ids)
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be train, val or test, got {split!r}")
    subjects = spec.subjects[split]
    if not subjects:
        raise DataError(f"{spec.manifest} fold {fold}: no {split} subjects")
    seen = seen_subjects(state, subjects)
    if seen and not allow_seen:
        raise DataError(f"{checkpoint} was trained or selected on {', '.join(seen)}, which the "
                        f"{split} split of fold {fold} evaluates; pass --allow-seen to evaluate "
                        "anyway (the numbers are then optimistic and labelled so)")
    context = f"{spec.manifest} fold {fold}"
    readers = open_shards(shards, subjects, dataset_cameras(cameras, spec.dataset, context),
                          context, spec)
    check_datasets(readers, spec)
    geometry = check_consistent(readers, spec)
    data = state["data"]
    size = int(data["image_size"])
    _check_alignment(readers[0].path, geometry, data, checkpoint)
    threshold = int(data.get("threshold", spec.threshold))
    plan, au_ids = None, spec.au_ids
    if cross:
        plan, threshold = _cross_plan(state, checkpoint, spec, readers), spec.threshold
        au_ids = plan.shared
    dataset = ShardFrames(readers, au_ids, threshold, size)
    if len(dataset) == 0:
        raise DataError(f"{spec.manifest} fold {fold}: the {split} subjects {subjects} have no frames")
    dataset = select_frames(dataset, keep_frames, f"{spec.manifest} fold {fold} in {shards}")
    if split != "test":
        log.info("evaluating on the %s split of fold %d", split, fold)
    return spec, seen, threshold, dataset, plan


def _cross_plan(state: dict[str, Any], checkpoint: Path, spec: Any,
                readers: Sequence[Any]) -> CrossDatasetPlan:
    """The shared AUs of a checkpoint and another dataset's shards (none: a DataError)."""
    plan = plan_cross_dataset(state["data"], spec.dataset, spec.threshold,
                              readers[0].attrs.get("label_rule"))
    if not plan.shared:
        raise DataError(f"{checkpoint} predicts AUs {plan.model_aus}, none of which "
                        f"{spec.dataset} codes: nothing to score on {spec.manifest}")
    log.info("cross-dataset: %s model on %s shards; scoring AUs %s%s", "+".join(
        plan.train_datasets), spec.dataset, plan.shared,
        f", skipping {sorted(plan.skipped)} (not coded there)" if plan.skipped else "")
    return plan


def _add_extras(result: dict[str, Any], acc: Any, regression: Any,
                state: dict[str, Any], plan: CrossDatasetPlan | None = None) -> dict[str, Any]:
    """The intensity metrics (a model with an intensity head) and the F1 at the checkpoint's
    tuned thresholds (if it has them), beside the occurrence metrics at 0.5; on another
    dataset, the cross-dataset record instead (thresholds tuned on the training dataset's
    AUs and rule do not carry over)."""
    if plan is not None:
        result["cross_dataset"] = plan.as_dict()
        return result
    if regression is not None:
        result["intensity"] = regression.compute().as_dict()
    tuned = state.get("decision_thresholds")
    if tuned:
        result["decision_thresholds"] = tuned
        # the logits where recorded: a probability near 1 cannot say which logits pass
        result["metrics_tuned"] = acc.at_thresholds(tuned["values"],
                                                    tuned.get("logits")).compute().as_dict()
    return result


def _check_alignment(shard: Path, geometry: dict[str, Any], data: dict[str, Any],
                     checkpoint: Path) -> None:
    """The shards' alignment targets, scaled to the checkpoint's input, must be the model's."""
    size = int(data["image_size"])
    scale = size / geometry["image_size"]
    for key in ("nose_target", "chin_target"):
        if key in data and not np.allclose(np.asarray(geometry[key]) * scale, data[key], atol=0.5):
            raise DataError(f"{shard}: aligned {key} {geometry[key]} (at "
                            f"{geometry['image_size']} px) does not match {checkpoint}'s "
                            f"{data[key]} (at {size} px); realign the frames as the model was "
                            "trained")


def seen_subjects(state: dict[str, Any], subjects: Sequence[str]) -> list[str]:
    """Which of ``subjects`` the checkpoint trained on or was selected on (recorded in it)."""
    recorded = state.get("data", {}).get("subjects") or {}
    select_on = state.get("train_config", {}).get("select_on", "val")
    used = set(recorded.get("train", [])) | set(recorded.get(select_on, []))
    return sorted(set(subjects) & used)


def mean_over_folds(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Unweighted mean of per-fold F1/accuracy (the papers' convention)."""
    f1 = np.mean([r["metrics"]["f1"] for r in results], axis=0)
    acc = np.mean([r["metrics"]["accuracy"] for r in results], axis=0)
    return {"au_ids": results[0]["metrics"]["au_ids"], "f1": f1.tolist(), "accuracy": acc.tolist(),
            "mean_f1": float(f1.mean()), "mean_accuracy": float(acc.mean()),
            "folds": [r["fold"] for r in results]}


def results_rows(results: Sequence[dict[str, Any]], resamples: int = DEFAULT_RESAMPLES,
                 seed: int = 0) -> tuple[list[str], list[list[Any]]]:
    """Per fold: F1 and accuracy with subject-bootstrap intervals, ROC-AUC and AP (and F1 at
    tuned thresholds when the checkpoint has them); then the mean over folds, whose interval
    resamples every fold's subjects."""
    aus = results[0]["metrics"]["au_ids"]
    header = ["fold", "metric", *[f"AU{a}" for a in aus], "Avg"]
    rows = []
    for r in results:
        rows += metric_rows(r["fold"], summary([r["metrics"]], resamples, seed))
        if "cross_dataset" in r or len(set(r["metrics"].get("n_scored") or [0])) > 1:
            rows.append(frames_row(r["fold"], r["metrics"]))
        if "metrics_tuned" in r:
            rows += tuned_rows(r["fold"], [r["metrics_tuned"]], resamples, seed)
    if len(results) > 1:
        rows += metric_rows("mean", summary([r["metrics"] for r in results], resamples, seed))
        if all("metrics_tuned" in r for r in results):
            rows += tuned_rows("mean", [r["metrics_tuned"] for r in results], resamples, seed)
    return header, rows


def tuned_rows(label: Any, metrics: Sequence[dict[str, Any]], resamples: int, seed: int
               ) -> list[list[Any]]:
    row = metric_rows(label, summary(metrics, resamples, seed))[0]
    return [[label, Num("F1 at tuned thresholds [95% CI]", {"": "f1_tuned"}), *row[2:]]]

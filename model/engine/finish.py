"""The end of a run: the final plots, best.pt on every test frame (each rank its share), the
tuned thresholds, results.json/results.md and the summary the caller gets."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .distributed import DistInfo
from .evaluation_loop import run_task_evaluation
from .fold_data import FoldData
from .forward import unwrap
from .plotting import plot_run
from .run import TrainingRun
from .run_card import finish_all_subjects, record_held_out_metrics
from .selection import SCORE_NAMES
from .tuning import tune_decision_thresholds
from ..evaluation.intensity import IntensityMetrics
from ..evaluation.metrics import MetricAccumulator
from ..evaluation.records import write_json
from ..evaluation.run_report import add_test_metrics, result_log_line, run_markdown

log = logging.getLogger("model.train")


def finish_run(run: TrainingRun, status: str) -> dict[str, Any]:
    """Final plots, best.pt on every test frame, results.json/results.md; the run's summary."""
    cfg, info, stopper = run.cfg, run.info, run.stopper
    if info.is_main and run.history:
        plot_run(run)
        drawn = np.mean([row["drawn_positive_rate"] for row in run.history], axis=0)
        log.info("positive rate drawn by the sampler over the run / natural: %s", " ".join(
            f"AU{a}:{d:.2f}/{n:.2f}" for a, d, n in zip(run.au_ids, drawn, run.data.natural_rate)))
    summary: dict[str, Any] = {"status": status, "run_dir": str(run.run_dir),
                               "protocol": run.note, "select_on": cfg.select_on,
                               "fold": cfg.fold, "variant": cfg.variant,
                               "best_epoch": stopper.best_epoch,
                               "task": cfg.task, "selection_score": SCORE_NAMES[cfg.task],
                               "best_select_score": stopper.best_score,
                               # the last evaluated epoch: the last trained one
                               # unless stopped (--eval-every skips evaluations)
                               "epochs_run": run.history[-1]["epoch"] if run.history else 0}
    if cfg.task == "occurrence":  # the key older tools read
        summary["best_select_mean_f1"] = stopper.best_score
    if status == "finished" and run.history and cfg.all_subjects:
        finish_all_subjects(run, summary)
    elif status == "finished" and run.history and run.data.test_loader is None:
        finish_training_only(run, summary)
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


def finish_training_only(run: TrainingRun, summary: dict[str, Any]) -> None:
    """A fold without test subjects (a shipped manifest whose test set is another dataset's):
    best.pt is the validation-selected model; the summary says where its test set is."""
    test_manifest = run.data.spec.test_manifest
    summary["test_manifest"] = test_manifest
    summary["training_only"] = True
    if run.info.is_main:
        write_json(run.run_dir / "results.json", summary)
        log.info("fold %d: no test subjects in %s; score best.pt with model.evaluate on %s",
                 run.cfg.fold, run.cfg.manifest, test_manifest)


def final_test(model, run_dir: Path, data: FoldData, device, cfg: TrainConfig, au_ids,
               criterion, info: DistInfo) -> tuple[MetricAccumulator, IntensityMetrics | None]:
    """best.pt's weights on every test frame (each rank tests its share): counts per subject,
    scores kept for ROC-AUC/AP; and the intensity metrics when the model has an intensity head."""
    unwrap(model).load_state_dict(best_weights(run_dir, info))
    acc, regression = run_task_evaluation(
        unwrap(model), data.test_loader, device, au_ids, criterion, amp=cfg.amp,
        channels_last=cfg.channels_last, info=info, desc="test",
        quiet=cfg.quiet or not info.is_main, by_subject=True, scores=True)
    return acc, regression.compute() if regression is not None else None



def best_weights(run_dir: Path, info: DistInfo) -> dict[str, torch.Tensor]:
    """best.pt's weights on every rank: rank 0 (which wrote it) reads the file and broadcasts
    them, so the ranks need no shared filesystem."""
    box = [load_checkpoint(run_dir / "best.pt", map_location="cpu")["model"]
           if info.is_main else None]
    if info.enabled:
        dist.broadcast_object_list(box, src=0)
    return box[0]

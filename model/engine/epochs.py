"""The epoch loop of a run: train an epoch, evaluate on the selection split, step early
stopping, save last.pt/best.pt and the metrics; a stop request saves mid-epoch."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from .checkpoint import save_checkpoint
from .distributed import all_reduce_sum
from .evaluation_loop import evaluate_tasks
from .forward import unwrap
from .loop import agree_stop, train_one_epoch
from .plotting import plot_run
from .progress import RunClock, best_words, epoch_line, metric_words
from .run import TrainingRun, checkpoint_state
from .selection import SCORE_NAMES, selection_score
from .step_log import EpochAccumulator
from .stopping import StopRequest
from ..cards.build import write_card_file
from ..evaluation.records import write_metrics
from ..evaluation.tasks import reports_occurrence, task_record

log = logging.getLogger("model.train")


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
            if agree_stop(stop, info, run.device):
                if info.is_main:
                    log.warning("stopped (%s) after epoch %d; saved %s; continue with --resume %s",
                                stop.reason or "request", epoch, run.run_dir / "last.pt",
                                run.run_dir)
                return "interrupted"
            epoch += 1
        if run.stopper.should_stop and info.is_main:
            log.info("early stop: no better %s %s for %d epochs (best %s)", cfg.select_on,
                     SCORE_NAMES[cfg.task], cfg.patience,
                     best_words(cfg.task, run.stopper.best_score, run.stopper.best_epoch))
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
        unwrap(run.model), data.select_loader, run.device, au_ids, run.criterion, amp=cfg.amp,
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
        plot_run(run)
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

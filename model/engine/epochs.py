"""The epoch loop of a run: train an epoch, evaluate on the selection split (every
``--eval-every`` epochs and always the last), step early stopping (which counts evaluated
epochs only), save last.pt/best.pt (written in the background: ``checkpoint_writer``) and the
metrics; a stop request saves mid-epoch."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from .checkpoint_writer import CheckpointWriter
from .config import TrainConfig
from .distributed import all_reduce_sum
from .evaluation_loop import evaluate_tasks
from .forward import shard_frames, unwrap, uses_intensity
from .graph_step import make_graph_step
from .loop import agree_stop, train_one_epoch
from .plotting import plot_run
from .precision import choose_precision
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
    "interrupted". Every checkpoint write is joined before this returns or raises."""
    stop.install()
    run.clock = RunClock(run.cfg.epochs, run.cfg.batches_per_epoch, run.completed,
                         run.acc.batches)
    writer = CheckpointWriter()
    try:
        status = _epoch_loop(run, stop, on_batch_end, writer)
        writer.close()  # the final test reads best.pt; a failed write fails the run here
        return status
    except BaseException:
        writer.close(raising=False)  # the run fails with its own error; a write's is logged
        raise
    finally:
        stop.uninstall()


def _epoch_loop(run: TrainingRun, stop: StopRequest,
                on_batch_end: Callable[[int, int, float], None] | None,
                writer: CheckpointWriter) -> str:
    cfg, info = run.cfg, run.info
    graph = make_graph_step(run.model, run.criterion, run.optimizer, run.device, cfg, info,
                            choose_precision(run.device, cfg.amp),
                            shard_frames(run.data.train_loader)
                            if uses_intensity(run.criterion) else None)
    epoch = run.completed + 1
    while epoch <= cfg.epochs and not run.stopper.should_stop:
        done = train_one_epoch(run.model, run.criterion, run.optimizer, run.data.train_loader,
                               run.device, epoch, cfg, run.scaler, run.scheduler, run.acc,
                               stop, info, on_batch_end, run.clock, graph)
        if not done:
            save_interrupted(run, epoch, stop, writer)
            return "interrupted"
        end_of_epoch(run, epoch, writer)
        if agree_stop(stop, info, run.device):
            if info.is_main:
                log.warning("stopped (%s) after epoch %d; saved %s; continue with --resume %s",
                            stop.reason or "request", epoch, run.run_dir / "last.pt",
                            run.run_dir)
            return "interrupted"
        epoch += 1
    if run.stopper.should_stop and info.is_main:
        every = f" evaluations (one every {cfg.eval_every} epochs)" if cfg.eval_every > 1 \
            else " epochs"
        log.info("early stop: no better %s %s for %d%s (best %s)", cfg.select_on,
                 SCORE_NAMES[cfg.task], cfg.patience, every,
                 best_words(cfg.task, run.stopper.best_score, run.stopper.best_epoch))
    return "finished"


def save_interrupted(run: TrainingRun, epoch: int, stop: StopRequest,
                     writer: CheckpointWriter) -> None:
    """last.pt in the middle of an epoch, so that --resume continues with the next batch."""
    consumed = run.acc.batches * run.data.train_loader.batch_size
    state = checkpoint_state(run, epoch - 1, run.acc, consumed)
    if run.info.is_main:
        writer.submit([(run.run_dir / "last.pt", state)])
        log.warning("stopped (%s) in epoch %d after batch %d; saved %s; continue with "
                    "--resume %s", stop.reason or "request", epoch, run.acc.batches,
                    run.run_dir / "last.pt", run.run_dir)


def evaluates(cfg: TrainConfig, epoch: int) -> bool:
    """Whether ``epoch`` is evaluated: every ``--eval-every``-th epoch, and always the last."""
    return epoch % cfg.eval_every == 0 or epoch >= cfg.epochs


def end_of_epoch(run: TrainingRun, epoch: int, writer: CheckpointWriter) -> None:
    """Evaluate on the selection split (when ``evaluates``), step early stopping, save
    last.pt/best.pt (through ``writer``: in the background) and the metrics."""
    cfg, info, acc = run.cfg, run.info, run.acc
    totals = all_reduce_sum(torch.tensor([acc.loss_sum, acc.batches, acc.frames, *acc.positives],
                                         dtype=torch.float64), info, run.device)
    train_loss, seconds = float(totals[0] / totals[1]), acc.seconds
    scored = _evaluate(run, epoch, train_loss, totals) if evaluates(cfg, epoch) else None
    run.acc = EpochAccumulator()
    state = checkpoint_state(run, epoch, run.acc, None)
    if not info.is_main:
        return
    files = []
    if scored is not None and scored[2]:
        metrics, intensity, _ = scored
        best = {k: v for k, v in state.items()
                if k not in ("optimizer", "sampler", "rng", "scaler", "scheduler")}
        files.append((run.run_dir / "best.pt", {
            **best, "metrics": metrics.as_dict(),
            **({"intensity_metrics": intensity.as_dict()} if intensity is not None else {})}))
        write_card_file(run.run_dir, state)
    writer.submit(files + [(run.run_dir / "last.pt", state)])
    if scored is not None:
        write_metrics(run.run_dir, run.history, run.au_ids, _metrics_header(run))
        if epoch % max(cfg.plot_every, 1) == 0:
            plot_run(run)
    _log_epoch(run, epoch, train_loss, seconds, scored)


def drawn_rate(counts: torch.Tensor) -> torch.Tensor:
    """Each AU's positive rate among the drawn frames coded for it (``counts``: the positives,
    then the coded frames, per AU, as ``StepLog`` sums them); NaN for an AU never coded."""
    if counts.numel() == 0:  # no step this epoch (resumed at its end)
        return counts
    positives, coded = counts.chunk(2)
    return positives / coded


def _evaluate(run: TrainingRun, epoch: int, train_loss: float, totals: torch.Tensor
              ) -> tuple[Any, Any, bool]:
    """(metrics, intensity metrics or None, improved): the epoch scored on the selection split,
    early stopping stepped, its row added to the history."""
    cfg, data = run.cfg, run.data
    metrics, intensity = evaluate_tasks(
        unwrap(run.model), data.select_loader, run.device, run.au_ids, run.criterion,
        amp=cfg.amp, channels_last=cfg.channels_last, info=run.info,
        desc=f"eval {cfg.select_on}", quiet=cfg.quiet or not run.info.is_main)
    score = selection_score(cfg.task, metrics, intensity)
    improved = run.stopper.step(score, epoch)
    row = {"epoch": epoch, "train_loss": train_loss, "seconds": run.acc.seconds,
           "lr": run.optimizer.param_groups[0]["lr"], "select_on": cfg.select_on,
           "eval": metrics.as_dict(), "score": score,
           "drawn_positive_rate": drawn_rate(totals[3:]).tolist(),
           "natural_positive_rate": data.natural_rate.tolist(),
           "best_epoch": run.stopper.best_epoch}
    if intensity is not None:
        row["eval_intensity"] = intensity.as_dict()
    run.history.append(row)
    return metrics, intensity, improved


def _log_epoch(run: TrainingRun, epoch: int, train_loss: float, seconds: float,
               scored: tuple[Any, Any, bool] | None) -> None:
    """One short line an epoch; the drawn positive rates per AU go to metrics.csv/json."""
    cfg = run.cfg
    if scored is None:
        shown, improved = [f"not evaluated (--eval-every {cfg.eval_every})"], False
    else:
        metrics, intensity, improved = scored
        # an intensity run's occurrence head never trains: its F1 is not shown (#21)
        shown = metric_words(metrics.mean_f1 if reports_occurrence(cfg.task) else None,
                             intensity.mean_icc if intensity is not None else None)
    best = best_words(cfg.task, run.stopper.best_score, run.stopper.best_epoch)
    log.info("%s", epoch_line(epoch, run.clock or RunClock(epoch, 1), train_loss, cfg.select_on,
                              shown, best, improved, seconds))


def _metrics_header(run: TrainingRun) -> dict[str, Any]:
    data = run.data
    return {"protocol": run.note, "select_on": run.cfg.select_on, "au_ids": run.au_ids,
            "natural_positive_rate": data.natural_rate.tolist(),
            "expected_drawn_positive_rate": data.expected_rate.tolist(),
            "au_weights": data.au_weights.tolist(), "sampler": run.cfg.sampler,
            "subjects": data.spec.subjects, **task_record(run.cfg.task)}

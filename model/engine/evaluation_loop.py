"""One pass of a model over a loader's frames, scored: the occurrence counts (and scores) and,
when the model has an intensity head, its ICC/r/MAE sums, all summed over the ranks."""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader

from .distributed import DistInfo, all_reduce_sum, gather_objects
from .forward import forward_loss, prepare, shard_frames, unwrap
from .precision import choose_precision
from .progress import progress_bar
from ..evaluation.intensity import IntensityAccumulator, IntensityMetrics
from ..evaluation.metrics import PROBABILITY_THRESHOLD, AUMetrics, MetricAccumulator
from ..nets.regions import ALL_AUS


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
    transform = unwrap(model).input_transform  # the one the model was trained with
    frames = shard_frames(loader)
    names, groups = frames.subject_groups() if frames is not None and by_subject else (None, None)
    acc = MetricAccumulator(au_ids, names, keep_scores=scores,
                            thresholds=PROBABILITY_THRESHOLD if thresholds is None else thresholds)
    with_intensity = intensity and bool(getattr(model, "has_intensity", False))
    regression = (IntensityAccumulator(ALL_AUS, mean_over=au_ids, subjects=names)
                  if with_intensity else None)
    precision = choose_precision(device, amp)
    for images, targets, index in progress_bar(loader, desc=desc, leave=False,
                                            disable=True if quiet else None):
        x = prepare(images, device, channels_last, transform)
        y = targets.to(device)
        loss, logits, predicted, target_r = forward_loss(
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

"""The run's history drawn (loss, F1/ICC per epoch) beside its recipe; a plotting problem is
logged, never allowed to cost the run."""
from __future__ import annotations

import logging

from .run import TrainingRun, run_name
from ..evaluation.provenance import recipe_line
from ..evaluation.tasks import reports_occurrence

log = logging.getLogger("model.train")


def plot_run(run: TrainingRun) -> None:
    """The plots of ``run.history`` (losses, scores per epoch) in the run folder."""
    cfg = run.cfg
    try:
        from ..evaluation.plots import plot_history  # matplotlib: loaded only when drawing, and
        # inside the try: a bare GPU image without it must still train
        plot_history(run.history, run.au_ids, run.run_dir, split=cfg.select_on,
                     title=f"{run_name(cfg)}, {cfg.variant}",
                     occurrence=reports_occurrence(cfg.task), notes=[recipe_line(run.payload())])
    except Exception as err:  # a plotting problem must never cost a training run
        log.warning("could not draw the plots: %s", err)

"""The run's history drawn (loss, F1/ICC per epoch) beside its recipe; a plotting problem is
logged, never allowed to cost the run."""
from __future__ import annotations

import logging

from .run import TrainingRun, run_name
from ..evaluation.optional_plots import draw, plots_module
from ..evaluation.provenance import recipe_line
from ..evaluation.tasks import reports_occurrence

log = logging.getLogger("model.train")


def plot_run(run: TrainingRun) -> None:
    """The plots of ``run.history`` (losses, scores per epoch) in the run folder."""
    plots = plots_module(log)  # matplotlib: loaded only when drawing, and may be missing
    if plots is None:
        return
    cfg = run.cfg
    draw(log, "the plots", plots.plot_history, run.history, run.au_ids, run.run_dir,
         split=cfg.select_on, title=f"{run_name(cfg)}, {cfg.variant}",
         occurrence=reports_occurrence(cfg.task), notes=[recipe_line(run.payload())])

"""Per-AU decision thresholds tuned on the ``--tune-threshold`` split after the run, written into
best.pt, and the test metrics at those thresholds."""
from __future__ import annotations

import logging
from typing import Any

from .checkpoint import load_checkpoint, save_checkpoint
from .config import threshold_note
from .evaluation_loop import run_evaluation
from .forward import unwrap
from .run import TrainingRun
from .run_record import fmt_rates
from ..evaluation.metrics import MetricAccumulator
from ..evaluation.ranking import logits_to_probabilities, tune_logit_thresholds

log = logging.getLogger("model.train")


def tune_decision_thresholds(run: TrainingRun, tested: MetricAccumulator) -> dict[str, Any]:
    """Per-AU F1-optimal thresholds from the best model's scores on the ``--tune-threshold``
    split only (never the test labels unless that split is the test split), written into
    best.pt; and the test metrics at those thresholds, from the test scores already computed."""
    cfg = run.cfg
    tuned = run_evaluation(unwrap(run.model), run.data.tune_loader, run.device, run.au_ids,
                           amp=cfg.amp, channels_last=cfg.channels_last, info=run.info,
                           desc=f"tune {cfg.tune_threshold}", quiet=True, scores=True)
    logits = tune_logit_thresholds(*tuned.score_arrays()[:2])  # float64: no saturated ties
    values = logits_to_probabilities(logits)
    record = {"au_ids": run.au_ids, "values": values, "logits": logits,
              "tuned_on": cfg.tune_threshold, "note": threshold_note(cfg.tune_threshold)}
    if run.info.is_main:
        best = load_checkpoint(run.run_dir / "best.pt", map_location="cpu")
        save_checkpoint(run.run_dir / "best.pt", {**best, "decision_thresholds": record})
        log.info("decision thresholds tuned on %s: %s", cfg.tune_threshold,
                 fmt_rates(run.au_ids, values))
    return {"decision_thresholds": record,
            "test_tuned": tested.at_thresholds(values, logits).compute().as_dict()}

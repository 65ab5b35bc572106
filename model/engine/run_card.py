"""The card steps of a training run: held-out metrics into best.pt's card once tested, and the
end of an --all-subjects run (no test: results.json says where its metrics come from)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..cards.build import card_with_test, write_card_file
from ..cards.card import CARD_KEY, ModelCard
from ..evaluation.records import write_json
from .checkpoint import load_checkpoint, save_checkpoint

log = logging.getLogger("model.train")


def record_held_out_metrics(run_dir: Path, summary: dict[str, Any]) -> None:
    """best.pt's card takes the fold's test metrics; MODEL_CARD.md is rewritten beside it."""
    path = Path(run_dir) / "best.pt"
    best = card_with_test(load_checkpoint(path, map_location="cpu"), summary)
    save_checkpoint(path, best)
    write_card_file(run_dir, best)
    card = ModelCard.from_dict(best.get(CARD_KEY) or {})
    log.info("model card (%s): %s", Path(run_dir) / "MODEL_CARD.md", card.summary_line())


def finish_all_subjects(run: Any, summary: dict[str, Any]) -> None:
    """results.json/MODEL_CARD.md of an --all-subjects run, and its card's summary line."""
    if not run.info.is_main:
        return
    best = load_checkpoint(Path(run.run_dir) / "best.pt", map_location="cpu")
    card = ModelCard.from_dict(best.get(CARD_KEY) or {})
    summary.update({"all_subjects": True, "subjects": run.data.spec.subjects["train"],
                    "card_metrics": card.metrics})
    write_json(Path(run.run_dir) / "results.json", summary)
    write_card_file(run.run_dir, best)
    log.info("all subjects, %d epochs, last epoch kept: %s", summary["epochs_run"],
             card.summary_line())
    if card.metrics.get("source") == "none":
        log.warning("no held-out estimate for this model: %s", card.metrics.get("detail"))

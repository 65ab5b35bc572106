"""What a finished ``model.crossval`` run tells a deployable (``--all-subjects``) model: the
recipe it validated, how many epochs its folds kept, and its pooled held-out metrics.

Those metrics describe the recipe, not the all-subjects model (which has no held-out subject):
the card says so in as many words (the trap of a checkpoint whose "val" score is in-sample).
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from pipeline.cli import CommandError

from .metric_values import f1_values

REPORT = "crossval.json"


class CrossvalRecordError(CommandError, ValueError):
    """``--from-crossval`` names no usable crossval run."""


def read_crossval(folder: Path | str, variant: str = "tranet") -> dict[str, Any]:
    """``{"folder", "runs" (the fold summaries of ``variant``), "train_config" (the first fold
    run's), "bootstrap"}``; a CrossvalRecordError names the folder and what is missing."""
    folder = Path(folder)
    path = folder / REPORT
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CrossvalRecordError(f"--from-crossval {folder}: no readable {REPORT} ({err}); "
                                  "give a finished model.crossval --out folder") from None
    runs = [r for r in (report.get("results") or {}).get(variant) or []
            if isinstance(r, dict) and r.get("status") == "finished"]
    if not runs:
        raise CrossvalRecordError(f"--from-crossval {folder}: {REPORT} holds no finished "
                                  f"{variant} fold")
    config = _fold_train_config(folder, runs[0])
    if config is None:
        raise CrossvalRecordError(f"--from-crossval {folder}: its fold run "
                                  f"{runs[0].get('run_dir')} has no readable config.json")
    return {"folder": str(folder), "runs": runs, "train_config": config,
            "bootstrap": report.get("bootstrap") or {}, "protocol": report.get("protocol", "")}


def _fold_train_config(folder: Path, run: dict[str, Any]) -> dict[str, Any] | None:
    """The fold run's recorded train_config: its run_dir as recorded, else the standard place
    under ``folder`` (a crossval folder moved since)."""
    recorded = Path(str(run.get("run_dir", "")))
    for run_dir in (recorded, folder / str(run.get("variant", "tranet")) / recorded.name):
        try:
            return json.loads((run_dir / "config.json").read_text())["train_config"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def fixed_epochs(record: dict[str, Any]) -> int:
    """The epochs an all-subjects run trains: the median of the folds' best epochs (the point
    where held-out subjects stopped improving), at least 1."""
    best = [int(r["best_epoch"]) for r in record["runs"] if r.get("best_epoch")]
    return max(1, round(statistics.median(best))) if best else int(
        record["train_config"].get("epochs", 1))


def crossval_metrics(record: dict[str, Any]) -> dict[str, Any]:
    """The card's metrics: the folds' test results pooled (mean over folds, subject bootstrap
    CIs), labelled as the crossval of the same recipe."""
    runs = record["runs"]
    boot = record.get("bootstrap") or {}
    values: dict[str, Any] = {}
    tests = [r["test"] for r in runs if r.get("test")]
    if len(tests) == len(runs):
        values.update(f1_values(tests, int(boot.get("resamples", 1000)), int(boot.get("seed", 0))))
    iccs = [r["test_intensity"]["mean_icc"] for r in runs
            if (r.get("test_intensity") or {}).get("mean_icc") is not None]
    if iccs and len(iccs) == len(runs):
        values["mean_icc"] = sum(iccs) / len(iccs)
    folds = sorted(int(r.get("fold", 0)) for r in runs)
    return {"source": "crossval",
            "detail": f"crossval of the same recipe ({record['folder']}; folds "
                      f"{', '.join(map(str, folds))}), not of this model", "values": values}


def no_estimate() -> dict[str, Any]:
    """An all-subjects model without a crossval record: nothing measured it."""
    return {"source": "none", "detail": "no held-out estimate: every subject trained and no "
                                        "crossval record was given (--from-crossval)",
            "values": {}}

"""Model cards built from a training run's own records (configuration, shards, test results).

The trainer calls :func:`run_card` for every checkpoint it writes (metrics "none" until the run
has been tested), :func:`card_with_test` once the held-out fold's test has run, and
:func:`write_card_file` for ``MODEL_CARD.md`` beside ``best.pt``. An ``--all-subjects`` run
takes its metrics from the crossval record it was given (:mod:`model.cards.crossval_metrics`).
Only the run's attributes are read here (no engine import: the engine imports this module).
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.cli import atomic_write_text

from ..evaluation.label_rules import dataset_record, dataset_titles
from ..evaluation.provenance import folds_phrase, recipe_line
from .card import CARD_KEY, TWIN_WARNING, ModelCard
from .crossval_record import crossval_metrics, no_estimate, read_crossval
from .metric_values import f1_values

#: The card file written beside best.pt.
CARD_FILE = "MODEL_CARD.md"
REPO = Path(__file__).resolve().parents[2]
TOOLKIT_LICENCE = "MIT (the toolkit's own, LICENSE): no pretrained weights"
VGGFACE2_LICENCE = ("VGGFace2 terms: research use only; check the terms of the copy you used "
                    "(docs/model-card.md, 'Licences of the model files')")


def run_card(run: Any, metrics: dict[str, Any] | None = None) -> ModelCard:
    """The card of a training run (a ``model.engine.run.TrainingRun``); ``metrics`` default to
    the run's crossval record (--all-subjects) or to "none, not evaluated yet"."""
    cfg = run.cfg
    manifest = _manifest(str(cfg.manifest))
    record = {"train_config": dataclasses.asdict(cfg),
              "model_config": dataclasses.asdict(run.model_config),
              "data": {"image_size": run.data.geometry["image_size"],
                       "threshold": run.data.threshold}, "pretrained": run.pretrained}
    card = ModelCard(
        data=_data(run), task=cfg.task, heads=_heads(cfg.task), protocol=_protocol(run, manifest),
        metrics=metrics or _planned_metrics(cfg),
        recipe={"name": (cfg.recipe or {}).get("name") or "command-line options",
                "variant": cfg.variant, "preset": cfg.preset, "epochs_max": cfg.epochs,
                "line": recipe_line(record, manifest)},
        backbone=_backbone(cfg, run.pretrained),
        created=_created())
    card.intended_use, card.limits = _use_and_limits(card)
    return card


def _planned_metrics(cfg: Any) -> dict[str, Any]:
    """Before the run's test: none yet; an --all-subjects run: its crossval record's, or none."""
    if not getattr(cfg, "all_subjects", False):
        return {"source": "none", "detail": "not evaluated yet", "values": {}}
    if not cfg.from_crossval:
        return no_estimate()
    return _cached_crossval(str(cfg.from_crossval), cfg.variant, crossval_metrics, read_crossval)


@functools.lru_cache(maxsize=4)
def _cached_crossval(folder: str, variant: str, metrics: Any, read: Any) -> dict[str, Any]:
    return metrics(read(folder, variant))  # bootstrap once a run, not at each checkpoint


@functools.lru_cache(maxsize=4)
def _manifest(path: str) -> dict[str, Any] | None:
    from pipeline.build_folds import load_folds

    try:
        return load_folds(path)
    except Exception:  # the trainer has read it already; a card never stops a run
        return None


def _data(run: Any) -> dict[str, Any]:
    alignment = run.data.alignment or {}
    source = alignment.get("data_source", "unknown")
    labels = dataset_record(run.data.train.datasets, run.data.threshold, run.data.spec.au_ids)
    title = dataset_titles(labels["datasets"])
    detail = {"twin": f"the synthetic {title} twin (pipeline.synth), not real faces",
              "release": f"the {title} release", "mixed": "shards of several sources: "
              + ", ".join(alignment.get("data_sources") or []),
              }.get(source, "not recorded (shards aligned before pipeline.align recorded it)")
    geometry = run.data.geometry
    return {"dataset": title, "source": source, "source_detail": detail,
            "sources": alignment.get("data_sources") or [source],
            "release_roots": alignment.get("release_roots") or [],
            "subjects": list(run.data.spec.subjects["train"]),
            "cameras": list(run.cfg.cameras),
            "landmark_source": ", ".join(alignment.get("landmark_sources") or ["unknown"]),
            "alignment": {"image_size": geometry["image_size"],
                          "source_image_size": geometry.get("source_image_size"),
                          "nose_target": geometry["nose_target"],
                          "chin_target": geometry["chin_target"],
                          "pipeline_version": alignment.get("pipeline_version", "")},
            "threshold": (f"FACS intensity >= {run.data.threshold}"
                          if "intensity" in " ".join(labels["label_rules"].values())
                          else "none: the release's occurrence codes"),
            "labels": "; ".join(labels["label_rules"].values()),
            "au_regions": ", ".join(f"AU{a} {r}" for a, r in labels["regions"].items())}


def _heads(task: str) -> list[str]:
    return {"occurrence": ["occurrence"], "intensity": ["intensity"],
            "both": ["occurrence", "intensity"]}.get(task, [task])


def _protocol(run: Any, manifest: dict[str, Any] | None) -> dict[str, Any]:
    cfg, subjects = run.cfg, run.data.spec.subjects
    if getattr(cfg, "all_subjects", False):
        return {"folds": folds_phrase(manifest), "test_subjects": "none: all subjects train",
                "selection": f"none: the last of {cfg.epochs} epochs is kept",
                "note": run.note}
    selection = ("TEST subjects (the paper's protocol: optimistic)" if cfg.select_on == "test"
                 else f"validation subjects {', '.join(subjects['val'])}")
    return {"folds": folds_phrase(manifest), "fold": cfg.fold,
            "test_subjects": list(subjects["test"]), "selection": selection, "note": run.note}


def _backbone(cfg: Any, report: dict[str, Any] | None) -> dict[str, Any]:
    report = report or {}
    name = "SENet-50 (built in)" if cfg.backbone == "senet50" else cfg.backbone
    if cfg.preset == "small" and cfg.backbone == "senet50":
        name = "reduced SENet (small preset, built in)"
    fmt, source = report.get("format"), report.get("source")
    if not cfg.pretrained and not source:
        return {"name": name, "weights": "from scratch", "licence": TOOLKIT_LICENCE}
    if fmt == "hub" or str(cfg.pretrained) == "hub":
        licence = report.get("license") or report.get("licence") or \
            f"see the model's timm page ({cfg.backbone})"
        return {"name": name, "weights": f"timm hub ({source or cfg.backbone})",
                "licence": licence}
    weights = {"weights": f"file {Path(str(source or cfg.pretrained)).name} ({fmt or '?'})"}
    if report.get("sha256"):
        weights["sha256"] = report["sha256"]
    licence = VGGFACE2_LICENCE if fmt == "vggface2-pickle" else \
        "that of the weights file's source (docs/model-card.md, 'Licences of the model files')"
    return {"name": name, **weights, "licence": licence}


def _use_and_limits(card: ModelCard) -> tuple[str, list[str]]:
    limits = [f"Predicts DISFA's AUs only, from faces aligned as in data.alignment; labels are "
              f"positive at {card.data.get('threshold')}.",
              "DISFA holds 27 adults filmed frontally under lab lighting: other ages, poses, "
              "lighting and cameras are outside what it was trained or measured on."]
    if card.metrics.get("source") == "crossval":
        limits.append("Its metrics are crossval estimates of the same recipe, not of this model "
                      "(which saw every subject: no held-out estimate of its own).")
    if card.trained_on_twin:
        return (f"Testing the toolkit's pipeline only. {TWIN_WARNING}", limits)
    if card.data.get("source") == "release":
        limits.append("Trained on the DISFA release: the DISFA licence applies to this "
                      "checkpoint (research use; no redistribution beyond what it allows).")
    return ("Research on facial action units of adults in frontal video, with the limits below; "
            "not for clinical, forensic or any decision about a person.", limits)


@functools.lru_cache(maxsize=1)
def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def _created() -> dict[str, Any]:
    """Once a process: the run's start, not each checkpoint's save."""
    return {"toolkit_version": __version__, "git_revision": _git_revision(),
            "utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500]}


def held_out_metrics(summary: dict[str, Any], resamples: int = 1000, seed: int = 0
                     ) -> dict[str, Any]:
    """The card's metrics from a run's test results: mean and per-AU F1 with the subject
    bootstrap's 95% intervals, ICC when the intensity head was tested."""
    values: dict[str, Any] = {}
    test = summary.get("test")
    if test:
        values.update(f1_values([test], resamples, seed))
    if summary.get("test_intensity"):
        values["mean_icc"] = summary["test_intensity"].get("mean_icc")
    subjects = (test or {}).get("per_subject", {}).get("subjects") or []
    if test and len(subjects) < 3:  # a bootstrap over 1-2 subjects has (almost) no spread
        values["ci_note"] = (f"{len(subjects)} test subject(s): the subject bootstrap's "
                             "intervals are degenerate, not a measure of uncertainty")
    return {"source": "held-out fold",
            "detail": f"fold {summary.get('fold')} test subjects "
                      f"{', '.join(map(str, subjects)) or '?'} (best epoch "
                      f"{summary.get('best_epoch')})", "values": values}


def card_with_test(checkpoint: dict[str, Any], summary: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` with its card's metrics set from the run's test (a card-less one as is)."""
    if CARD_KEY not in checkpoint:
        return checkpoint
    card = ModelCard.from_dict(checkpoint[CARD_KEY])
    if card.metrics.get("source") == "crossval":  # --all-subjects: no test of its own
        return checkpoint
    card.metrics = held_out_metrics(summary)
    card.intended_use, card.limits = _use_and_limits(card)
    return {**checkpoint, CARD_KEY: card.to_dict()}


def write_card_file(folder: Path | str, checkpoint: dict[str, Any]) -> Path | None:
    """``MODEL_CARD.md`` of ``checkpoint``'s card in ``folder`` (atomically)."""
    if CARD_KEY not in checkpoint:
        return None
    return atomic_write_text(Path(folder) / CARD_FILE,
                             ModelCard.from_dict(checkpoint[CARD_KEY]).to_markdown())

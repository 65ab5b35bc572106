"""Table cells and rows with uncertainty: metrics beside their subject-bootstrap intervals.

Every function takes the metric dicts the engine writes (``AUMetrics.as_dict()``: ``f1``,
``accuracy``, ``auc``, ``average_precision`` and ``per_subject.counts``), one per fold, and
returns strings ready for ``records.markdown_table``/``write_csv``. Values are percent with one
decimal; an interval is written ``56.9 [52.0, 61.3]``. Runs recorded before per-subject counts
were kept have no interval ("n/a" in its place) rather than a made-up one. Cells are
``cells.Num``: the same text, with the numbers the CSV writer spreads over numeric columns.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .cells import MIN_CI_SUBJECTS, Num, p_cell, p_text, percent
from .paired import paired_difference, paired_runs
from .statistics import confidence_intervals


def pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def pct_num(value: float | None) -> Num:
    """A percent cell without an interval (ROC-AUC, AP, the paper's figures)."""
    return Num(pct(value), {"": percent(value)})


def pct_ci(value: float | None, ci: Sequence[float] | None, degenerate: bool = False) -> Num:
    fields = {"": percent(value), "ci_low": percent(ci[0]) if ci else None,
              "ci_high": percent(ci[1]) if ci else None}
    if ci is None:
        return Num(f"{pct(value)} [n/a]", fields)
    return Num(f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]", fields, degenerate)


def signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def signed_ci(value: float, ci: Sequence[float], p: float | None = None,
              resamples: int | None = None, p_raw: float | None = None,
              degenerate: bool = False) -> Num:
    """A difference in percentage points with its interval (and p, floor-aware with the
    resamples); the CSV gets value, ci_low, ci_high (and p, p_at_floor)."""
    text = f"{signed(value)} [{signed(ci[0])}, {signed(ci[1])}]"
    fields = {"": percent(value), "ci_low": percent(ci[0]), "ci_high": percent(ci[1])}
    if p is None:
        return Num(text, fields, degenerate)
    pc = p_cell(p, resamples, p_raw)
    fields.update({"p": pc.fields[""], "p_at_floor": pc.fields["at_floor"]})
    return Num(f"{text}, {p_text(p, resamples, p_raw)}", fields, degenerate)


def fold_counts(metrics: Sequence[dict[str, Any]]) -> list[np.ndarray] | None:
    """Per-subject ``[S, K, 4]`` counts of each fold, or None if any fold lacks them."""
    out = []
    for m in metrics:
        per = m.get("per_subject")
        if not per or not per.get("counts"):
            return None
        out.append(np.asarray(per["counts"], dtype=np.int64))
    return out


def summary(metrics: Sequence[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    """Mean over folds of F1/accuracy/AUC/AP, with bootstrap intervals when counts are kept."""
    f1 = np.mean([m["f1"] for m in metrics], axis=0)
    acc = np.mean([m["accuracy"] for m in metrics], axis=0)
    out: dict[str, Any] = {"au_ids": metrics[0]["au_ids"], "f1": f1.tolist(),
                           "accuracy": acc.tolist(), "mean_f1": float(f1.mean()),
                           "mean_accuracy": float(acc.mean())}
    for key in ("auc", "average_precision"):
        if all(m.get(key) is not None for m in metrics):
            values = np.array([[np.nan if v is None else v for v in m[key]] for m in metrics])
            finite_count = np.isfinite(values).sum(axis=0)
            per_au = np.where(finite_count > 0, np.where(np.isfinite(values), values, 0).sum(0)
                              / np.maximum(finite_count, 1), np.nan)
            out[key] = [None if not np.isfinite(v) else float(v) for v in per_au]
            finite = per_au[np.isfinite(per_au)]
            out[f"mean_{key}"] = float(finite.mean()) if len(finite) else None
    counts = fold_counts(metrics)
    out["ci"] = confidence_intervals(counts, resamples, seed) if counts and resamples else None
    if out["ci"] is not None:  # one or two subjects a fold: an interval of (near) zero width
        out["test_subjects"] = [len(c) for c in counts]
        out["ci_degenerate"] = min(out["test_subjects"]) < MIN_CI_SUBJECTS
    return out


def metric_rows(label: Any, s: dict[str, Any]) -> list[list[Any]]:
    """F1 and accuracy rows with intervals, then ROC-AUC and AP rows, for one ``summary``."""
    ci, bad = s.get("ci"), bool(s.get("ci_degenerate"))
    rows = [[label, Num("F1 [95% CI]", {"": "f1"}),
             *[pct_ci(v, ci["f1"][k] if ci else None, bad) for k, v in enumerate(s["f1"])],
             pct_ci(s["mean_f1"], ci["mean_f1"] if ci else None, bad)],
            [label, Num("accuracy [95% CI]", {"": "accuracy"}),
             *[pct_ci(v, ci["accuracy"][k] if ci else None, bad)
               for k, v in enumerate(s["accuracy"])],
             pct_ci(s["mean_accuracy"], ci["mean_accuracy"] if ci else None, bad)]]
    for key, name, csv_name in (("auc", "ROC-AUC", "roc_auc"), ("average_precision", "AP", "ap")):
        if s.get(key) is not None:
            rows.append([label, Num(name, {"": csv_name}), *[pct_num(v) for v in s[key]],
                         pct_num(s.get(f"mean_{key}"))])
    return rows


def difference(metrics_a: Sequence[dict[str, Any]], metrics_b: Sequence[dict[str, Any]],
               resamples: int, seed: int) -> dict[str, Any] | None:
    """Paired F1(A) - F1(B) over the folds both have, subjects matched by name."""
    return difference_runs([metrics_a], [metrics_b], resamples, seed)


def difference_runs(runs_a: Sequence[Sequence[dict[str, Any]]],
                    runs_b: Sequence[Sequence[dict[str, Any]]], resamples: int, seed: int
                    ) -> dict[str, Any] | None:
    """Like ``difference`` with several runs (training seeds) a side: over the folds every run
    has, subjects matched by name to the first run of A. None without per-subject counts."""
    runs = [{m.get("_fold"): m for m in run} for run in [*runs_a, *runs_b]]
    folds = [f for f in runs[0] if all(f in run for run in runs[1:])]
    if not folds or not resamples:
        return None
    counts: list[list[np.ndarray]] = [[] for _ in runs]
    for fold in folds:
        first = runs[0][fold].get("per_subject")
        for r, run in enumerate(runs):
            per = run[fold].get("per_subject")
            if not first or not per or sorted(first["subjects"]) != sorted(per["subjects"]):
                return None
            order = [per["subjects"].index(s) for s in first["subjects"]]
            counts[r].append(np.asarray(per["counts"])[order])
    result = paired_runs(counts[:len(runs_a)], counts[len(runs_a):], resamples, seed)
    result["folds"] = folds
    result["ci_degenerate"] = min(len(c) for c in counts[0]) < MIN_CI_SUBJECTS
    return result


def with_folds(results: Sequence[dict[str, Any]], key: str = "test") -> list[dict[str, Any]]:
    """The metric dicts of run summaries, tagged with their fold (for pairing)."""
    return [{**r[key], "_fold": r["fold"]} for r in results if key in r]

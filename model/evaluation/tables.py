"""Table cells and rows with uncertainty: metrics beside their subject-bootstrap intervals.

Every function takes the metric dicts the engine writes (``AUMetrics.as_dict()``: ``f1``,
``accuracy``, ``auc``, ``average_precision`` and ``per_subject.counts``), one per fold, and
returns strings ready for ``records.markdown_table``/``write_csv``. Values are percent with one
decimal; an interval is written ``56.9 [52.0, 61.3]``. Runs recorded before per-subject counts
were kept have no interval ("n/a" in its place) rather than a made-up one.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .paired import paired_difference, paired_runs
from .statistics import confidence_intervals


def pct(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{100 * value:.1f}"


def pct_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if ci is None:
        return f"{pct(value)} [n/a]"
    return f"{pct(value)} [{pct(ci[0])}, {pct(ci[1])}]"


def signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def signed_ci(value: float, ci: Sequence[float], p: float | None = None) -> str:
    text = f"{signed(value)} [{signed(ci[0])}, {signed(ci[1])}]"
    return text if p is None else f"{text}, p={p:.3f}"


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
    return out


def metric_rows(label: Any, s: dict[str, Any]) -> list[list[Any]]:
    """F1 and accuracy rows with intervals, then ROC-AUC and AP rows, for one ``summary``."""
    ci = s.get("ci")
    rows = [[label, "F1 [95% CI]",
             *[pct_ci(v, ci["f1"][k] if ci else None) for k, v in enumerate(s["f1"])],
             pct_ci(s["mean_f1"], ci["mean_f1"] if ci else None)],
            [label, "accuracy [95% CI]",
             *[pct_ci(v, ci["accuracy"][k] if ci else None) for k, v in enumerate(s["accuracy"])],
             pct_ci(s["mean_accuracy"], ci["mean_accuracy"] if ci else None)]]
    for key, name in (("auc", "ROC-AUC"), ("average_precision", "AP")):
        if s.get(key) is not None:
            rows.append([label, name, *[pct(v) for v in s[key]], pct(s.get(f"mean_{key}"))])
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
    return result


def with_folds(results: Sequence[dict[str, Any]], key: str = "test") -> list[dict[str, Any]]:
    """The metric dicts of run summaries, tagged with their fold (for pairing)."""
    return [{**r[key], "_fold": r["fold"]} for r in results if key in r]

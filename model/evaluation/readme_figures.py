"""The main job's figures as the README shows them, made from a run's ``demo_summary.json``.

The README's twin results sit between two markers and are rendered by :func:`render` from
``docs/demo_figures.json``, the figures of one reference run of ``model.demo`` (extracted by
:func:`figures_from_summary`). A test renders that file and compares it with the README, and
``python -m model.readme_figures runs/demo/demo_summary.json`` compares a new run with both, so
a change to the figures cannot land without the README changing with it. Wall times are kept
for the text but never compared: they depend on the machine and its load.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .intensity import intensity_intervals, mean_intensity_over_folds
from .records import markdown_table
from .statistics import DEFAULT_RESAMPLES
from .tables import pct, summary

BEGIN = "<!-- demo-figures:begin -->"
END = "<!-- demo-figures:end -->"
#: Keys of the figures that describe how long a run took, not what it computed.
TIMING_KEYS = ("wall_seconds", "threads", "cpu_count", "machine")


def _round(values: Any, digits: int) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


def _occurrence(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    per_fold = [{"fold": r["fold"], "f1": _round(r["metrics"]["f1"], 4),
                 "mean_f1": round(float(r["metrics"]["mean_f1"]), 4),
                 "mean_accuracy": round(float(r["metrics"]["mean_accuracy"]), 4)}
                for r in results]
    mean = summary([r["metrics"] for r in results], DEFAULT_RESAMPLES, 0)
    ci = mean.get("ci")
    return {"au_ids": list(results[0]["metrics"]["au_ids"]), "folds": per_fold,
            "mean": {"f1": _round(mean["f1"], 4), "mean_f1": round(mean["mean_f1"], 4),
                     "mean_f1_ci": _round(ci["mean_f1"], 4) if ci else None,
                     "mean_accuracy": round(mean["mean_accuracy"], 4)}}


def _intensity(per_fold: Sequence[dict[str, Any]], eval_aus: Sequence[int]) -> dict[str, Any]:
    mean = mean_intensity_over_folds(per_fold)
    ci = intensity_intervals(per_fold, eval_aus, DEFAULT_RESAMPLES, 0)
    return {"per_fold_icc": _round([d["mean_icc"] for d in per_fold], 3),
            "mean_icc": round(float(mean["mean_icc"]), 3),
            "mean_icc_ci": _round(ci["mean_icc"], 3) if ci else None}


def figures_from_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The reproducible figures of one ``model.demo`` run (plus its timings, kept apart)."""
    results = report["results"]
    eval_aus = results[0]["metrics"]["au_ids"]
    figures: dict[str, Any] = {"protocol": report.get("protocol"),
                               "occurrence": _occurrence(results)}
    if all("intensity" in r for r in results):
        figures["intensity"] = _intensity([r["intensity"] for r in results], eval_aus)
    predicted = report.get("predict") or []
    if predicted:
        figures["predict"] = {
            "faces_found": sum(int(p["faces_found"]) for p in predicted),
            "frames": sum(int(p["frames"]) for p in predicted),
            "per_fold_mean_f1": _round([p["metrics"]["mean_f1"] for p in predicted], 4)}
        if all("intensity" in p for p in predicted):
            figures["predict"]["intensity"] = _intensity(
                [p["intensity"] for p in predicted], eval_aus)
    figures["wall_seconds"] = report.get("wall_seconds", {})
    figures["threads"] = report.get("threads")
    figures["cpu_count"] = report.get("cpu_count")
    return figures


def _icc(d: dict[str, Any]) -> str:
    ci = d.get("mean_icc_ci")
    return f"**{d['mean_icc']:.2f}**" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _table(occ: dict[str, Any]) -> str:
    header = ["fold", *[f"AU{a}" for a in occ["au_ids"]], "mean F1", "mean acc."]
    rows = [[str(f["fold"]), *[pct(v) for v in f["f1"]], pct(f["mean_f1"]),
             pct(f["mean_accuracy"])] for f in occ["folds"]]
    mean = occ["mean"]
    ci = mean["mean_f1_ci"]
    ci_text = f" [{pct(ci[0])}, {pct(ci[1])}]" if ci else ""
    rows.append(["**mean**", *[pct(v) for v in mean["f1"]],
                 f"**{pct(mean['mean_f1'])}**{ci_text}", f"**{pct(mean['mean_accuracy'])}**"])
    return markdown_table(header, rows)


def _stage_times(wall: dict[str, float]) -> str:
    """The demo's stages in three groups: data (twin, alignment, folds), training, scoring."""
    groups = {"data": 0.0, "training": 0.0, "evaluation and prediction": 0.0}
    for stage, seconds in wall.items():
        if stage == "total":
            continue
        key = ("training" if stage.startswith("train") else "evaluation and prediction"
               if stage.startswith(("evaluate", "predict")) else "data")
        groups[key] += seconds
    return ", ".join(f"{k} {v:.0f} s" for k, v in groups.items())


def render(figures: dict[str, Any]) -> str:
    """The README's block (markers included) for ``figures``."""
    parts = [_table(figures["occurrence"])]
    n_aus = len(figures["occurrence"]["au_ids"])
    if "intensity" in figures:
        line = (f"Intensity (0-5), mean ICC(3,1) over the {n_aus} AUs: "
                f"{_icc(figures['intensity'])} on the shards")
        predicted = figures.get("predict", {}).get("intensity")
        if predicted:
            folds = " / ".join(f"{v:.3f}" for v in predicted["per_fold_icc"])
            line += f", {_icc(predicted)} through `model.predict` (per fold {folds})"
        parts.append(line + ".")
    if "predict" in figures:
        p = figures["predict"]
        folds = " / ".join(pct(v) for v in p["per_fold_mean_f1"])
        parts.append(f"Through `model.predict` on the raw test videos (dlib landmarks instead of "
                     f"the AAM ones): faces found in {p['faces_found']:,} of {p['frames']:,} "
                     f"frames, mean F1 {folds} per fold.")
    wall = figures.get("wall_seconds") or {}
    if wall:
        machine = f", {figures['machine']}" if figures.get("machine") else ""
        parts.append(f"Wall time of the run these figures come from: **{wall['total']:.0f} s** on "
                     f"{figures.get('cpu_count')} cores{machine} ({_stage_times(wall)}).")
    return "\n".join([BEGIN, "\n\n".join(parts), END])


def readme_block(text: str) -> str:
    """The block between the markers in ``text`` (markers included); ValueError if absent."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {BEGIN} ... {END} block")
    return text[start:end + len(END)]


def replace_block(text: str, figures: dict[str, Any]) -> str:
    return text.replace(readme_block(text), render(figures))


def differences(expected: dict[str, Any], actual: dict[str, Any], path: str = "") -> list[str]:
    """Where two figure dicts differ (timings skipped), as ``key: expected -> actual`` lines."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        out = []
        for key in sorted(set(expected) | set(actual)):
            if not path and key in TIMING_KEYS:
                continue
            out += differences(expected.get(key), actual.get(key), f"{path}{key}.")
        return out
    if expected != actual:
        return [f"{path.rstrip('.')}: {expected} -> {actual}"]
    return []

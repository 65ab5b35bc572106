"""Cross-validation reports with uncertainty: the header lines, Table 1/2 rows with subject
bootstrap intervals, the paired difference to TRA-Net, ``--compare``, ``--test-camera`` and
the per-subject results (JSON and heat maps).

Every table's Markdown and CSV carry the same lines: our protocol, the recipe of each variant,
the paper's protocol where the paper is quoted, and how the intervals were made.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..evaluation.paper_tables import (PAPER_AUS, PAPER_PROTOCOL, TABLE1_TRA, TABLE2_F1,
                                       TABLE2_ORDER, comparison_line, paper_column)
from ..evaluation.plots import plot_subject_heatmap
from ..evaluation.provenance import note_rows, recipe_line
from ..evaluation.records import markdown_table, write_csv, write_json
from ..evaluation.statistics import method_line
from ..evaluation.tasks import common_task, task_line
from ..evaluation.tables import (difference, pct, pct_ci, signed, signed_ci, summary,
                                 with_folds)
from .data import DataError, load_manifest

log = logging.getLogger("model.crossval")

Table = tuple[list[str], list[list[Any]], str]


def run_record(result: dict[str, Any]) -> dict[str, Any]:
    """What a run recorded about how it was made (its config.json), plus epochs run."""
    path = Path(result.get("run_dir", "")) / "config.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {"train_config": {"variant": result.get("variant"),
                                   "select_on": result.get("select_on")}}
    return {**record, "epochs_run": result.get("epochs_run")}


def run_thresholds(results: Sequence[dict[str, Any]]) -> list[int | None]:
    """The label threshold each run recorded (None where its config.json is gone)."""
    return [(run_record(r).get("data") or {}).get("threshold") for r in results]


def header_lines(per_variant: dict[str, list[dict[str, Any]]], protocol: str,
                 manifest_path: Path | str | None, resamples: int, seed: int,
                 paper: bool = True) -> list[str]:
    """Protocol, recipes, (paper protocol), interval method: one entry a line."""
    lines = [f"Ours: {protocol}",
             task_line(common_task([r for rs in per_variant.values() for r in rs]))]
    for variant, results in per_variant.items():
        records = [run_record(r) for r in results]
        path = manifest_path or (records[0].get("train_config") or {}).get("manifest")
        try:
            manifest = load_manifest(path) if path else None
        except DataError:
            manifest = None
        recipes = dict.fromkeys(recipe_line(record, manifest) for record in records)
        lines += [f"Recipe ({variant}): {r}" for r in recipes]
    if paper:
        lines.append(f"Paper: {PAPER_PROTOCOL}")
        lines.append(comparison_line(
            [t for rs in per_variant.values() for t in run_thresholds(rs)]))
    if resamples:
        lines.append(method_line(resamples, seed))
    return lines


def write_table(out: Path, stem: str, title: str, lines: Sequence[str], header: list[str],
                rows: list[list[Any]]) -> str:
    """``stem.md`` and ``stem.csv`` with the same header lines; returns the Markdown."""
    text = f"# {title}\n\n" + "\n\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n"
    write_csv(out / f"{stem}.csv", header, [*note_rows(lines, len(header)), *rows])
    (out / f"{stem}.md").write_text(text)
    return text


def table1_rows(results: Sequence[dict[str, Any]], resamples: int, seed: int
                ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    s = summary([r["test"] for r in results], resamples, seed)
    ci = s["ci"]
    thresholds = run_thresholds(results)  # the paper columns say when labels differ
    header = ["AU", "F1 ours [95% CI]", paper_column("F1", thresholds), "Accuracy ours [95% CI]",
              paper_column("Accuracy", thresholds), "ROC-AUC ours", "AP ours"]
    rows = []
    for k, au in enumerate(s["au_ids"]):
        j = PAPER_AUS.index(au) if au in PAPER_AUS else None
        rows.append([au, pct_ci(s["f1"][k], ci["f1"][k] if ci else None),
                     f"{TABLE1_TRA['f1'][j]:.1f}" if j is not None else "",
                     pct_ci(s["accuracy"][k], ci["accuracy"][k] if ci else None),
                     f"{TABLE1_TRA['accuracy'][j]:.1f}" if j is not None else "",
                     pct((s.get("auc") or [None] * len(s["f1"]))[k]),
                     pct((s.get("average_precision") or [None] * len(s["f1"]))[k])])
    rows.append(["Avg", pct_ci(s["mean_f1"], ci["mean_f1"] if ci else None),
                 f"{TABLE1_TRA['f1_avg']:.1f}",
                 pct_ci(s["mean_accuracy"], ci["mean_accuracy"] if ci else None),
                 f"{TABLE1_TRA['accuracy_avg']:.1f}", pct(s.get("mean_auc")),
                 pct(s.get("mean_average_precision"))])
    return header, rows, s


def _difference_cell(variant: str, per_variant: dict[str, list[dict[str, Any]]],
                     resamples: int, seed: int) -> tuple[str, dict[str, Any] | None]:
    if variant == "tranet":
        return "0 (reference)", None
    if not per_variant.get("tranet"):
        return "n/a (TRA-Net not run)", None
    diff = difference(with_folds(per_variant[variant]), with_folds(per_variant["tranet"]),
                      resamples, seed)
    if diff is None:
        return "n/a (no per-subject counts)", None
    return signed_ci(diff["mean_f1"], diff["mean_f1_ci"], diff["mean_f1_p"]), diff


def table2_rows(per_variant: dict[str, list[dict[str, Any]]], resamples: int, seed: int
                ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """Ours (F1 [CI] per AU and mean, difference to TRA-Net) and the paper's row per variant."""
    aus = next(iter(per_variant.values()))[0]["test"]["au_ids"]
    header = ["Method", "source", *[f"AU{a}" for a in aus], "Avg",
              "difference to TRA-Net [95% CI], p"]
    rows, differences = [], {}
    for variant in TABLE2_ORDER:
        name, paper_f1, paper_avg = TABLE2_F1[variant]
        if per_variant.get(variant):
            s = summary([r["test"] for r in per_variant[variant]], resamples, seed)
            ci = s["ci"]
            cell, diff = _difference_cell(variant, per_variant, resamples, seed)
            if diff is not None:
                differences[variant] = diff
            rows.append([name, "ours",
                         *[pct_ci(v, ci["f1"][k] if ci else None) for k, v in enumerate(s["f1"])],
                         pct_ci(s["mean_f1"], ci["mean_f1"] if ci else None), cell])
        paper = [f"{paper_f1[PAPER_AUS.index(a)]:.1f}" if a in PAPER_AUS else "" for a in aus]
        rows.append([name, "paper", *paper, f"{paper_avg:.1f}",
                     "0 (reference)" if variant == "tranet"
                     else signed((paper_avg - TABLE1_TRA["f1_avg"]) / 100)])
    return header, rows, differences


def compare_rows(name_a: str, results_a: Sequence[dict[str, Any]], name_b: str,
                 results_b: Sequence[dict[str, Any]], resamples: int, seed: int,
                 key_a: str = "test", key_b: str = "test"
                 ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """Per AU and mean: F1 of A and of B with intervals, and the paired difference A - B."""
    ma, mb = with_folds(results_a, key_a), with_folds(results_b, key_b)
    folds = sorted({m["_fold"] for m in ma} & {m["_fold"] for m in mb})
    if not folds:
        raise DataError(f"{name_a} and {name_b} share no fold; a paired comparison needs the "
                        "same held-out subjects")
    ma = [m for m in ma if m["_fold"] in folds]
    mb = [m for m in mb if m["_fold"] in folds]
    sa, sb = summary(ma, resamples, seed), summary(mb, resamples, seed)
    diff = difference(ma, mb, resamples, seed)
    if diff is None:
        raise DataError(f"{name_a} / {name_b}: per-subject counts are missing or the held-out "
                        "subjects differ; rerun the folds with this version to compare them")
    header = ["AU", f"F1 {name_a} [95% CI]", f"F1 {name_b} [95% CI]",
              f"{name_a} - {name_b} [95% CI]", "p"]
    rows = []
    labels = [f"AU{a}" for a in sa["au_ids"]] + ["Avg"]
    for k, label in enumerate(labels):
        mean = label == "Avg"
        get = (lambda s, n: (s[f"mean_{n}"], s["ci"][f"mean_{n}"] if s["ci"] else None)) if mean \
            else (lambda s, n: (s[n][k], s["ci"][n][k] if s["ci"] else None))
        d, dci, p = ((diff["mean_f1"], diff["mean_f1_ci"], diff["mean_f1_p"]) if mean else
                     (diff["f1"][k], diff["f1_ci"][k], diff["f1_p"][k]))
        rows.append([label, pct_ci(*get(sa, "f1")), pct_ci(*get(sb, "f1")), signed_ci(d, dci),
                     f"{p:.3f}"])
    return header, rows, {"folds": folds, "a": sa, "b": sb, "difference": diff}


def per_subject(results: Sequence[dict[str, Any]], key: str = "test") -> list[dict[str, Any]]:
    """One entry per held-out subject and fold: F1 per AU and frame count."""
    out = []
    for r in results:
        per = (r.get(key) or {}).get("per_subject") or {}
        positives = per.get("positives") or [None] * len(per.get("subjects", []))
        for s, f1, n, pos in zip(per.get("subjects", []), per.get("f1", []),
                                 per.get("n_frames", []), positives):
            out.append({"subject": s, "fold": r["fold"], "n_frames": n, "f1": f1,
                        "positives": pos})
    return out


def write_heatmap(entries: Sequence[dict[str, Any]], au_ids: Sequence[int], path: Path,
                  title: str, lines: Sequence[str]) -> Path | None:
    if not entries:
        return None
    try:
        return plot_subject_heatmap([f"{e['subject']} (fold {e['fold']})" for e in entries],
                                    au_ids, [e["f1"] for e in entries], path, title=title,
                                    notes=[n for n in lines
                                           if not n.startswith(("Paper", "Comparison"))],
                                    positives=_positives(entries))
    except Exception as err:  # a plotting problem must never cost the tables
        log.warning("could not draw %s: %s", path, err)
        return None


def _positives(entries: Sequence[dict[str, Any]]) -> list | None:
    return ([e["positives"] for e in entries] if all(e.get("positives") is not None
                                                      for e in entries) else None)


def load_run_folder(folder: Path | str) -> tuple[str, list[dict[str, Any]]]:
    """(variant, fold summaries) of a finished model.crossval output folder."""
    path = Path(folder) / "crossval.json"
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable model.crossval report ({err})") from err
    results = {v: rs for v, rs in (report.get("results") or {}).items() if rs}
    if not results:
        raise DataError(f"{path}: no finished folds to compare")
    variant = "tranet" if "tranet" in results or len(results) != 1 else next(iter(results))
    if variant not in results:
        raise DataError(f"{path}: several variants {sorted(results)} and no tranet; compare "
                        "variant names within one --out instead")
    return variant, results[variant]

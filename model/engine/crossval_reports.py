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
from typing import Any, Collection, Sequence

import numpy as np

from ..evaluation.paper_tables import (PAPER_AUS, PAPER_PROTOCOL, TABLE1_TRA, TABLE2_F1,
                                       TABLE2_ORDER, comparison_line, paper_column)
from ..evaluation.optional_plots import draw, plots_module
from ..evaluation.cells import PERCENT_UNITS, degenerate_line, p_cell
from ..evaluation.provenance import recipe_line
from ..evaluation.records import markdown_table, write_csv, write_json
from ..evaluation.statistics import method_line
from ..evaluation.paired import holm
from ..evaluation.protocol import protocol_differences, recipe_differences
from ..evaluation.tasks import common_task, task_line
from ..evaluation.tables import (difference, difference_runs, pct_ci, pct_num, signed,
                                 signed_ci, summary, with_folds)
from .config import RUNTIME_OPTIONS
from .data import DataError, load_manifest

log = logging.getLogger("model.crossval")

Table = tuple[list[str], list[list[Any]], str]
#: Settings left out of "what differs": how a run executed, and per-run bookkeeping.
RECIPE_IGNORED = (*RUNTIME_OPTIONS, "fold", "out")


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


def on_disfa(results: Sequence[dict[str, Any]]) -> bool:
    """Whether the runs trained on DISFA (runs made before #26 recorded no dataset: DISFA), the
    only dataset the paper's numbers are of: other datasets' tables leave them out."""
    return all((run_record(r).get("data") or {}).get("dataset", "disfa") == "disfa"
               for r in results)


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
    every = [r for rs in per_variant.values() for r in rs]
    if paper and not on_disfa(every):
        lines.append("Paper: not shown: its numbers are DISFA's, these runs are not on DISFA")
    elif paper:
        lines.append(f"Paper: {PAPER_PROTOCOL}")
        lines.append(comparison_line(
            [t for rs in per_variant.values() for t in run_thresholds(rs)]))
    if resamples:
        lines.append(method_line(resamples, seed, subjects=count_subjects(per_variant)))
        few = degenerate_line(subjects_per_fold(per_variant))
        lines += [few] if few else []
    return lines


def count_subjects(per_variant: dict[str, Sequence[dict[str, Any]]]) -> int | None:
    """Distinct (fold, test subject) pairs of the runs; None when no run kept per-subject data."""
    pairs = {(r.get("fold"), s) for rs in per_variant.values() for r in rs
             for s, in zip(((r.get("test") or {}).get("per_subject") or {}).get("subjects", []))}
    return len(pairs) or None


def subjects_per_fold(per_variant: dict[str, Sequence[dict[str, Any]]]) -> dict[str, int]:
    """Test subjects of each (variant, fold) that kept per-subject data."""
    out = {}
    for variant, results in per_variant.items():
        for r in results:
            subjects = ((r.get("test") or {}).get("per_subject") or {}).get("subjects")
            if subjects:
                out[f"{r.get('fold')} ({variant})"] = len(subjects)
    return out


def table2_test_lines(per_variant: dict[str, list[dict[str, Any]]], resamples: int, seed: int
                      ) -> list[str]:
    """How Table 2's difference column was made (empty without TRA-Net or resamples)."""
    diffs = differences_to_tranet(per_variant, resamples, seed) if resamples else {}
    if not diffs:
        return []
    first = next(iter(diffs.values()))["method"]
    return [*first, f"Table 2: the difference column's p is Holm-corrected over "
            f"the {len(diffs)} variant(s) compared with TRA-Net (raw as mean_f1_p_raw in "
            "crossval.json)"]


#: The CSV names of ``compare_rows``' columns (the Markdown's headings name the two sides).
COMPARE_COLUMNS = ["au", "f1_a", "f1_b", "difference", "p"]


def write_table(out: Path, stem: str, title: str, lines: Sequence[str], header: list[str],
                rows: list[list[Any]], columns: Sequence[str] | None = None) -> str:
    """``stem.md`` and ``stem.csv`` with the same header lines; returns the Markdown."""
    text = f"# {title}\n\n" + "\n\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n"
    write_csv(out / f"{stem}.csv", header, rows, notes=[f"Table: {title}", *lines],
              columns=columns, units=PERCENT_UNITS)
    (out / f"{stem}.md").write_text(text)
    return text


def table1_rows(results: Sequence[dict[str, Any]], resamples: int, seed: int
                ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    s = summary([r["test"] for r in results], resamples, seed)
    ci, bad = s["ci"], bool(s.get("ci_degenerate"))
    thresholds = run_thresholds(results)  # the paper columns say when labels differ
    disfa = on_disfa(results)  # the paper's numbers are DISFA's: none beside other datasets
    header = ["AU", "F1 ours [95% CI]", paper_column("F1", thresholds), "Accuracy ours [95% CI]",
              paper_column("Accuracy", thresholds), "ROC-AUC ours", "AP ours"]
    rows = []
    for k, au in enumerate(s["au_ids"]):
        j = PAPER_AUS.index(au) if au in PAPER_AUS and disfa else None
        rows.append([au, pct_ci(s["f1"][k], ci["f1"][k] if ci else None, bad),
                     f"{TABLE1_TRA['f1'][j]:.1f}" if j is not None else "",
                     pct_ci(s["accuracy"][k], ci["accuracy"][k] if ci else None, bad),
                     f"{TABLE1_TRA['accuracy'][j]:.1f}" if j is not None else "",
                     pct_num((s.get("auc") or [None] * len(s["f1"]))[k]),
                     pct_num((s.get("average_precision") or [None] * len(s["f1"]))[k])])
    rows.append(["Avg", pct_ci(s["mean_f1"], ci["mean_f1"] if ci else None, bad),
                 f"{TABLE1_TRA['f1_avg']:.1f}" if disfa else "",
                 pct_ci(s["mean_accuracy"], ci["mean_accuracy"] if ci else None, bad),
                 f"{TABLE1_TRA['accuracy_avg']:.1f}" if disfa else "", pct_num(s.get("mean_auc")),
                 pct_num(s.get("mean_average_precision"))])
    if not disfa:  # no paper columns at all
        header = [c for j, c in enumerate(header) if j not in (2, 4)]
        rows = [[c for j, c in enumerate(row) if j not in (2, 4)] for row in rows]
    return header, rows, s


def comparability_lines(name_a: str, results_a: Sequence[dict[str, Any]], name_b: str,
                        results_b: Sequence[dict[str, Any]], allow_mismatch: bool = False,
                        context: str = "Table 2") -> tuple[list[str], list[str]]:
    """(note lines, protocol differences) of comparing two sides' runs. A difference in protocol
    raises a DataError naming each one unless ``allow_mismatch``; the lines then say so."""
    pairs_a = [(run_record(r), r) for r in results_a]
    pairs_b = [(run_record(r), r) for r in results_b]
    differences, unverified = protocol_differences(name_a, pairs_a, name_b, pairs_b)
    if differences and not allow_mismatch:
        raise DataError(f"{context}: {name_a} vs {name_b}: not the same protocol, so the "
                        f"difference would not mean what it says: {'; '.join(differences)}. "
                        "Compare runs made the same way, or pass --allow-protocol-mismatch to go "
                        "on (then labelled)")
    lines = ([f"PROTOCOL MISMATCH (compared anyway, --allow-protocol-mismatch): "
              f"{'; '.join(differences)}"] if differences else
             [f"Protocol of {name_a} and {name_b}: the same (label threshold, folds' subjects, "
              "AUs, camera, landmark source, task, input size, model selection)"])
    if unverified:
        lines.append(f"Protocol not recorded by every run, unverified: {', '.join(unverified)}")
    recipe = recipe_differences(name_a, [p[0] for p in pairs_a], name_b, [p[0] for p in pairs_b],
                                ignore=RECIPE_IGNORED)
    lines.append(f"Recipe differences: {'; '.join(recipe)}" if recipe else
                 "Recipe differences: none recorded (same training settings)")
    return lines, differences


def table2_protocol(per_variant: dict[str, list[dict[str, Any]]], allow_mismatch: bool = False
                    ) -> tuple[list[str], set[str]]:
    """Each variant against TRA-Net: (note lines of mismatches, variants that differ)."""
    lines, mismatched = [], set()
    for variant, results in per_variant.items():
        if variant == "tranet" or not per_variant.get("tranet"):
            continue
        notes, differences = comparability_lines(variant, results, "tranet",
                                                 per_variant["tranet"], allow_mismatch)
        if differences:
            lines.append(notes[0].replace("MISMATCH", f"MISMATCH ({variant} vs tranet)", 1))
            mismatched.add(variant)
    return lines, mismatched


def _difference_cell(variant: str, diff: dict[str, Any] | None, per_variant: dict[str, Any],
                     mismatched: Collection[str]) -> str:
    """Table 2's last column; a Num (difference, interval, p) where there is a difference."""
    if variant == "tranet":
        return "0 (reference)"
    if not per_variant.get("tranet"):
        return "n/a (TRA-Net not run)"
    if diff is None:
        return "n/a (no per-subject counts)"
    cell = signed_ci(diff["mean_f1"], diff["mean_f1_ci"], diff["mean_f1_p"], diff.get("resamples"),
                     diff.get("mean_f1_p_raw"), bool(diff.get("ci_degenerate")))
    if variant in mismatched:  # the CSV says so in its comment block (PROTOCOL MISMATCH line)
        return type(cell)(f"{cell} (PROTOCOL MISMATCH)", cell.fields, cell.degenerate)
    return cell


def differences_to_tranet(per_variant: dict[str, list[dict[str, Any]]], resamples: int,
                          seed: int) -> dict[str, Any]:
    """Paired difference of each variant's mean F1 to TRA-Net; the mean's p Holm-corrected over
    the variants compared (raw as ``mean_f1_p_raw``)."""
    diffs = {}
    if per_variant.get("tranet"):
        for variant in TABLE2_ORDER:
            if variant != "tranet" and per_variant.get(variant):
                diff = difference(with_folds(per_variant[variant]),
                                  with_folds(per_variant["tranet"]), resamples, seed)
                if diff is not None:
                    diffs[variant] = diff
    adjusted = holm([d["mean_f1_p"] for d in diffs.values()])
    for d, p in zip(diffs.values(), adjusted):
        d["mean_f1_p_raw"], d["mean_f1_p"] = d["mean_f1_p"], p
    return diffs


def table2_rows(per_variant: dict[str, list[dict[str, Any]]], resamples: int, seed: int,
                mismatched: Collection[str] = ()
                ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """Ours (F1 [CI] per AU and mean, difference to TRA-Net) and the paper's row per variant."""
    aus = next(iter(per_variant.values()))[0]["test"]["au_ids"]
    header = ["Method", "source", *[f"AU{a}" for a in aus], "Avg",
              "difference to TRA-Net [95% CI], p (Holm over the variants)"]
    rows, differences = [], differences_to_tranet(per_variant, resamples, seed)
    disfa = on_disfa([r for rs in per_variant.values() for r in rs])
    for variant in TABLE2_ORDER:
        name, paper_f1, paper_avg = TABLE2_F1[variant]
        if per_variant.get(variant):
            s = summary([r["test"] for r in per_variant[variant]], resamples, seed)
            ci, bad = s["ci"], bool(s.get("ci_degenerate"))
            cell = _difference_cell(variant, differences.get(variant), per_variant, mismatched)
            rows.append([name, "ours", *[pct_ci(v, ci["f1"][k] if ci else None, bad)
                                         for k, v in enumerate(s["f1"])],
                         pct_ci(s["mean_f1"], ci["mean_f1"] if ci else None, bad), cell])
        if not disfa:  # the paper's rows are DISFA's
            continue
        paper = [f"{paper_f1[PAPER_AUS.index(a)]:.1f}" if a in PAPER_AUS else "" for a in aus]
        rows.append([name, "paper", *paper, f"{paper_avg:.1f}",
                     "0 (reference)" if variant == "tranet"
                     else signed((paper_avg - TABLE1_TRA["f1_avg"]) / 100)])
    return header, rows, differences


def _side_summary(runs: Sequence[Sequence[dict[str, Any]]], resamples: int, seed: int
                  ) -> tuple[dict[str, Any], str]:
    """One run: ``summary`` with its bootstrap intervals. Several runs (seeds): the mean over
    runs, its "interval" the lowest and highest run (said so in the column's name)."""
    if len(runs) == 1:
        return summary(runs[0], resamples, seed), "[95% CI]"
    per_run = [summary(run, 0, seed) for run in runs]
    f1 = np.array([s["f1"] for s in per_run])
    means = f1.mean(axis=1)
    s = {**per_run[0], "f1": f1.mean(0).tolist(), "mean_f1": float(means.mean()),
         "per_run_mean_f1": means.tolist(),
         "ci": {"f1": np.stack([f1.min(0), f1.max(0)], 1).tolist(),
                "mean_f1": [float(means.min()), float(means.max())]}}
    return s, f"mean of {len(runs)} runs [lowest, highest run]"


def compare_rows(name_a: str, runs_a: Sequence[Sequence[dict[str, Any]]], name_b: str,
                 runs_b: Sequence[Sequence[dict[str, Any]]], resamples: int, seed: int,
                 key_a: str = "test", key_b: str = "test"
                 ) -> tuple[list[str], list[list[Any]], dict[str, Any]]:
    """Per AU and mean: F1 of A and of B, and the paired difference A - B. ``runs_x``: one list
    of fold summaries per run (several runs a side: training seeds, whose spread the
    difference's interval and p then include)."""
    ma = [with_folds(run, key_a) for run in runs_a]
    mb = [with_folds(run, key_b) for run in runs_b]
    folds = sorted(set.intersection(*[{m["_fold"] for m in run} for run in [*ma, *mb]]))
    if not folds:
        raise DataError(f"{name_a} and {name_b} share no fold; a paired comparison needs the "
                        "same held-out subjects")
    ma = [[m for m in run if m["_fold"] in folds] for run in ma]
    mb = [[m for m in run if m["_fold"] in folds] for run in mb]
    (sa, ca), (sb, cb) = _side_summary(ma, resamples, seed), _side_summary(mb, resamples, seed)
    diff = difference_runs(ma, mb, resamples, seed)
    if diff is None:
        raise DataError(f"{name_a} / {name_b}: per-subject counts are missing or the held-out "
                        "subjects differ; rerun the folds with this version to compare them")
    bad = bool(sa.get("ci_degenerate") or sb.get("ci_degenerate"))
    header = ["AU", f"F1 {name_a} {ca}", f"F1 {name_b} {cb}", f"{name_a} - {name_b} [95% CI]",
              f"p (per AU: Holm over {len(sa['au_ids'])} AUs)"]
    rows = []
    labels = [f"AU{a}" for a in sa["au_ids"]] + ["Avg"]
    for k, label in enumerate(labels):
        mean = label == "Avg"
        get = (lambda s, n: (s[f"mean_{n}"], s["ci"][f"mean_{n}"] if s["ci"] else None)) if mean \
            else (lambda s, n: (s[n][k], s["ci"][n][k] if s["ci"] else None))
        d, dci, p = ((diff["mean_f1"], diff["mean_f1_ci"], diff["mean_f1_p"]) if mean else
                     (diff["f1"][k], diff["f1_ci"][k], diff["f1_p"][k]))
        p_raw = diff["mean_f1_p"] if mean else diff["f1_p_raw"][k]
        rows.append([label, pct_ci(*get(sa, "f1"), bad), pct_ci(*get(sb, "f1"), bad),
                     signed_ci(d, dci, degenerate=bad), p_cell(p, diff["resamples"], p_raw)])
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
    plots = plots_module(log) if entries else None  # a plotting problem never costs the tables
    if plots is None:
        return None
    return draw(log, path, plots.plot_subject_heatmap,
                [f"{e['subject']} (fold {e['fold']})" for e in entries],
                au_ids, [e["f1"] for e in entries], path, title=title,
                notes=[n for n in lines if not n.startswith(("Paper", "Comparison"))],
                positives=_positives(entries))


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

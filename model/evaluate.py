"""Evaluate trained checkpoints on a fold's held-out subjects.

    python -m model.evaluate --checkpoint runs/fold1/best.pt --shards SHARDS --manifest FOLDS --fold 1
    python -m model.evaluate --checkpoint runs/fold{1,2,3}/best.pt --shards SHARDS --manifest FOLDS
    python -m model.evaluate --checkpoint bp4d_run/best.pt --shards DISFA_SHARDS \
        --manifest DISFA_FOLDS --fold 1    # cross-dataset: scores the AUs both code

Per AU: sigmoid >= 0.5, TP/FP/TN/FN pooled over every frame of every test subject of the fold,
F1 and accuracy, and their unweighted means. With one checkpoint per fold, the table also gives
the mean over folds (how the papers report DISFA). A checkpoint trained with ``--task intensity``
or ``both`` also gets ``evaluation_<split>_intensity.{csv,md}``: ICC(3,1), Pearson r and MAE of
the 12 coded AUs (``model.evaluation.intensity``). Labels use the threshold the checkpoint was
trained with, re-derived from the shards' raw intensities; every report names that threshold
and how the model was selected, and the recipe (variant, preset, backbone and weights, image
size, selection split, folds).

Beside each F1 and accuracy: a 95% interval from a subject-level bootstrap (``--bootstrap N``
resamples of the held-out subjects; see model/evaluation/statistics.py); per AU also ROC-AUC and
average precision, and F1 at the checkpoint's tuned thresholds if it has them. Writes
``evaluation_<split>.{json,csv,md}`` and ``evaluation_<split>_subjects.png`` (F1 per subject)
into ``--out``: by default the checkpoint's folder, or for several the folder holding all of
theirs (never fold 1's). On another dataset's shards (the manifest's ``dataset`` differs from
the checkpoint's) only the AUs both datasets code are scored, by the test dataset's rule; the
table names both rules, the AUs skipped and why, and the frames each AU was scored on
(``model.evaluation.cross_dataset``). The CSVs have one header line and numeric columns after a ``#`` note
block (``pandas.read_csv(path, comment="#")``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Sequence


from pipeline.cli import HelpFormatter
from pipeline.cli import CommandError, check_out_dir, int_range, remove_stale_temp_files

from .cli import device_arg, handle_errors
from .engine.checkpoint import CheckpointError
from .engine.data import MAX_WORKERS, DataError
from .engine.evaluator import evaluate_checkpoint, mean_over_folds, results_rows  # noqa: F401
from .evaluation.intensity import INTENSITY_UNITS, intensity_report
from .evaluation.optional_plots import draw, plots_module
from .evaluation.cells import PERCENT_UNITS, degenerate_line, subjects_of
from .evaluation.cross_dataset import cross_dataset_lines
from .evaluation.records import markdown_table, prose_lines, write_csv, write_json
from .evaluation.statistics import DEFAULT_RESAMPLES, MAX_RESAMPLES, method_line
from .evaluation.tasks import (common_task, reports_intensity, reports_occurrence, task_line,
                               task_record)
from .evaluation.tables import summary as summarise

log = logging.getLogger("model.evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m model.evaluate",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="best.pt of one run, or one per fold")
    p.add_argument("--shards", required=True, help="folder of aligned shards")
    p.add_argument("--manifest", required=True, help="folds.json")
    p.add_argument("--fold", type=int_range(1), nargs="+", default=None,
                   help="fold of each checkpoint (default: the fold each was trained on)")
    p.add_argument("--split", default="test", choices=["test", "val", "train"],
                   help="which subjects of the fold to evaluate on")
    p.add_argument("--variant", default=None,
                   help="refuse checkpoints of any other variant (e.g. tranet)")
    p.add_argument("--out", default=None,
                   help="folder for evaluation_<split>.{json,csv,md} (default: the checkpoint's "
                        "folder; several checkpoints: the folder holding all their folders)")
    p.add_argument("--batch-size", type=int_range(1), default=128, help="frames per forward pass")
    p.add_argument("--workers", type=int_range(0, MAX_WORKERS), default=None,
                   help=f"DataLoader worker processes, 0..{MAX_WORKERS} (default: from the CPU "
                        "count, at most 8)")
    p.add_argument("--device", type=device_arg, default="auto",
                   help="auto (cuda when torch sees one, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--amp", default="auto", choices=["auto", "on", "off"],
                   help="mixed precision (model.engine.precision); auto = as the run was trained")
    p.add_argument("--allow-seen", action="store_true",
                   help="evaluate even on subjects the checkpoint was trained or selected on "
                        "(refused without it; the report then says so)")
    p.add_argument("--cameras", nargs="+", default=["left"], choices=["left", "right", "frontal"],
                   help="cameras whose shards are evaluated (DISFA+ and BP4D have one, frontal, "
                        "which the default means there)")
    add_bootstrap_options(p)
    return p


def add_bootstrap_options(p: argparse.ArgumentParser) -> None:
    """--bootstrap/--bootstrap-seed (shared with model.crossval)."""
    p.add_argument("--bootstrap", type=int_range(0, MAX_RESAMPLES), default=DEFAULT_RESAMPLES,
                   metavar="N",
                   help="subject-level bootstrap resamples for the 95%% confidence intervals "
                        f"(0: no intervals; at most {MAX_RESAMPLES})")
    p.add_argument("--bootstrap-seed", type=int_range(0, 2**63 - 1), default=0,
                   help="seed of the bootstrap draws (same seed, same intervals)")


def report_lines(results: Sequence[dict], resamples: int, seed: int) -> list[str]:
    """Protocol, recipe and interval-method lines of a table (Markdown and CSV alike)."""
    lines = [f"Protocol: {n}" for n in sorted({r["protocol"] for r in results})]
    lines += [f"Recipe: {n}" for n in dict.fromkeys(r["recipe"] for r in results)]
    if resamples:
        subjects = {(r.get("fold"), s) for r in results
                    for s in (r["metrics"].get("per_subject") or {}).get("subjects", [])}
        lines.append(method_line(resamples, seed, subjects=len(subjects) or None))
        few = degenerate_line({r.get("fold"): n for r in results
                               for n in subjects_of([r["metrics"]]) or []})
        lines += [few] if few else []
    tuned = {r["decision_thresholds"]["note"] for r in results if r.get("decision_thresholds")}
    lines += [f"Tuned rows: {n}" for n in sorted(tuned)]
    return lines


def write_subject_heatmap(results: Sequence[dict], path: Path, title: str,
                          notes: Sequence[str]) -> Path | None:
    """Every evaluated subject's F1 per AU, all folds stacked (subjects x AUs)."""
    subjects, f1, positives = [], [], []
    for r in results:
        per = r["metrics"].get("per_subject") or {}
        subjects += [f"{s} (fold {r['fold']})" for s in per.get("subjects", [])]
        f1 += per.get("f1", [])
        positives += per.get("positives", [])
    plots = plots_module(log) if subjects else None  # without matplotlib: the tables only
    if plots is None:
        return None
    return draw(log, path, plots.plot_subject_heatmap, subjects, results[0]["metrics"]["au_ids"],
                f1, path, title=title, notes=notes, positives=positives)



def write_intensity_report(results: Sequence[dict], out: Path, stem: str, split: str,
                           protocol: str, resamples: int = DEFAULT_RESAMPLES,
                           seed: int = 0, notes: Sequence[str] = ()) -> None:
    """``<stem>_intensity.{csv,md}`` beside the occurrence tables: ICC(3,1), r and MAE, with
    subject-bootstrap intervals on the mean over folds (on the fold, for one). ``notes``:
    further header lines (the task line)."""
    header, rows, text = intensity_report(
        [(r["fold"], r["intensity"]) for r in results], results[0]["metrics"]["au_ids"],
        f"Intensity on the {split} subjects ({results[0]['variant']})", protocol, resamples,
        seed, notes)
    write_csv(out / f"{stem}_intensity.csv", header, rows, notes=prose_lines(text),
              units=INTENSITY_UNITS)
    (out / f"{stem}_intensity.md").write_text(text)
    print(text)
    print(f"saved {out / stem}_intensity.{{csv,md}}")

@handle_errors("model.evaluate")
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.fold is not None and len(args.fold) != len(args.checkpoint):
        log.error("give one --fold per --checkpoint (%d folds, %d checkpoints)",
                  len(args.fold), len(args.checkpoint))
        return 1
    folds = args.fold or [None] * len(args.checkpoint)
    out = Path(args.out) if args.out else default_out(args.checkpoint)
    if args.out:
        check_out_dir(out)
    refuse_other_evaluation(out / f"evaluation_{args.split}.json", args.checkpoint)
    log.info("writing the evaluation of %d checkpoint(s) to %s", len(args.checkpoint), out)
    results = []
    try:
        for ckpt, fold in zip(args.checkpoint, folds):
            results.append(evaluate_checkpoint(
                ckpt, args.shards, args.manifest, fold, split=args.split, variant=args.variant,
                batch_size=args.batch_size, workers=args.workers, device=args.device,
                cameras=args.cameras, amp=None if args.amp == "auto" else args.amp == "on",
                allow_seen=args.allow_seen))
    except (DataError, CheckpointError) as err:
        raise CommandError(str(err)) from err
    except ValueError as err:
        log.error("%s", err)
        return 1
    variants = {r["variant"] for r in results}
    if len(variants) > 1:
        log.error("checkpoints of different variants %s cannot be averaged; pass --variant",
                  sorted(variants))
        return 1
    try:
        task = common_task(results, "--checkpoint files")
    except ValueError as err:
        raise CommandError(str(err)) from err
    remove_stale_temp_files(check_out_dir(out))
    stem = f"evaluation_{args.split}"
    lines = [*report_lines(results, args.bootstrap, args.bootstrap_seed), task_line(task),
             *cross_dataset_lines(results)]
    summary = {"split": args.split, **task_record(task),
               "protocol": sorted({r["protocol"] for r in results}),
               "recipe": list(dict.fromkeys(r["recipe"] for r in results)), "notes": lines}
    if reports_occurrence(task):
        summary.update(write_occurrence_report(results, out, stem, args, lines))
    else:  # the occurrence head never trained: its F1 would be that of random weights
        summary["results"] = [without_occurrence(r) for r in results]
        log.info("task %s: no occurrence head was trained, so no F1/accuracy tables", task)
    write_json(out / f"{stem}.json", summary)
    if reports_intensity(task) and all("intensity" in r for r in results):
        write_intensity_report(results, out, stem, args.split, " / ".join(summary["protocol"]),
                               args.bootstrap, args.bootstrap_seed, notes=[task_line(task)])
    return 0


def default_out(checkpoints: Sequence[str]) -> Path:
    """One checkpoint: its run folder. Several (one per fold): the folder that holds all their
    run folders, so fold 1's folder does not get an evaluation of every fold."""
    folders = [Path(c).resolve().parent for c in checkpoints]
    if len(set(folders)) == 1:
        return Path(checkpoints[0]).parent
    return Path(os.path.commonpath([str(f) for f in folders]))


def refuse_other_evaluation(path: Path, checkpoints: Sequence[str]) -> None:
    """A CommandError when ``path`` holds an evaluation of other checkpoints: replacing it
    without a word would lose it. The same checkpoints evaluated again replace it."""
    try:
        earlier = json.loads(path.read_text())
        theirs = sorted(str(Path(r["checkpoint"]).resolve()) for r in earlier["results"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    if theirs != sorted(str(Path(c).resolve()) for c in checkpoints):
        raise CommandError(f"{path} holds an evaluation of other checkpoints ({', '.join(theirs)}); "
                           "pass --out FOLDER to write this one elsewhere, or remove that file")
    log.info("replacing %s (an earlier evaluation of the same checkpoints)", path)


def without_occurrence(result: dict) -> dict:
    """An evaluation result less the numbers of an untrained occurrence head."""
    return {k: v for k, v in result.items()
            if k not in ("metrics", "metrics_tuned", "decision_thresholds")}


def write_occurrence_report(results: Sequence[dict], out: Path, stem: str,
                            args: argparse.Namespace, lines: list[str]) -> dict:
    """``<stem>.{csv,md}`` (F1 and accuracy with intervals) and the per-subject heat map;
    the JSON keys they add."""
    header, rows = results_rows(results, args.bootstrap, args.bootstrap_seed)
    write_csv(out / f"{stem}.csv", header, rows, notes=lines, units=PERCENT_UNITS)
    title = f"Evaluation on the {args.split} subjects ({results[0]['variant']})"
    text = f"# {title}\n\n" + "\n\n".join(lines) + "\n\n" + markdown_table(header, rows) + "\n"
    (out / f"{stem}.md").write_text(text)
    drawn = write_subject_heatmap(results, out / f"{stem}_subjects.png",
                                  f"{title}: F1 per subject",
                                  [n for n in lines if n.startswith(("Protocol", "Recipe", "Task"))])
    print(text)
    print(f"saved {out / stem}.{{json,csv,md}}" + (f" and {stem}_subjects.png" if drawn else ""))
    return {"results": results,
            "mean_over_folds": mean_over_folds(results) if len(results) > 1 else None,
            "intervals": summarise([r["metrics"] for r in results], args.bootstrap,
                                   args.bootstrap_seed)}


if __name__ == "__main__":
    raise SystemExit(main())

"""model.demo's report: ``demo_summary.json``'s content, ``demo.md`` and the closing summary
lines; only the numbers of the heads the demo trained (``model.evaluation.tasks``)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Sequence

import torch


def build_report(args: argparse.Namespace, watch: Any, data: dict[str, Any],
                 folds: Sequence[int], results: list, runs: list, predictions: list
                 ) -> dict[str, Any]:
    """demo_summary.json: settings, wall times, folds, per-fold results and predictions."""
    from .evaluate import mean_over_folds, without_occurrence
    from .evaluation.intensity import mean_intensity_over_folds
    from .evaluation.tasks import common_task, reports_intensity, reports_occurrence, task_record

    task = common_task(results)
    occurrence = reports_occurrence(task)

    report = {
        "wall_seconds": {**watch.stages, "total": watch.total},
        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "twin": {"subjects": list(data["synth"]["subjects"]), "frames": args.frames},
        **({"dataset": args.dataset, "alignment_rule": data["alignment_rule"]}
           if "alignment_rule" in data else {}),  # the DISFA demo's summary stays as it was
        "alignment": data["align"].get("totals", {}),
        "folds": [{k: f[k] for k in ("fold", "train", "val", "test", "frames")}
                  for f in data["manifest"]["folds"] if f["fold"] in folds],
        "protocol": results[0]["protocol"], **task_record(task),
        "au_ids": results[0]["metrics"]["au_ids"],
        # an untrained occurrence head's F1 would be that of random weights: left out
        "results": results if occurrence else [without_occurrence(r) for r in results],
        "mean_over_folds": mean_over_folds(results) if occurrence else None,
        "predict": predictions,
        "runs": [{"fold": r["fold"], "best_epoch": r["best_epoch"], "epochs_run": r["epochs_run"],
                  "run_dir": r["run_dir"], "train_seconds": r.get("train_seconds")}
                 for r in runs],
    }
    if reports_intensity(task) and all("intensity" in r for r in results):
        report["intensity_mean_over_folds"] = mean_intensity_over_folds(
            [r["intensity"] for r in results])
    return report

#: demo.md's title per dataset.
TITLES = {"disfa": "DISFA", "bp4d": "BP4D"}


def demo_markdown(report: dict[str, Any]) -> str:
    from .evaluate import results_rows
    from .evaluation.records import markdown_table
    from .evaluation.statistics import DEFAULT_RESAMPLES, method_line

    from .evaluation.tasks import task_line

    times = " | ".join(f"{k} {v:.0f} s" for k, v in report["wall_seconds"].items())
    plots = "\n".join(f"- {r['run_dir']}/{{loss,mean_f1,per_au_f1}}.png" for r in report["runs"])
    plots += "".join(f"\n- {Path(p['out'])}/*_timeline.png (model.predict)"
                     for p in report.get("predict", []))
    predict, table = "", ""
    if report.get("mean_over_folds") is not None:  # a trained occurrence head
        table = "\n\n" + markdown_table(*results_rows(report["results"]))
    if all("metrics" in p for p in report.get("predict") or [{}]) and report.get("predict"):
        aus = report["predict"][0]["metrics"]["au_ids"]
        head = ["fold", "subjects", "faces"] + [f"AU{a}" for a in aus] + ["Avg"]
        lines = [[str(p["fold"]), " ".join(p["subjects"]), f"{p['faces_found']}/{p['frames']}",
                  *[f"{100 * v:.1f}" for v in p["metrics"]["f1"]],
                  f"{100 * p['metrics']['mean_f1']:.1f}"] for p in report["predict"]]
        predict = ("\n\n`model.predict` on the raw test videos (dlib landmarks, no AAM), F1 per "
                   f"AU against the twin's labels:\n\n{markdown_table(head, lines)}")
    notes = "".join(f"Recipe: {r}\n\n" for r in dict.fromkeys(
        x.get("recipe") for x in report["results"]) if r) + method_line(DEFAULT_RESAMPLES, 0)
    title = TITLES.get(report.get("dataset", "disfa"), "DISFA")
    if "alignment_rule" in report:
        notes = f"Alignment: {report['alignment_rule']} (pipeline.align).\n\n{notes}"
    return (f"# Demo on the synthetic {title} twin\n\nHeld-out test subjects of each fold; "
            f"{report['protocol']}\n\n{task_line(report.get('task', 'occurrence'))}\n\n"
            f"{notes}{table}{predict}\n\n"
            f"{intensity_section(report)}"
            f"Wall time ({report['threads']} torch threads): {times}\n\nPlots:\n{plots}\n")


def intensity_section(report: dict[str, Any]) -> str:
    """The intensity tables (shards per fold and mean; model.predict per fold), if trained."""
    from .evaluation.intensity import intensity_report

    if not all("intensity" in r for r in report["results"]):
        return ""
    eval_aus = report.get("au_ids") or report["results"][0]["metrics"]["au_ids"]
    text = intensity_report([(r["fold"], r["intensity"]) for r in report["results"]], eval_aus,
                            "Intensity (0-5) on the held-out test shards", report["protocol"])[2]
    predicted = [p for p in report.get("predict", []) if "intensity" in p]
    if predicted:
        text += "\n" + intensity_report(
            [(p["fold"], p["intensity"]) for p in predicted], eval_aus,
            "Intensity (AUxx_r) of model.predict on the raw held-out test videos",
            "dlib landmarks, no AAM; a frame without a face counts as intensity 0")[2]
    return text.replace("\n# ", "\n## ").replace("# ", "## ", 1) + "\n"


def print_intensity_summary(report: dict[str, Any]) -> None:
    """One line each for the shards' and model.predict's mean ICC over the 8 evaluated AUs."""
    mean = report.get("intensity_mean_over_folds")
    if mean is None:
        return
    per_fold = ", ".join(f"{r['intensity']['mean_icc']:.3f}" for r in report["results"])
    print(f"intensity on held-out synthetic subjects: mean ICC(3,1) {mean['mean_icc']:.3f} over "
          f"the {len(mean['mean_over'])} evaluated AUs (per fold {per_fold})")
    predicted = [p["intensity"]["mean_icc"] for p in report.get("predict", []) if "intensity" in p]
    if predicted:
        print(f"model.predict AUxx_r on held-out test videos: mean ICC(3,1) "
              f"{sum(predicted) / len(predicted):.3f} (per fold "
              f"{', '.join(f'{v:.3f}' for v in predicted)})")

def print_occurrence_summary(report: dict[str, Any]) -> None:
    """Mean F1 of the shards and of model.predict, when the occurrence head was trained."""
    mean = report.get("mean_over_folds")
    if mean is None:
        return
    print(f"mean F1 on held-out synthetic subjects: {100 * mean['mean_f1']:.1f} "
          f"(accuracy {100 * mean['mean_accuracy']:.1f})")
    if report["predict"] and all("metrics" in p for p in report["predict"]):
        f1 = [p["metrics"]["mean_f1"] for p in report["predict"]]
        n = sum(len(p["subjects"]) for p in report["predict"])
        print(f"model.predict (dlib landmarks) on {n} held-out test videos: mean F1 "
              f"{100 * sum(f1) / len(f1):.1f}")

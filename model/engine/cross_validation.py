"""Cross-validation: train and test every (variant, fold), and the paper's Tables 1 and 2."""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Sequence

from ..evaluation.paper_tables import PAPER_AUS, PAPER_PROTOCOL, TABLE1_TRA, TABLE2_F1, TABLE2_ORDER
from ..evaluation.records import markdown_table, write_csv, write_json
from .checkpoint import CheckpointError
from .config import TrainConfig, config_from_args
from .data import DataError, fold_numbers
from .distributed import DistInfo
from .evaluator import mean_over_folds
from .trainer import load_data, train

log = logging.getLogger("model.crossval")


def run_fold(cfg: TrainConfig) -> dict[str, Any]:
    """Train one (variant, fold), reusing a finished run or resuming an interrupted one."""
    run_dir = Path(cfg.out)
    results = run_dir / "results.json"
    if results.is_file():
        summary = json.loads(results.read_text())
        if summary.get("status") == "finished" and "test" in summary:
            log.info("%s: finished earlier, reusing its results", run_dir)
            return summary
    if (run_dir / "last.pt").is_file():
        log.info("%s: resuming", run_dir)
        cfg = TrainConfig(**{**cfg.__dict__, "resume": str(run_dir)})
        return train(cfg, explicit={"resume", "epochs", "device", "workers", "quiet", "threads",
                                    "eval_batch_size", "plot_every"})
    return train(cfg)


def table1(results: Sequence[dict[str, Any]], protocol: str) -> tuple[list[str], list[list[Any]], str]:
    """Ours (mean of folds) beside the paper's TRA column."""
    mean = mean_over_folds([{"fold": r["fold"], "metrics": r["test"]} for r in results])
    aus = mean["au_ids"]
    header = ["AU", "F1 ours", "F1 paper", "Accuracy ours", "Accuracy paper"]
    rows = []
    for k, au in enumerate(aus):
        j = PAPER_AUS.index(au) if au in PAPER_AUS else None
        rows.append([au, f"{100 * mean['f1'][k]:.1f}",
                     f"{TABLE1_TRA['f1'][j]:.1f}" if j is not None else "",
                     f"{100 * mean['accuracy'][k]:.1f}",
                     f"{TABLE1_TRA['accuracy'][j]:.1f}" if j is not None else ""])
    rows.append(["Avg", f"{100 * mean['mean_f1']:.1f}", f"{TABLE1_TRA['f1_avg']:.1f}",
                 f"{100 * mean['mean_accuracy']:.1f}", f"{TABLE1_TRA['accuracy_avg']:.1f}"])
    text = (f"# Table 1: TRA-Net, F1-frame and accuracy (%) on the test subjects, mean of folds "
            f"{mean['folds']}\n\nOurs: {protocol}\n\nPaper: {PAPER_PROTOCOL}\n\n"
            + markdown_table(header, rows) + "\n")
    return header, rows, text


def table2(per_variant: dict[str, list[dict[str, Any]]], protocol: str
           ) -> tuple[list[str], list[list[Any]], str]:
    """F1 per AU of each variant (ours, mean of folds) and the paper's row below it."""
    aus = next(iter(per_variant.values()))[0]["test"]["au_ids"]
    header = ["Method", "source", *[f"AU{a}" for a in aus], "Avg"]
    rows = []
    for variant in TABLE2_ORDER:
        name, paper_f1, paper_avg = TABLE2_F1[variant]
        if variant in per_variant and per_variant[variant]:
            mean = mean_over_folds([{"fold": r["fold"], "metrics": r["test"]}
                                    for r in per_variant[variant]])
            rows.append([name, "ours", *[f"{100 * v:.1f}" for v in mean["f1"]],
                         f"{100 * mean['mean_f1']:.1f}"])
        paper = [f"{paper_f1[PAPER_AUS.index(a)]:.1f}" if a in PAPER_AUS else "" for a in aus]
        rows.append([name, "paper", *paper, f"{paper_avg:.1f}"])
    text = ("# Table 2: F1-frame (%) of the TRA-Net variants, mean of folds\n\n"
            f"Ours: {protocol}\n\nPaper: {PAPER_PROTOCOL}\n\n" + markdown_table(header, rows) + "\n")
    return header, rows, text


def crossval(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    folds = args.folds or fold_numbers(args.manifest)
    variants = args.variants or (list(TABLE2_ORDER) if args.ablations else ["tranet"])

    # Every fold's data is checked before any training starts.
    base = config_from_args(args, fold=folds[0], out=str(out), variant=variants[0])
    for fold in folds:
        load_data(TrainConfig(**{**base.__dict__, "fold": fold, "workers": 0}), DistInfo(),
                  _cpu())

    per_variant: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    failures = []
    for variant in variants:
        for fold in folds:
            cfg = TrainConfig(**{**base.__dict__, "variant": variant, "fold": fold,
                                 "out": str(out / variant / f"fold{fold}")})
            try:
                summary = run_fold(cfg)
            except (DataError, CheckpointError, ValueError, FloatingPointError) as err:
                log.error("%s fold %d failed: %s", variant, fold, err)
                failures.append({"variant": variant, "fold": fold, "error": str(err)})
                continue
            if summary.get("status") != "finished":
                log.warning("%s fold %d stopped before finishing; rerun to resume", variant, fold)
                failures.append({"variant": variant, "fold": fold, "error": summary.get("status")})
                return {"status": "interrupted", "failures": failures}
            per_variant[variant].append(summary)

    threshold = base.threshold
    protocols = sorted({r["protocol"] for rs in per_variant.values() for r in rs})
    protocol = " / ".join(protocols) if protocols else f"label threshold {threshold}"
    report: dict[str, Any] = {"status": "finished", "folds": folds, "variants": variants,
                              "protocol": protocol, "paper_protocol": PAPER_PROTOCOL,
                              "failures": failures,
                              "results": {v: rs for v, rs in per_variant.items()}}
    texts = []
    if per_variant.get("tranet"):
        header, rows, text = table1(per_variant["tranet"], protocol)
        write_csv(out / "table1.csv", header, rows)
        (out / "table1.md").write_text(text)
        report["table1"] = {"header": header, "rows": rows}
        texts.append(text)
    done = {v: rs for v, rs in per_variant.items() if rs}
    if args.ablations or len(done) > 1:
        if done:
            header, rows, text = table2(done, protocol)
            write_csv(out / "table2.csv", header, rows)
            (out / "table2.md").write_text(text)
            report["table2"] = {"header": header, "rows": rows}
            texts.append(text)
    for variant, rs in done.items():
        mean = mean_over_folds([{"fold": r["fold"], "metrics": r["test"]} for r in rs])
        report.setdefault("mean_over_folds", {})[variant] = mean
    write_json(out / "crossval.json", report)
    report["texts"] = texts
    return report


def _cpu():
    import torch

    return torch.device("cpu")

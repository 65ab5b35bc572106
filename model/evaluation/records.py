"""Run records: per-epoch metrics (CSV + JSON), JSON/CSV/Markdown reports, written atomically."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .tasks import reports_occurrence


def metrics_row(row: dict[str, Any], au_ids: Sequence[int],
                task: str = "occurrence") -> dict[str, Any]:
    """One epoch of metrics.csv; F1/accuracy columns only for a trained occurrence head."""
    ev = row["eval"]
    out = {"epoch": row["epoch"], "train_loss": row["train_loss"], "lr": row.get("lr"),
           "seconds": row["seconds"],
           "select_on": row["select_on"], "eval_loss": ev.get("loss")}
    if reports_occurrence(task):
        out.update(mean_f1=ev["mean_f1"], mean_accuracy=ev["mean_accuracy"])
    out.update(best_epoch=row["best_epoch"], task=task)
    if reports_occurrence(task):
        for k, au in enumerate(au_ids):
            out[f"f1_AU{au}"] = ev["f1"][k]
        for k, au in enumerate(au_ids):
            out[f"acc_AU{au}"] = ev["accuracy"][k]
    for k, au in enumerate(au_ids):
        out[f"drawn_rate_AU{au}"] = row["drawn_positive_rate"][k]
    for k, au in enumerate(au_ids):
        out[f"natural_rate_AU{au}"] = row["natural_positive_rate"][k]
    if "eval_intensity" in row:  # --task intensity|both: the selection score and its ICC part
        out["score"] = row["score"]
        out["mean_icc"] = row["eval_intensity"]["mean_icc"]
        for au, icc in zip(row["eval_intensity"]["au_ids"], row["eval_intensity"]["icc"]):
            out[f"icc_AU{au}"] = icc
    return out


def write_metrics(run_dir: Path, history: list[dict], au_ids: Sequence[int],
                  header: dict[str, Any]) -> None:
    rows = [metrics_row(r, au_ids, header.get("task", "occurrence")) for r in history]
    tmp = run_dir / ".metrics.csv.tmp"
    with tmp.open("w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    os.replace(tmp, run_dir / "metrics.csv")
    write_json(run_dir / "metrics.json", {**header, "epochs": history})


def write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=_json_default))
    os.replace(tmp, path)


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def results_markdown(title: str, metrics: dict[str, Any], note: str) -> str:
    aus = metrics["au_ids"]
    head = "| | " + " | ".join(f"AU{a}" for a in aus) + " | Avg |"
    sep = "|---" * (len(aus) + 2) + "|"
    f1 = "| F1 | " + " | ".join(f"{100 * v:.1f}" for v in metrics["f1"]) + \
        f" | {100 * metrics['mean_f1']:.1f} |"
    ac = "| Accuracy | " + " | ".join(f"{100 * v:.1f}" for v in metrics["accuracy"]) + \
        f" | {100 * metrics['mean_accuracy']:.1f} |"
    return f"# {title}\n\n{note}\n\n{head}\n{sep}\n{f1}\n{ac}\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)

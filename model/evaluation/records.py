"""Run records: per-epoch metrics (CSV + JSON), JSON/CSV/Markdown reports, written atomically."""
from __future__ import annotations

import csv
import json
import os
import re
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
    scored = metrics.get("n_scored") or []
    if len(set(scored)) > 1:  # some labels were not coded: each AU's own frame count
        ac += "\n| Frames scored | " + " | ".join(map(str, scored)) + \
            f" | {metrics.get('n_frames', max(scored))} |"
    return f"# {title}\n\n{note}\n\n{head}\n{sep}\n{f1}\n{ac}\n"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def prose_lines(markdown: str) -> list[str]:
    """A Markdown report's lines other than its title and table rows: the CSV's notes."""
    return [line for line in markdown.splitlines()[1:] if line.strip() and not line.startswith("|")]


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]],
              notes: Sequence[str] = (), columns: Sequence[str] | None = None,
              units: str | None = None) -> None:
    """One header line of machine names and numeric columns, after a ``#`` comment block of
    ``notes`` (``pandas.read_csv(path, comment="#")`` reads it). A ``cells.Num`` cell spreads
    over ``<column>``, ``<column>_ci_low``... ; ``columns``: the CSV names of ``header``'s
    columns (default: a slug of each); ``units``: what the numbers are measured in."""
    names = list(columns) if columns is not None else [column_name(h) for h in header]
    names = [column_name(h, keep_parens=True) if names.count(n) > 1 else n   # Avg (8), Avg (12)
             for n, h in zip(names, header)]
    spread = [_suffixes([row[j] for row in rows if j < len(row)]) for j in range(len(header))]
    out_header = [f"{name}_{sfx}" if sfx else name
                  for name, sfxs in zip(names, spread) for sfx in sfxs]
    flagged = any(getattr(c, "fields", {}).get("ci_low") is not None for row in rows for c in row)
    out_rows = []
    for row in rows:
        cells = [v for j, sfxs in enumerate(spread) for v in _spread(row[j], sfxs)]
        if flagged:
            cells.append(any(getattr(c, "degenerate", False) for c in row))
        out_rows.append(cells)
    if flagged:
        out_header.append("ci_degenerate")
    renamed = [f"{n} = {h}" for n, h in zip(names, header) if columns is not None
               and n != column_name(h)]   # e.g. f1_a = F1 senet50 [95% CI]
    comments = [*notes, *([f"Columns: {'; '.join(renamed)}"] if renamed else []),
                *column_notes(out_header, units)]
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", newline="") as handle:
        for line in comments:  # a note's own newlines would end the comment early
            handle.writelines(f"# {part}\n" for part in str(line).splitlines() or [""])
        writer = csv.writer(handle)
        writer.writerow(out_header)
        writer.writerows([[_no_hash(v) for v in r] for r in out_rows])
    os.replace(tmp, path)


def column_name(heading: str, keep_parens: bool = False) -> str:
    """``F1 ours [95% CI]`` -> ``f1_ours``: lower case, brackets dropped, words joined by ``_``."""
    text = re.sub(r"\[[^]]*\]" if keep_parens else r"\[[^]]*\]|\([^)]*\)", " ",
                  str(heading)).lower()
    return "_".join(re.findall(r"[a-z0-9]+", text)) or "label"


def column_notes(header: Sequence[str], units: str | None) -> list[str]:
    """What the derived columns mean, said once in the comment block."""
    out = [f"Units: {units}"] if units else []
    if any(h.endswith("_ci_low") for h in header):
        out.append("<column>_ci_low, <column>_ci_high: the 95% interval of <column>")
    if any(h.endswith("p_at_floor") for h in header):
        out.append("p_at_floor: true when p is the smallest the resamples can give, 1/(B+1) "
                   "(the true p may be smaller)")
    if "ci_degenerate" in header:
        out.append("ci_degenerate: true when a fold's interval rests on fewer than 3 test "
                   "subjects (zero or near-zero width: not a measure of uncertainty)")
    return out


def _suffixes(cells: Sequence[Any]) -> list[str]:
    found = dict.fromkeys(s for c in cells for s in getattr(c, "fields", {}))
    return list(found) or [""]


def _spread(cell: Any, suffixes: Sequence[str]) -> list[Any]:
    fields = getattr(cell, "fields", None)
    if fields is not None:
        return [fields.get(s) for s in suffixes]
    if suffixes != [""]:  # text in a numeric column ("n/a", "0 (reference)"): a number or empty
        return [_number(cell), *[None] * (len(suffixes) - 1)]
    return [cell]


def _number(cell: Any) -> float | None:
    try:
        return float(str(cell).split()[0])
    except (ValueError, IndexError):
        return None


def _no_hash(value: Any) -> Any:
    """A data cell may not hold ``#``: ``read_csv(comment="#")`` would cut the line there."""
    return value.replace("#", "no. ") if isinstance(value, str) else value

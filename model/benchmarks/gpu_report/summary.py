"""gpu_report.md: a Markdown summary of a run's JSON lines, headline figures first."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .config import STAGES


def read_records(path: Path, run: str | None = None) -> list[dict[str, Any]]:
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            record = json.loads(line)
            if run is None or record.get("run") == run:
                records.append(record)
    if run is None and records:
        last = records[-1]["run"]
        records = [r for r in records if r.get("run") == last]
    return records


HIDDEN = {"run", "stage", "t", "kind", "traceback", "config", "sync_method", "libraries"}


def write_summary(jsonl: Path, md: Path, run: str | None = None) -> Path:
    """DIR/gpu_report.md: the environment, then one table per stage, from the JSON lines."""
    records = read_records(jsonl, run)
    lines = ["# GPU report", ""]
    env = next((r for r in records if r.get("kind") == "environment"), None)
    if env:
        lines += [f"- {k}: {_fmt(v)}" for k, v in env.items() if k not in HIDDEN]
        lines += [f"- libraries: {_fmt(env.get('libraries'))}", ""]
    lines += headline(records) + [""]
    for stage in STAGES[1:]:
        rows = [r for r in records if r.get("stage") == stage and r.get("kind") != "stage"]
        closing = [r for r in records if r.get("stage") == stage and r.get("kind") == "stage"]
        status = closing[-1] if closing else {"status": "not reached (killed or still running)"}
        lines += [f"## {stage}", "", f"status: {status.get('status')}"
                  + (f" ({status.get('reason') or status.get('error')})"
                     if status.get("reason") or status.get("error") else ""), ""]
        lines += _table(rows) + [""]
    tmp = md.with_name(f".{md.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(md)
    return md


GOAL_TRAIN_IMAGES_PER_S = 1500  # full TRA-Net at 224 with --amp on one H100/H200


def headline(records: list[dict[str, Any]]) -> list[str]:
    """The figures that answer the issue's questions, each with the row it comes from."""
    ok = [r for r in records if r.get("kind") == "measurement" and r.get("status") == "ok"]

    def best(stage: str, key: str, **match: Any) -> dict[str, Any] | None:
        rows = [r for r in ok if r.get("stage") == stage and key in r
                and all(r.get(k) == v for k, v in match.items())]
        return max(rows, key=lambda r: r[key]) if rows else None

    lines = ["## Headline", ""]
    default = best("ceiling_train", "images_per_s", precision="bf16", channels_last=True,
                   cudnn_benchmark=True, batch=64)
    top = best("ceiling_train", "images_per_s")
    for label, row in (("model ceiling, bf16, batch 64", default),
                       ("model ceiling, best setting", top)):
        if row:
            verdict = "meets" if row["images_per_s"] >= GOAL_TRAIN_IMAGES_PER_S else "misses"
            lines.append(f"- {label}: {row['images_per_s']:.0f} training images/s "
                         f"({verdict} the {GOAL_TRAIN_IMAGES_PER_S} goal; precision "
                         f"{row['precision']}, batch {row['batch']})")
    trainer = best("trainer_epoch", "images_per_s", amp=True)
    if trainer:
        lines.append(f"- trainer's train_one_epoch (--amp, in-memory batches): "
                     f"{trainer['images_per_s']:.0f} images/s, "
                     f"{trainer['syncs_per_step']:.2f} host syncs a step")
    loader = best("loader", "frames_per_s", flip=True, jitter=True)
    if loader:
        lines.append(f"- loader (flip + jitter): up to {loader['frames_per_s']:.0f} frames/s "
                     f"with {loader['workers']} workers")
    e2e = best("end_to_end", "wall_s")
    if e2e and e2e.get("train_images_per_s"):
        lines.append(f"- two epochs through the trainer: {_fmt(e2e['train_images_per_s'])} "
                     f"training images/s, {e2e['wall_s']:.1f} s in all")
    compiled = best("compile", "images_per_s")
    if compiled:
        lines.append(f"- torch.compile ({compiled['mode']}): {compiled['images_per_s']:.0f} "
                     f"training images/s after {compiled['first_step_s']:.0f} s compiling")
    return lines if len(lines) > 2 else lines + ["- nothing measured yet"]


def _table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in HIDDEN and k not in columns]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, list):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value).replace("|", "/").replace("\n", " ")

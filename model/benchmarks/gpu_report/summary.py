"""gpu_report.md: a Markdown summary of a run's JSON lines, headline figures first."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .config import STAGES
from .targets import measured, target_lines


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


def headline(records: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, then the figures that answer its questions, each from its stage."""
    def rows(stage: str, **match: Any) -> list[dict[str, Any]]:
        return measured(records, stage, **match)

    lines = target_lines(records) + ["", "## Headline", ""]
    for row in rows("ceiling_train", channels_last=True, cudnn_benchmark=True):
        lines.append(f"- training step, {row['precision']}, batch {row['batch']}: "
                     f"{row['images_per_s']:.0f} images/s, {_ms(row['step_s'] * 1000)} a step, "
                     f"host {_ms(row.get('host_ms'))}, GPU {_ms(row.get('gpu_ms'))}, "
                     f"GPU busy {_pct(row.get('gpu_util_pct'), row.get('gpu_util_reason'))}")
    for row in rows("graphs"):
        lines.append(f"- one CUDA graph a step, {row['precision']}, batch {row['batch']}: "
                     f"{row['images_per_s']:.0f} images/s")
    for row in rows("compile"):
        lines.append(f"- torch.compile ({row['mode']}), batch {row['batch']}: "
                     f"{row['images_per_s']:.0f} images/s after {row['first_step_s']:.0f} s")
    for row in rows("trainer_epoch"):
        lines.append(f"- trainer's train_one_epoch, {row['precision']}, cuda_graphs "
                     f"{row.get('cuda_graphs')}: {row['images_per_s']:.0f} images/s, "
                     f"{row['syncs_per_step']:.2f} host syncs a step")
    for row in rows("end_to_end"):
        lines.append(f"- epochs through model.train's path (batch {row['batch']}): "
                     f"{_fmt(row['epoch_images_per_s'])} images/s with evaluation and "
                     f"checkpoints, {_fmt(row['train_images_per_s'])} training steps only; "
                     f"waiting for data {_fmt([100 * w for w in row['data_wait_share']])} % of "
                     f"the training time; GPU busy "
                     f"{_pct(row.get('gpu_util_pct'), row.get('gpu_util_reason'))}")
    loader = rows("loader", flip=True, jitter=True)
    if loader:
        lines.append("- loader (flip + jitter): " + ", ".join(
            f"{r['frames_per_s']:.0f} frames/s with {r['workers']}" for r in loader)
            + " workers")
    return lines


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(value: float | None, reason: str | None) -> str:
    return f"{value:.0f} %" if value is not None else f"null ({reason})"


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

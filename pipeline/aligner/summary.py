"""``OUT/align_summary.json`` and the table and warnings a run prints from it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..cli import atomic_write_text
from .config import DROP_REASONS, SUMMARY_NAME, AlignConfig


def summary_warnings(rows: Iterable[dict[str, Any]], error_log: dict[str, Any]) -> list[str]:
    """One line per thing a user should look at before trusting the shards."""
    lines = []
    for row in rows:
        if row.get("status") == "failed":
            continue
        name = f"{row['subject']} {row['camera']}"
        video, labels = row.get("n_video_frames"), row.get("n_label_frames")
        if video is not None and labels is not None and video != labels:
            lines.append(f"{name}: the video decodes {video} frames, the labels have {labels}; "
                         f"the first {min(video, labels)} were aligned")
        if row.get("error_log_outside"):
            lines.append(f"{name}: error-log ranges {row['error_log_outside']} reach past its "
                         f"{row['frames_read']} frames (an error log for another copy?)")
    for note in error_log.get("root_sheets", []):
        if "unreadable" in note:
            lines.append(f"{note['sheet']} (in the release root) cannot be read: "
                         f"{note['unreadable']}")
        else:
            lines.append(f"{note['sheet']} (in the release root) differs from the ranges in use "
                         f"({error_log['in_use']}) for {', '.join(note['subjects_differing'])}; "
                         "pass --error-log to use it")
    return lines



def write_summary(cfg: AlignConfig, rows: list[dict[str, Any]], error_log: dict[str, Any]
                   ) -> dict[str, Any]:
    """Merge this run's rows into ``OUT/align_summary.json`` (atomically) and return it."""
    path = Path(cfg.out) / SUMMARY_NAME
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text()).get("subjects", {})
        except (OSError, ValueError):
            previous = {}
    merged = dict(previous)
    merged.update({f"{r['subject']}_{r['camera']}": r for r in rows})
    ok = [r for r in merged.values() if r["status"] != "failed"]
    dropped_total: dict[str, int] = {}
    for r in ok:
        for reason, k in r.get("dropped", {}).items():
            dropped_total[reason] = dropped_total.get(reason, 0) + k
    summary = {
        "config": dataclasses.asdict(cfg),
        "pipeline_version": cfg.pipeline_version,
        "this_run": [f"{r['subject']}_{r['camera']}" for r in rows],
        "failed": sorted(k for k, r in merged.items() if r["status"] == "failed"),
        "totals": {"frames_read": sum(r.get("frames_read", 0) for r in ok),
                   "kept": sum(r.get("kept", 0) for r in ok),
                   "dropped": dropped_total,
                   "filled": sum(r.get("filled", 0) for r in ok),
                   # image-folder datasets: frames whose landmarks came from the detector
                   **({"from_detector": sum(r.get("from_detector", 0) for r in ok)}
                      if any("from_detector" in r for r in ok) else {})},
        "error_log": error_log,
        "warnings": summary_warnings([merged[k] for k in sorted(merged)], error_log),
        "subjects": dict(sorted(merged.items())),
    }
    atomic_write_text(path, json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(rows: Sequence[dict[str, Any]], au_ids: Sequence[int]) -> str:
    """A plain-text table: per subject frames read, kept, dropped by reason, positive rates."""
    seen = [r for row in rows for r in row.get("dropped", {})]
    # An adapter may name reasons of its own; they follow the pipeline's, in first-seen order.
    reasons = [r for r in dict.fromkeys([*DROP_REASONS, *seen])
               if any(row.get("dropped", {}).get(r) for row in rows)]
    short = {"error_log": "errlog", "landmarks_missing": "lm_miss", "landmarks_nan": "lm_nan",
             "landmarks_degenerate": "lm_degen", "landmarks_outside_frame": "lm_out",
             "no_face": "noface", "drop_list": "droplist", "no_image": "noimage",
             "image_unreadable": "unread"}
    detector = any("from_detector" in row for row in rows)  # image-folder datasets only
    head = (["subject", "camera", "status", "read", "kept",
             *[short.get(r, r) for r in reasons], "filled", *(["detector"] if detector else [])]
            + [f"AU{a}%" for a in au_ids])
    table, failures = [], []
    for row in rows:
        if row["status"] == "failed":
            failures.append(f"{row['subject']} {row['camera']} FAILED: {row.get('error', '')}")
            continue
        table.append([row["subject"], row["camera"], row["status"], str(row["frames_read"]),
                      str(row["kept"]), *[str(row["dropped"].get(r, 0)) for r in reasons],
                      str(row.get("filled", 0)),
                      *([str(row.get("from_detector", 0))] if detector else [])]
                     + [f"{100 * p:.1f}" for p in row.get("pos_rate", [])])
    widths = [max([len(h)] + [len(line[i]) for line in table if i < len(line)])
              for i, h in enumerate(head)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in [head, *table]]
    return "\n".join(lines + failures)

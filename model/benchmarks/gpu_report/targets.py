"""Issue 25's targets judged from a run's JSON lines: met, not met, or not measured (with why).

Only a full-mode run on a CUDA device can meet or miss them (the targets are for the full TRA-Net
at 224 px, batch 64, on one H100/H200); a CPU or test-mode run's figures are reported beside
them as "not measured"."""
from __future__ import annotations

from typing import Any

#: Whole epochs, evaluation and checkpoints included, full TRA-Net at 224, batch 64, one H200.
EPOCH_IMAGES_PER_S = 1500
#: An epoch's evaluation and checkpoints cost at most this share over its training steps.
EVAL_OVERHEAD = 0.10


def measured(records: list[dict[str, Any]], stage: str, **match: Any) -> list[dict[str, Any]]:
    """The stage's successful measurements whose fields equal ``match``."""
    return [r for r in records if r.get("stage") == stage and r.get("kind") == "measurement"
            and r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def why_not_judged(records: list[dict[str, Any]]) -> str | None:
    """None when the run can judge the targets, else the reason it cannot."""
    env = next((r for r in records if r.get("kind") == "environment"), None)
    if env is None:
        return "no environment record"
    if not str(env.get("device", "")).startswith("cuda"):
        return f"device {env.get('device')}, not a GPU"
    if env.get("mode") != "full":
        return "test mode (small preset, tiny inputs)"
    return None


def _verdict(value: float | None, goal: float, higher: bool, why: str | None) -> str:
    if value is None:
        return "not measured"
    if why is not None:
        return f"not measured ({why}; figure shown for the record)"
    return "met" if (value >= goal if higher else value <= goal) else "not met"


def target_lines(records: list[dict[str, Any]]) -> list[str]:
    """The Markdown lines of the targets section."""
    why = why_not_judged(records)
    lines = ["## Targets (issue 25)", ""]
    for row in measured(records, "end_to_end") or [{}]:
        lines += _epoch_lines(row, why)
    lines += _bf16_lines("trainer's train_one_epoch", measured(records, "trainer_epoch"), "amp",
                         (True, False), why)
    lines += _bf16_lines("training step alone, batch 64, channels_last",
                         measured(records, "ceiling_train", channels_last=True,
                                  cudnn_benchmark=True, batch=_first_batch(records)),
                         "precision", ("bf16", "fp32"), why)
    return lines


def _epoch_lines(row: dict[str, Any], why: str | None) -> list[str]:
    """The epoch targets from one end_to_end run's last (steady) whole epoch."""
    where = f" (cuda_graphs {row['cuda_graphs']})" if "cuda_graphs" in row else ""
    rates, walls, trains = (row.get(k) or [None] for k in
                            ("epoch_images_per_s", "epoch_wall_s", "train_s"))
    rate = rates[-1]
    over = walls[-1] / trains[-1] - 1 if walls[-1] and trains[-1] else None
    text = f"{rate:.0f} images/s, {rate / EPOCH_IMAGES_PER_S:.2f}x the target" if rate else "-"
    over_text = f"+{100 * over:.0f} % over the training steps" if over is not None else "-"
    return [f"- a whole epoch with its evaluation and checkpoints, batch 64, >= "
            f"{EPOCH_IMAGES_PER_S:,} images/s{where}: {text} - "
            f"**{_verdict(rate, EPOCH_IMAGES_PER_S, True, why)}**",
            f"- evaluation and checkpoints cost <= {100 * EVAL_OVERHEAD:.0f} % of an epoch's "
            f"training steps{where}: {over_text} - **{_verdict(over, EVAL_OVERHEAD, False, why)}**"]


def _first_batch(records: list[dict[str, Any]]) -> int:
    env = next((r for r in records if r.get("kind") == "environment"), {})
    return 2 if env.get("mode") == "small" else 64


def _bf16_lines(label: str, rows: list[dict[str, Any]], key: str, values: tuple[Any, Any],
                why: str | None) -> list[str]:
    """One line per trainer ``cuda_graphs`` setting (bf16 and fp32 compared within it)."""
    rates: dict[str, dict[Any, float]] = {}
    for row in rows:
        if row.get(key) in values:
            group = rates.setdefault(str(row.get("cuda_graphs", "")), {})
            group.setdefault(row[key], row["images_per_s"])
    lines = []
    for graphs, rate in rates.items() or [("", {})]:
        bf16, fp32 = rate.get(values[0]), rate.get(values[1])
        ratio = bf16 / fp32 if bf16 and fp32 else None
        text = (f"bf16 {bf16:.0f} vs fp32 {fp32:.0f} images/s, ratio {ratio:.2f}" if ratio
                else "-")
        where = f"{label}, cuda_graphs {graphs}" if graphs else label
        lines.append(f"- bf16 not slower than fp32 ({where}): {text} - "
                     f"**{_verdict(ratio, 1.0, True, why)}**")
    return lines

"""``MODEL_CARD.md``: a model card rendered for people (Hugging Face model-card spirit)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .wording import METRIC_SOURCES, TWIN_WARNING

if TYPE_CHECKING:
    from .card import ModelCard


def _rows(record: dict[str, Any]) -> list[str]:
    """``- **key**: value`` lines of a flat record, nested records inline."""
    lines = []
    for key, value in record.items():
        if isinstance(value, (list, tuple)):
            value = ", ".join(map(str, value)) if value else "none"
        elif isinstance(value, dict):
            value = "; ".join(f"{k} {v}" for k, v in value.items()) if value else "none"
        lines.append(f"- **{key.replace('_', ' ')}**: {value}")
    return lines or ["- unknown"]


def _metric_rows(metrics: dict[str, Any]) -> list[str]:

    source = str(metrics.get("source", "none"))
    lines = [f"- **source**: {METRIC_SOURCES.get(source, source)}"]
    if metrics.get("detail"):
        lines.append(f"- **detail**: {metrics['detail']}")
    values = metrics.get("values") or {}
    for key, value in values.items():
        if key == "per_au" and isinstance(value, dict):
            continue
        lines.append(f"- **{key.replace('_', ' ')}**: {_value(key, value)}")
    per_au = values.get("per_au")
    if isinstance(per_au, dict) and per_au:
        lines += ["", "| AU | F1 (%) | 95% CI |", "|---|---|---|"]
        for au, row in per_au.items():
            row = row if isinstance(row, dict) else {"f1": row}
            ci = row.get("ci")
            ci_text = f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}" if _pair(ci) else "-"
            lines.append(f"| {au} | {_pct(row.get('f1'))} | {ci_text} |")
    return lines


def _pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(v, (int, float)) for v in value)


def _pct(value: Any) -> str:
    return f"{100 * value:.1f}" if isinstance(value, (int, float)) else "-"


def _value(key: str, value: Any) -> str:
    if key.endswith("f1") and isinstance(value, (int, float)):
        return f"{_pct(value)} %"
    if key.endswith("_ci") and _pair(value):
        scale = 100 if "f1" in key else 1
        return f"{scale * value[0]:.1f}-{scale * value[1]:.1f}" if scale == 100 else \
            f"{value[0]:.3f}-{value[1]:.3f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def card_markdown(card: "ModelCard") -> str:
    """The card as Markdown; the twin warning first when the model saw the synthetic twin."""

    out = ["# Model card", "", card.summary_line(), ""]
    if card.trained_on_twin:
        out += [f"> **Warning.** {TWIN_WARNING}", ""]
    out += ["## Intended use", "", card.intended_use or "Not stated.", ""]
    out += ["## Limits", ""] + ([f"- {x}" for x in card.limits] or ["- Not stated."]) + [""]
    out += ["## Data", ""] + _rows(card.data) + [""]
    out += ["## Task", "", f"- **task**: {card.task}",
            f"- **heads**: {', '.join(card.heads) or 'unknown'}", ""]
    out += ["## Protocol", ""] + _rows(card.protocol) + [""]
    out += ["## Metrics", ""] + _metric_rows(card.metrics) + [""]
    out += ["## Recipe", ""] + _rows(card.recipe) + [""]
    out += ["## Backbone", ""] + _rows(card.backbone) + [""]
    out += ["## Created", ""] + _rows(card.created) + [""]
    return "\n".join(out)

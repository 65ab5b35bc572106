"""A card's F1 values from test records: mean and per AU, with the subject bootstrap's intervals."""
from __future__ import annotations

from typing import Any

from ..evaluation.tables import summary as fold_summary


def f1_values(tests: list[dict[str, Any]], resamples: int, seed: int) -> dict[str, Any]:
    s = fold_summary(tests, resamples, seed)
    ci = s.get("ci") or {}
    per_au = {f"AU{au}": {"f1": s["f1"][k], **({"ci": ci["f1"][k]} if ci else {})}
              for k, au in enumerate(s["au_ids"])}
    out: dict[str, Any] = {"mean_f1": s["mean_f1"], "per_au": per_au}
    if ci:
        out["mean_f1_ci"] = ci["mean_f1"]
        out["ci_method"] = ci.get("method", "")
    return out

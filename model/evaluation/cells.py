"""Table cells that read one way for people and another for programs.

A Markdown table shows ``59.0 [55.1, 62.3]``; a CSV needs ``f1=59.0, f1_ci_low=55.1,
f1_ci_high=62.3`` as numbers. A :class:`Num` is the text (it *is* a ``str``, so Markdown, JSON
and comparisons see exactly what they saw before) carrying the numbers the CSV writer
(``records.write_csv``) spreads over numeric columns, and whether its interval is degenerate.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

#: Fewer test subjects than this in a fold and a subject bootstrap has almost nothing to
#: resample: one subject gives a zero-width interval, two give at most three distinct values.
MIN_CI_SUBJECTS = 3
#: What the numbers of the occurrence CSVs are measured in (their comment block says it).
PERCENT_UNITS = ("F1, accuracy, ROC-AUC and AP in percent (0-100); differences in percentage "
                 "points; p in 0-1")


class Num(str):
    """Text for people with ``fields`` for the CSV: suffix -> value (``""`` is the column
    itself, ``"ci_low"`` becomes ``<column>_ci_low``). ``degenerate``: its interval rests on
    fewer than MIN_CI_SUBJECTS subjects in some fold."""

    fields: dict[str, Any]
    degenerate: bool

    def __new__(cls, text: str, fields: Mapping[str, Any], degenerate: bool = False) -> "Num":
        cell = super().__new__(cls, text)
        cell.fields = dict(fields)
        cell.degenerate = bool(degenerate)
        return cell

    def __reduce__(self) -> tuple:  # pickle/deepcopy keep the numbers (str's would drop them)
        return (Num, (str(self), self.fields, self.degenerate))


def percent(value: float | None) -> float | None:
    """A fraction as percent for the CSV (None stays None: an empty cell)."""
    if value is None or value != value or value in (float("inf"), float("-inf")):
        return None
    return round(100 * float(value), 4)


def p_at_floor(p: float | None, resamples: int | None) -> bool:
    """Whether a Monte-Carlo p is the smallest value B resamples can give, 1/(B+1)."""
    return bool(p is not None and resamples and p <= 1 / (resamples + 1) + 1e-12)


def p_text(p: float, resamples: int | None, raw: float | None = None) -> str:
    """``p=0.034``, or ``p < 0.001`` when the (raw) p sits at the floor 1/(B+1) of B resamples:
    the test cannot tell smaller p apart, so "=" would overstate what is known."""
    if p_at_floor(p if raw is None else raw, resamples):
        return f"p < {max(p, 1 / (resamples + 1)):.2g}"
    return f"p={p:.3f}"


def p_cell(p: float, resamples: int | None, raw: float | None = None) -> Num:
    """A p cell: ``p_text`` for people; the number and ``at_floor`` for the CSV."""
    text = p_text(p, resamples, raw).removeprefix("p=").replace("p < ", "< ")
    return Num(text, {"": round(float(p), 6),
                      "at_floor": p_at_floor(p if raw is None else raw, resamples)})


def p_floor_line(resamples: int) -> str:
    """The note every table with p-values carries on how the floor is printed."""
    return (f"p: the smallest p {resamples} resamples can give is 1/{resamples + 1} = "
            f"{1 / (resamples + 1):.2g}; a p there is printed '< {1 / (resamples + 1):.2g}' "
            "(the CSV keeps the number, with p_at_floor true)")


def too_few_subjects(subjects_per_fold: Mapping[Any, int]) -> dict[Any, int]:
    """The folds whose test subjects are too few for a meaningful subject bootstrap."""
    return {fold: n for fold, n in subjects_per_fold.items() if n < MIN_CI_SUBJECTS}


def degenerate_line(subjects_per_fold: Mapping[Any, int]) -> str | None:
    """The note of a table whose intervals rest on too few subjects (None when none do)."""
    few = too_few_subjects(subjects_per_fold)
    if not few:
        return None
    named = ", ".join(f"fold {fold}: {n}" for fold, n in few.items())
    return (f"CI DEGENERATE: fewer than {MIN_CI_SUBJECTS} test subjects ({named}); resampling "
            "so few subjects gives intervals of (near) zero width that say nothing about "
            "uncertainty (ci_degenerate in the CSV); test on more subjects for real intervals")


def subjects_of(metrics: Sequence[dict[str, Any]]) -> list[int] | None:
    """Test subjects per fold of metric dicts with per-subject data (None without it)."""
    counts = []
    for m in metrics:
        per = m.get("per_subject") or {}
        if not per.get("subjects"):
            return None
        counts.append(len(per["subjects"]))
    return counts

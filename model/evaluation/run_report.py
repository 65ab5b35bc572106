"""One training run's test report (``results.md``, the test keys of ``results.json``, and what
``model.train`` prints): only the numbers of the heads the run trained, under a task line."""
from __future__ import annotations

from typing import Any, Sequence

from .intensity import intensity_markdown
from .records import results_markdown
from .tasks import reports_intensity, reports_occurrence, task_line, task_record


def add_test_metrics(summary: dict[str, Any], task: str, occurrence: dict[str, Any],
                     intensity: dict[str, Any] | None) -> dict[str, Any]:
    """``summary`` with the task, its trained heads, and the test metrics of those heads only
    (an untrained occurrence head's F1 is the number of random weights: left out)."""
    summary.update(task_record(task))
    summary["au_ids"] = list(occurrence["au_ids"])
    if reports_occurrence(task):
        summary["test"] = occurrence
    if intensity is not None and reports_intensity(task):
        summary["test_intensity"] = intensity
    return summary


def run_markdown(title: str, summary: dict[str, Any], note: str,
                 au_ids: Sequence[int] | None = None) -> str:
    """The run's results.md: protocol and task lines, then the tables of its trained heads."""
    task = summary.get("task", "occurrence")
    header = f"{note}\n\n{task_line(task)}"
    if "test" in summary:
        text = results_markdown(title, summary["test"], header)
    else:
        text = f"# {title}\n\n{header}\n"
    if summary.get("test_intensity"):
        text += intensity_markdown(summary["test_intensity"], au_ids)
    return text


def result_log_line(summary: dict[str, Any]) -> str:
    """The one-line test result the trainer logs (the trained heads' means)."""
    parts = []
    if "test" in summary:
        parts.append(f"mean F1 {100 * summary['test']['mean_f1']:.1f}%, mean accuracy "
                     f"{100 * summary['test']['mean_accuracy']:.1f}%")  # the tables' unit
    if "test_intensity" in summary:
        parts.append(f"mean ICC {summary['test_intensity']['mean_icc']:.4f}")
    return "; ".join(parts) + f" (task {summary.get('task', 'occurrence')})"

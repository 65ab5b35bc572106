"""Which heads a run trained, and so which numbers its reports may show.

``--task occurrence`` trains the occurrence head only (the model has no intensity head);
``--task intensity`` builds an occurrence head too but never trains it, so its F1, accuracy and
AUxx_c/AUxx_p would be the numbers of random weights; ``--task both`` trains both. Every report
asks this module rather than testing the task string itself.
"""
from __future__ import annotations

from typing import Any, Iterable

TASKS: tuple[str, ...] = ("occurrence", "intensity", "both")
#: Runs recorded before ``--task`` existed trained the occurrence head only.
DEFAULT_TASK = "occurrence"


def trained_heads(task: str) -> tuple[str, ...]:
    """The heads ``task`` trains, in report order."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}")
    return {"occurrence": ("occurrence",), "intensity": ("intensity",),
            "both": ("occurrence", "intensity")}[task]


def reports_occurrence(task: str) -> bool:
    """F1, accuracy, Table 1/2 and AUxx_c/AUxx_p only come from a trained occurrence head."""
    return "occurrence" in trained_heads(task)


def reports_intensity(task: str) -> bool:
    """ICC, r and MAE only come from a trained intensity head."""
    return "intensity" in trained_heads(task)


def task_of(record: dict[str, Any]) -> str:
    """The task a run summary, evaluation result or checkpoint/config record names."""
    task = record.get("task") or (record.get("train_config") or {}).get("task")
    return str(task) if task else DEFAULT_TASK


def common_task(records: Iterable[dict[str, Any]], what: str = "runs") -> str:
    """The one task of several runs; ValueError when they differ (their tables cannot mix)."""
    tasks = sorted({task_of(r) for r in records})
    if len(tasks) > 1:
        raise ValueError(f"{what} were trained for different tasks {tasks}; report them "
                         "separately")
    return tasks[0] if tasks else DEFAULT_TASK


def task_record(task: str) -> dict[str, Any]:
    """What a JSON report or sidecar records: ``{"task", "trained_heads"}``."""
    return {"task": task, "trained_heads": list(trained_heads(task))}


def task_line(task: str) -> str:
    """The header line every table carries: the task and the heads its numbers came from."""
    heads = " and ".join(trained_heads(task))
    missing = {"occurrence": "no intensity head, so no ICC",
               "intensity": "the occurrence head was never trained, so no F1, accuracy or "
                            "AUxx_c/AUxx_p",
               "both": "occurrence numbers from the occurrence head, intensity numbers from the "
                       "intensity head"}[task]
    return f"Task: {task}; trained heads: {heads} ({missing})"

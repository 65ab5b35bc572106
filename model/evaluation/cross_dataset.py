"""Cross-dataset evaluation: a model trained on one dataset scored on another's shards.

Only the AUs both sides have can be scored: the model's AUs that the test dataset codes
(``DatasetInfo.label_source``). Each is scored on the test frames coded for it, by the TEST
dataset's label rule at the test manifest's threshold (a DISFA model on DISFA+ shards: DISFA+'s
intensity >= 2 unless the manifest says otherwise), and the table states both sides' rules,
the AUs skipped and why, and the frames each AU was scored on.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from pipeline.datasets.registry import dataset_info

from .cells import Num
from .label_rules import dataset_titles, rule_phrase, trained_dataset, trained_rules


@dataclass
class CrossDatasetPlan:
    """Which of a model's AUs a test dataset can score, and the two sides' label rules."""

    train_datasets: list[str]
    test_dataset: str
    model_aus: list[int]
    shared: list[int]
    skipped: dict[int, str] = field(default_factory=dict)  # AU -> why it is not scored
    train_rules: list[str] = field(default_factory=list)
    test_rule: str = ""

    @property
    def columns(self) -> list[int]:
        """The model's output columns of the shared AUs, in the order scored."""
        return [self.model_aus.index(a) for a in self.shared]

    def as_dict(self) -> dict[str, Any]:
        return {"train_datasets": self.train_datasets, "test_dataset": self.test_dataset,
                "model_aus": self.model_aus, "shared_aus": self.shared,
                "skipped": {str(a): why for a, why in self.skipped.items()},
                "train_label_rules": self.train_rules, "test_label_rule": self.test_rule}


def is_cross_dataset(data: Mapping[str, Any], test_dataset: str) -> bool:
    """Whether a checkpoint (its ``data`` record) was trained on other data than ``test_dataset``."""
    return trained_dataset(data) != [test_dataset]


def plan_cross_dataset(data: Mapping[str, Any], test_dataset: str, threshold: int,
                       shard_rule: str | None = None) -> CrossDatasetPlan:
    """The shared AUs (model AUs the test dataset codes, in the model's order) and the rules.

    ``shard_rule``: the test shards' ``label_rule`` attr (the rule they were written with)."""
    info = dataset_info(test_dataset)
    model_aus = [int(a) for a in data.get("au_ids") or ()]
    shared = [a for a in model_aus if info.label_source(a) != "none"]
    skipped = {a: f"not coded in {info.title}" for a in model_aus if a not in shared}
    test_rule = (f"{info.title}: {shard_rule}; here threshold {int(threshold)}" if shard_rule
                 else rule_phrase(test_dataset, threshold, shared))
    return CrossDatasetPlan(trained_dataset(data), test_dataset, model_aus, shared, skipped,
                            trained_rules(data), test_rule)


def cross_dataset_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Header lines of a cross-dataset table: both sides' rules, the AUs scored with their
    (coded) frames per fold, the AUs skipped and why (results with ``cross_dataset``)."""
    records = [r["cross_dataset"] for r in results if r.get("cross_dataset")]
    if not records:
        return []
    first = records[0]
    trained = dataset_titles(first["train_datasets"])
    tested = dataset_info(first["test_dataset"]).title
    lines = [f"Cross-dataset: trained on {trained}, tested on {tested}; scored on the AUs both "
             "code, each on the test frames coded for it",
             f"Train labels: {'; '.join(first['train_label_rules'])}",
             f"Test labels: {first['test_label_rule']}"]
    for r in results:
        m = r["metrics"]
        scored = ", ".join(f"AU{a} {n}" for a, n in zip(m["au_ids"], m.get("n_scored") or []))
        lines.append(f"Frames scored per AU (fold {r.get('fold')}): {scored}")
    skipped = first.get("skipped") or {}
    lines.append("Skipped AUs: " + (", ".join(f"AU{a} ({why})" for a, why in skipped.items())
                                    or "none (the test dataset codes every AU of the model)"))
    return list(dict.fromkeys(lines))


def frames_row(label: Any, metrics: Mapping[str, Any]) -> list[Any]:
    """A table row of the (coded) frames each AU was scored on; Avg: the frames evaluated."""
    counts = [int(n) for n in metrics.get("n_scored") or []]
    return [label, Num("frames scored", {"": "frames_scored"}),
            *[Num(str(n), {"": n}) for n in counts],
            Num(str(metrics.get("n_frames", 0)), {"": int(metrics.get("n_frames", 0))})]

"""What a model's labels were, as checkpoints, cards and cross-dataset tables state it: the
dataset(s) it was trained on, each dataset's label rule at the run's threshold, and the face
region of each AU (``model.nets.tranet.REGION_OF_AU``).

Checkpoints made before #26 record none of it; they were trained on DISFA
(:func:`trained_dataset` says so).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from pipeline.datasets.registry import LEGACY_DATASET, dataset_info

from ..nets.tranet import REGION_OF_AU


def rule_phrase(dataset: str, threshold: int, au_ids: Sequence[int]) -> str:
    """How ``dataset``'s labels of ``au_ids`` become 1/0 at ``threshold``, in words."""
    info = dataset_info(dataset)
    sources = {info.label_source(int(a)) for a in au_ids} - {"none"}
    parts = []
    if "intensity" in sources:
        parts.append(f"positive at FACS intensity >= {int(threshold)}")
    if "occurrence" in sources:
        parts.append("the release's occurrence codes (1 present, 0 absent; not coded: masked)")
    return f"{info.title}: {' and '.join(parts) or 'no label for these AUs'}"


def regions_of(au_ids: Sequence[int]) -> dict[str, str]:
    """AU -> the face region its branch sees (JSON keys are strings)."""
    return {str(int(a)): REGION_OF_AU[int(a)] for a in au_ids}


def dataset_record(datasets: Sequence[str], threshold: int, au_ids: Sequence[int]
                   ) -> dict[str, Any]:
    """The checkpoint's ``data`` keys about labels: ``dataset`` (one name, or "mixed"),
    ``datasets``, ``label_rules`` (one phrase per dataset) and ``regions``."""
    names = list(dict.fromkeys(datasets)) or [LEGACY_DATASET]
    return {"dataset": names[0] if len(names) == 1 else "mixed", "datasets": names,
            "label_rules": {n: rule_phrase(n, threshold, au_ids) for n in names},
            "regions": regions_of(au_ids)}


def labels_phrase(datasets: Sequence[str], threshold: int, au_ids: Sequence[int]) -> str | None:
    """The protocol line's label rule where the data are not (only) DISFA's; None for DISFA,
    whose line stays as it always was."""
    names = list(dict.fromkeys(datasets))
    if names in ([], [LEGACY_DATASET]):
        return None
    return "; ".join(rule_phrase(n, threshold, au_ids) for n in names)


def trained_dataset(data: Mapping[str, Any]) -> list[str]:
    """The datasets a checkpoint's ``data`` record says it trained on (DISFA before #26)."""
    names = data.get("datasets") or [data.get("dataset") or LEGACY_DATASET]
    return [str(n) for n in names]


def trained_rules(data: Mapping[str, Any]) -> list[str]:
    """The label rule phrase(s) of the training side (rebuilt for older checkpoints)."""
    rules = data.get("label_rules")
    if isinstance(rules, Mapping) and rules:
        return [str(v) for v in rules.values()]
    threshold = int(data.get("threshold", dataset_info(LEGACY_DATASET).default_threshold))
    return [rule_phrase(n, threshold, data.get("au_ids") or ()) for n in trained_dataset(data)]


def dataset_titles(names: Sequence[str]) -> str:
    """"DISFA", "BP4D" or "DISFA + BP4D"."""
    return " + ".join(dataset_info(n).title for n in names)

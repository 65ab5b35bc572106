"""What each supported dataset is, in one record per dataset: its AUs, how its labels become
occurrence, its landmark scheme and its subject names.

Shards record their dataset by name (attr ``dataset``; shards made before it are DISFA), and
everything after alignment (shards, folds, training, evaluation) asks this registry rather
than a dataset's own module.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .bp4d import facts as bp4d
from .disfa import facts as disfa
from .disfa_plus import facts as disfa_plus


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset's label and landmark scheme.

    ``au_ids``: every AU the release codes, the label columns in this order; an AU in
    ``occurrence_aus`` is read from the release's 0/1 codes, one in ``intensity_aus`` only is
    positive at intensity >= the threshold; ``label_rule`` says so in words."""

    name: str
    title: str
    au_ids: tuple[int, ...]
    eval_aus: tuple[int, ...]
    intensity_aus: tuple[int, ...]
    occurrence_aus: tuple[int, ...]
    n_landmarks: int
    subject_pattern: re.Pattern
    default_threshold: int
    label_rule: str

    def is_subject(self, name: object) -> bool:
        return isinstance(name, str) and self.subject_pattern.fullmatch(name) is not None

    def label_source(self, au: int) -> str:
        """Where AU ``au``'s occurrence comes from: "occurrence", "intensity" or "none"."""
        if au in self.occurrence_aus:
            return "occurrence"
        return "intensity" if au in self.intensity_aus else "none"


DATASETS: dict[str, DatasetInfo] = {
    "disfa": DatasetInfo(
        "disfa", "DISFA", disfa.ALL_AUS, disfa.EVAL_AUS, disfa.ALL_AUS, (), disfa.N_LANDMARKS,
        disfa.SUBJECT_PATTERN, disfa.DEFAULT_THRESHOLD,
        "positive at FACS intensity >= the threshold (default 3, 'C or higher')"),
    "disfa+": DatasetInfo(
        "disfa+", "DISFA+", disfa_plus.AUS, disfa_plus.EVAL_AUS, disfa_plus.AUS, (),
        disfa_plus.N_LANDMARKS, disfa_plus.SUBJECT_PATTERN, disfa_plus.DEFAULT_THRESHOLD,
        "positive at FACS intensity >= the threshold (default 2, the peers' DISFA+ rule)"),
    "bp4d": DatasetInfo(
        "bp4d", "BP4D", bp4d.OCCURRENCE_AUS, bp4d.EVAL_AUS, bp4d.INTENSITY_AUS,
        bp4d.OCCURRENCE_AUS, bp4d.N_LANDMARKS, bp4d.SUBJECT_PATTERN, 3,
        "occurrence as FACS-coded by the release (1 present, 0 absent; 9 = not coded, masked)"),
}
#: Shards written before the ``dataset`` attr are DISFA's.
LEGACY_DATASET = "disfa"
#: Every AU some supported dataset codes (sorted).
KNOWN_AUS: tuple[int, ...] = tuple(sorted({a for d in DATASETS.values() for a in d.au_ids}))


def dataset_info(name: str) -> DatasetInfo:
    """The record of dataset ``name`` (ValueError naming the choices otherwise)."""
    try:
        return DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}") from None


def is_known_subject(name: object) -> bool:
    """Whether ``name`` is a subject name of some supported dataset (names build file names)."""
    return any(d.is_subject(name) for d in DATASETS.values())

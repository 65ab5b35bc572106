"""TrainConfig fields that only some builds have (``cuda_graphs``, ``eval_every``): set when the
field exists, recorded as "not available in this build" otherwise, so the report runs on the
trainer before and after they were added."""
from __future__ import annotations

import dataclasses
from typing import Any

from ...engine.config import TrainConfig

NOT_AVAILABLE = "not available in this build"


def has_field(name: str) -> bool:
    return name in {f.name for f in dataclasses.fields(TrainConfig)}


def train_config(optional: dict[str, Any], **fields: Any) -> tuple[TrainConfig, dict[str, Any]]:
    """A TrainConfig of ``fields`` plus those of ``optional`` this build has; and what each
    optional field was set to (or ``NOT_AVAILABLE``)."""
    present = {k: v for k, v in optional.items() if has_field(k)}
    notes = {k: present.get(k, NOT_AVAILABLE) for k in optional}
    return TrainConfig(**fields, **present), notes


def graph_settings(device_type: str) -> list[str | None]:
    """The trainer's ``cuda_graphs`` values to compare: "off" and "on" on CUDA when the field
    exists, else only the build's own behaviour (None)."""
    if device_type == "cuda" and has_field("cuda_graphs"):
        return ["off", "on"]
    return [None]

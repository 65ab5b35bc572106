"""The model card schema: one record, in the checkpoint and as Markdown, of how a model was made.

In the spirit of Hugging Face model cards: data, task, protocol, metrics and where they come
from, recipe, backbone and its licence, intended use and limits. A card holds plain containers
only, so a checkpoint carrying it still loads with ``torch.load(weights_only=True)``. Reading is
tolerant: a card from an older or newer toolkit fills what it lacks with "unknown" values.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .markdown import card_markdown
from .wording import METRIC_SOURCES, TWIN_WARNING  # noqa: F401  (re-exported)

#: The checkpoint dict's key holding ``ModelCard.to_dict()``.
CARD_KEY = "model_card"

@dataclass
class ModelCard:
    """What a checkpoint is. Every field is a plain value, list or dict (see the module doc)."""

    data: dict[str, Any] = field(default_factory=dict)
    task: str = "occurrence"
    heads: list[str] = field(default_factory=list)
    protocol: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=lambda: {
        "source": "none", "detail": "not evaluated yet", "values": {}})
    recipe: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] = field(default_factory=dict)
    intended_use: str = ""
    limits: list[str] = field(default_factory=list)
    created: dict[str, Any] = field(default_factory=dict)

    @property
    def trained_on_twin(self) -> bool:
        """True when any of the training data came from the synthetic twin."""
        source = str(self.data.get("source", "unknown"))
        return source == "twin" or "twin" in (self.data.get("sources") or [])

    def summary_line(self) -> str:
        """One line: model, task, data, headline metric and where it comes from."""
        variant = self.recipe.get("variant") or "?"
        return (f"TRA-Net ({variant}), {self.task}, {_data_phrase(self.data)}; "
                f"{_metric_phrase(self.metrics)}; backbone {self.backbone.get('name', '?')}, "
                f"{self.backbone.get('weights', 'weights unknown')}")

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (``torch.load(weights_only=True)`` reads them back)."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelCard":
        """A card from ``to_dict()``'s output; missing keys take their defaults, unknown ones
        (a newer toolkit's) are dropped."""
        d = d if isinstance(d, dict) else {}
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known and v is not None}
        card = cls(**kwargs)
        card.metrics = {"source": "none", "detail": "", "values": {}, **(card.metrics or {})}
        return card

    def to_markdown(self) -> str:
        """``MODEL_CARD.md``: the card as a human reads it."""
        return card_markdown(self)


def card_of(checkpoint: dict[str, Any]) -> ModelCard | None:
    """The card a checkpoint carries; None for checkpoints made before cards existed."""
    record = checkpoint.get(CARD_KEY) if isinstance(checkpoint, dict) else None
    return ModelCard.from_dict(record) if isinstance(record, dict) else None


def _data_phrase(data: dict[str, Any]) -> str:
    source = str(data.get("source", "unknown"))
    kind = {"twin": "twin (synthetic)", "release": "release", "mixed": "mixed release and twin"
            }.get(source, "(source unknown)")
    subjects = data.get("subjects") or []
    count = f"{len(subjects)} subject" + ("" if len(subjects) == 1 else "s") if subjects else \
        "subjects unknown"
    return f"{data.get('dataset', 'DISFA')} {kind} {count}"


def _metric_phrase(metrics: dict[str, Any]) -> str:
    source = str(metrics.get("source", "none"))
    values = metrics.get("values") or {}
    where = METRIC_SOURCES.get(source, source)
    if source == "none" or not values:
        detail = metrics.get("detail") or "no held-out estimate"
        return f"no metrics ({detail})"
    parts = []
    f1 = values.get("mean_f1")
    if isinstance(f1, (int, float)):
        parts.append(f"F1 {100 * f1:.1f}")
    icc = values.get("mean_icc")
    if isinstance(icc, (int, float)):
        parts.append(f"ICC {icc:.2f}")
    return f"{', '.join(parts) or 'metrics'} ({where})"


def _plain(value: Any) -> Any:
    """Plain containers of str/int/float/bool/None (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item"):  # numpy / torch scalar
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    return str(value)

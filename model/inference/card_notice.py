"""What ``model.predict`` says about the model it runs, from the model card in its checkpoint
(or ONNX export): the card's one-line summary at start, and for a model trained on the
synthetic twin a warning on every output - the log, each CSV's sidecar, each plot title - that
its outputs on real faces mean nothing. A checkpoint without a card (made before cards
existed, or by another tool) is said to be one: what data it saw is not recorded.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..cards.card import CARD_KEY, TWIN_WARNING, card_of

log = logging.getLogger(__name__)

NO_CARD_WARNING = "no model card: what data this model saw is not recorded"
#: The first line of every plot title of a twin-trained model (a title has little room).
TWIN_TITLE = "WARNING: trained on the synthetic twin - outputs on real faces mean nothing"


@dataclass(frozen=True)
class CardNotice:
    """The card's summary (None without a card) and the warning every output carries."""

    summary: str | None
    trained_on_twin: bool
    warning: str | None

    def announce(self, source: Any) -> None:
        """Log the summary, then the warning (on every run: a batch may outlive its reader's
        memory of the model)."""
        if self.summary is not None:
            log.info("%s: model card: %s", source, self.summary)
        if self.warning is not None:
            log.warning("%s: %s", source, self.warning)

    def record(self) -> dict[str, Any]:
        """Fields for the CSV sidecar and the run summary."""
        return {"model_card": self.summary, "trained_on_twin": self.trained_on_twin,
                "notes": [self.warning] if self.warning else []}

    def title(self, text: str) -> str:
        """A plot title, led by the twin warning when the model saw only the twin."""
        return f"{TWIN_TITLE}\n{text}" if self.trained_on_twin else text


def notice_of(meta: dict[str, Any]) -> CardNotice:
    """The notice for a backend's ``meta`` (the card under :data:`CARD_KEY`, if any)."""
    card = card_of(meta)
    if card is None:
        return CardNotice(None, False, NO_CARD_WARNING)
    twin = card.trained_on_twin
    return CardNotice(card.summary_line(), twin, TWIN_WARNING if twin else None)


__all__ = ["CARD_KEY", "CardNotice", "NO_CARD_WARNING", "TWIN_TITLE", "notice_of"]

"""Model cards: what a checkpoint was trained on, how it was measured, what it may be used for.

``card`` holds the schema (stored in every checkpoint under ``CARD_KEY`` and written as
``MODEL_CARD.md`` beside ``best.pt``); ``build`` makes a card from a training run's records.
"""
from .card import CARD_KEY, TWIN_WARNING, ModelCard, card_of

__all__ = ["CARD_KEY", "TWIN_WARNING", "ModelCard", "card_of"]

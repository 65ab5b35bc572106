"""Model cards: the schema round-trips, survives a weights_only checkpoint load, reads old files."""
from __future__ import annotations

import torch

from model.cards import CARD_KEY, TWIN_WARNING, ModelCard, card_of


def _card(source: str = "twin") -> ModelCard:
    return ModelCard(
        data={"dataset": "DISFA", "source": source, "subjects": [1, 2, 3], "threshold": 2},
        task="occurrence", heads=["occurrence"],
        protocol={"folds": "disfa3", "test_subjects": [4], "selection": "val"},
        metrics={"source": "held-out fold", "detail": "fold 1 test",
                 "values": {"mean_f1": 0.918, "mean_f1_ci": (0.9, 0.93),
                            "per_au": {"AU1": {"f1": 0.5, "ci": (0.4, 0.6)}}}},
        recipe={"name": "cpu-demo", "variant": "tranet", "line": "variant tranet; ..."},
        backbone={"name": "SENet-50", "weights": "from scratch", "licence": "toolkit's own"},
        intended_use="research", limits=["only DISFA's 8 AUs"], created={"version": "0.1.0"})


def test_card_round_trips_through_a_weights_only_checkpoint(tmp_path):
    card = _card()
    path = tmp_path / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(2)}, CARD_KEY: card.to_dict()}, path)
    loaded = card_of(torch.load(path, weights_only=True))
    assert loaded == ModelCard.from_dict(card.to_dict())
    assert loaded.metrics["values"]["mean_f1_ci"] == [0.9, 0.93]  # tuples stored as lists
    assert loaded.trained_on_twin


def test_summary_line_and_markdown_say_what_the_model_saw():
    card = _card()
    line = card.summary_line()
    assert "\n" not in line and "twin (synthetic) 3 subjects" in line
    assert "F1 91.8 (held-out fold)" in line
    md = card.to_markdown()
    assert TWIN_WARNING in md and "| AU1 | 50.0 | 40.0-60.0 |" in md
    release = _card("release")
    assert not release.trained_on_twin and TWIN_WARNING not in release.to_markdown()


def test_cards_are_read_tolerantly():
    assert card_of({"model": {}}) is None  # a checkpoint from before cards
    partial = ModelCard.from_dict({"task": "both", "some_future_key": 1})
    assert partial.task == "both" and partial.metrics["source"] == "none"
    assert "no metrics" in partial.summary_line() and not partial.trained_on_twin
    mixed = ModelCard(data={"source": "mixed", "sources": ["release", "twin"]})
    assert mixed.trained_on_twin and "mixed release and twin" in mixed.summary_line()

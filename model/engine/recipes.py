"""Named training recipes: versioned JSON files of TrainConfig settings (``model/recipes/``).

A recipe is ``{"name", "description", "requires_pretrained", "settings": {option: value}}``;
``settings`` may name any TrainConfig option except where the data is and where the run goes.
``model.train --recipe paper`` starts from ``model/recipes/paper.json``; ``--recipe FILE.json``
from a copy a user edited. Options given on the command line override the recipe, and the
recipe's name, file and settings are recorded in the run's config.json (``train_config.recipe``).
A recipe's ``batch_size`` is the global batch: under torchrun each process trains on its share
(``config.hold_global_batch``); an explicit ``--batch-size`` is per process.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import GLOBAL_BATCH, TrainConfig
from .validation import check_train_values

#: Where the versioned recipes live (shipped as package data).
RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"
#: Options a recipe cannot set: they say where the data is and where this run goes.
NOT_IN_RECIPES = ("shards", "manifest", "fold", "out", "resume", "recipe")


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    description: str
    requires_pretrained: bool
    settings: dict[str, Any]

    def record(self, global_batch: bool = True) -> dict[str, Any]:
        """What config.json keeps of the recipe; with ``global_batch`` (the batch size is the
        recipe's, not the command line's) its batch is held as the global one under torchrun."""
        out = {"name": self.name, "source": self.source, "description": self.description,
               "requires_pretrained": self.requires_pretrained, "settings": dict(self.settings)}
        if global_batch and "batch_size" in self.settings:
            out[GLOBAL_BATCH] = int(self.settings["batch_size"])
        return out


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.json"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A named recipe (``paper``, ``cpu-demo``) or a recipe file; ValueError naming the problem."""
    text = str(name_or_path)
    path = Path(text) if text.endswith(".json") or Path(text).is_file() else RECIPE_DIR / f"{text}.json"
    if not path.is_file():
        raise ValueError(f"--recipe {text}: no such recipe (named ones: {', '.join(recipe_names())}; "
                         "or give the path of a .json file)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable recipe ({err})") from err
    if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
        raise ValueError(f"{path}: a recipe is a JSON object with a 'settings' object")
    settings = _check_settings(path, data["settings"])
    return Recipe(name=str(data.get("name") or path.stem), source=str(path),
                  description=str(data.get("description", "")),
                  requires_pretrained=bool(data.get("requires_pretrained", False)),
                  settings=settings)


def _check_settings(path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The settings, each checked by the table the command line uses (``validation``) and
    normalised (``"threshold": "B"`` -> 2); a ValidationError names the file and the field."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{path}: unknown options {unknown} (recipe settings are model.train "
                         "options, spelled with underscores)")
    placed = sorted(set(settings) & set(NOT_IN_RECIPES))
    if placed:
        raise ValueError(f"{path}: {placed} cannot be part of a recipe (give them on the command "
                         "line)")
    return check_train_values(settings, str(path))


def config_with_recipe(recipe: Recipe | str, **values: Any):
    """A TrainConfig from ``recipe`` with ``values`` (data, run folder, overrides) on top."""
    recipe = load_recipe(recipe) if isinstance(recipe, str) else recipe
    return TrainConfig(**{**recipe.settings, **values,
                          "recipe": recipe.record(global_batch="batch_size" not in values)})

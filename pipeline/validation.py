"""One check for every value a user or a file gives (issue 22, item 4).

A :class:`Field` says what a value must be (type, range, choices); the same field checks a
command-line option (:func:`arg_type`), a recipe, a checkpoint, ONNX metadata and a shard's
attributes (:func:`check_fields`), so a value refused on the command line is refused from a file
too, with one line naming the file and the field. This module holds the data fields the pipeline
itself reads (image size, label threshold, AUs); ``model.engine.validation`` adds the training and
model fields on top of them.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .cli import CommandError
from .datasets.disfa.facts import FACS_LETTERS
from .datasets.registry import KNOWN_AUS

#: Largest network input / shard frame side (a 1024^2 RGB frame is 3 MB; 20000 would be 1.2 GB).
MAX_IMAGE_SIZE = 1024
#: Smallest: the tests' and the twin's tiny shards (8-32 px) must stay readable.
MIN_IMAGE_SIZE = 8


class ValidationError(CommandError, ValueError):
    """A value outside its field's type or range; the message names where it came from."""


@dataclass(frozen=True)
class Field:
    """What one value must be. ``kind``: int, float, str, bool or list (of ``item``).
    ``parse`` normalises a value first (a FACS letter to its intensity) and raises ValueError."""

    kind: type
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    optional: bool = False          # None is allowed
    low_open: bool = False          # low itself is refused (lr > 0)
    item: "Field | None" = None     # for lists: each item's field
    parse: Callable[[Any], Any] | None = None
    what: str = ""                  # how the valid values read in a message

    def describe(self) -> str:
        if self.what:
            return self.what
        if self.choices is not None:
            return "one of " + ", ".join(str(c) for c in self.choices)
        noun = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
                list: "a list"}[self.kind]
        if self.low is not None and self.high is not None:
            return f"{noun} {self.low}..{self.high}" + (f" (> {self.low})" if self.low_open else "")
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low}"
        return noun


def _typed(value: Any, field: Field) -> Any:
    """``value`` as the field's type, or ValueError (bool is not a number; 2.0 is not an int)."""
    if field.parse is not None:
        return field.parse(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()  # numpy scalars from HDF5 attributes and torch files
    if field.kind is bool:
        if not isinstance(value, bool):
            raise ValueError
        return value
    if field.kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError
        return value
    if field.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            raise ValueError
        return float(value)
    if field.kind is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    if field.kind is list:
        if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
            raise ValueError
        return [_checked_item(v, field.item) for v in value]
    raise ValueError


def _checked_item(value: Any, field: Field | None) -> Any:
    if field is None:
        return value
    checked = _typed(value, field)
    if not _in_range(checked, field):
        raise ValueError
    return checked


def _in_range(value: Any, field: Field) -> bool:
    if field.choices is not None and value not in field.choices:
        return False
    if field.low is not None and (value < field.low or (field.low_open and value == field.low)):
        return False
    return field.high is None or value <= field.high


def check_value(name: str, value: Any, field: Field, source: str) -> Any:
    """``value`` checked (and normalised) by ``field``; a ValidationError names ``source``
    (a file or an option) and ``name``."""
    if value is None and field.optional:
        return None
    try:
        checked = _typed(value, field)
        ok = _in_range(checked, field) if field.kind is not list else True
    except (ValueError, TypeError, OverflowError):
        ok = False
    if not ok:
        plain = value.tolist() if hasattr(value, "tolist") else value  # numpy from HDF5
        shown = repr(plain) if len(repr(plain)) <= 60 else repr(plain)[:57] + "..."
        raise ValidationError(f"{source}: {name} must be {field.describe()}, got {shown}")
    return checked


def check_fields(values: Mapping[str, Any], fields: Mapping[str, Field], source: str) -> dict:
    """Every key of ``values`` that ``fields`` knows, checked; the others pass unchanged."""
    return {k: check_value(k, v, fields[k], source) if k in fields else v
            for k, v in values.items()}


def arg_type(field: Field) -> Callable[[str], Any]:
    """An argparse ``type`` for ``field``: the text converted, then checked (exit 2 naming the
    option, as :func:`pipeline.cli.int_range`)."""

    def parse(text: str) -> Any:
        try:
            value = text if field.kind is str or field.parse else field.kind(text)
        except ValueError:
            value = text
        try:
            return check_value("value", value, field, "option")
        except ValidationError:
            raise argparse.ArgumentTypeError(f"must be {field.describe()}, got {text!r}") from None

    parse.__name__ = field.kind.__name__
    return parse


def parse_label_threshold(value: Any) -> int:
    """A FACS letter A-E or an intensity 1-5 (int or its text) -> the intensity."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, str):
        word = value.strip().upper()
        if word in FACS_LETTERS:
            return FACS_LETTERS[word]
        value = int(word) if word.isdigit() else -1
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 5:
        raise ValueError
    return value


#: The data fields: what shards, manifests, checkpoints and the command line share.
DATA_FIELDS: dict[str, Field] = {
    "image_size": Field(int, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE),
    "threshold": Field(int, parse=parse_label_threshold,
                       what="a FACS letter A-E or an intensity 1-5"),
    "au_ids": Field(list, item=Field(int, choices=KNOWN_AUS),
                    what=f"a list of AUs a supported dataset codes ({', '.join(map(str, KNOWN_AUS))})"),
}


def check_au_list(name: str, value: Any, source: str, allow_empty: bool = False) -> list[int]:
    """A non-empty (unless ``allow_empty``) list of distinct AUs (those of the supported datasets)."""
    aus = check_value(name, value, DATA_FIELDS["au_ids"], source)
    if (not aus and not allow_empty) or len(set(aus)) != len(aus):
        raise ValidationError(f"{source}: {name} must be a {'' if allow_empty else 'non-empty '}"
                              f"list of distinct AUs, got {list(aus)!r}")
    return aus

"""Every command explains every option: help text present, default stated once, in plain words."""
from __future__ import annotations

import argparse
import importlib

import pytest

COMMANDS = ["pipeline.synth", "pipeline.align", "pipeline.build_folds", "pipeline.bench",
            "model.train", "model.evaluate", "model.crossval", "model.predict", "model.demo",
            "model.bench", "model.predict_bench"]
OPTIONAL = ["model.export", "model.gpu_report"]


def _parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for name in COMMANDS + OPTIONAL:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            if name in COMMANDS:
                raise
            continue
        found.append((name, module.build_parser()))
    return found


@pytest.mark.parametrize("name,parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_option_has_help(name, parser):
    missing, negated = [], []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if not action.help or action.help == argparse.SUPPRESS:
            missing.append(action.option_strings[0])
        if isinstance(action, argparse._StoreFalseAction):
            # "--no-flip ... (default: True)" reads as "flipping is off": say it in words instead
            text = parser.format_help()
            if "(default: True)" in text.split(action.option_strings[0], 1)[1].split("\n  -")[0]:
                negated.append(action.option_strings[0])
    assert not missing, f"{name}: options without help: {missing}"
    assert not negated, f"{name}: on/off options whose default reads backwards: {negated}"


@pytest.mark.parametrize("name,parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_default_stated_once(name, parser):
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or not action.help:
            continue
        rendered = formatter._expand_help(action) if "%(" in formatter._get_help_string(
            action) else formatter._get_help_string(action)
        if "%(" in formatter._get_help_string(action):
            rendered = formatter._get_help_string(action) % {**vars(action), "default": action.default,
                                                            "prog": parser.prog}
        assert rendered.count("(default") <= 1, f"{name} {action.option_strings}: {rendered}"
        assert "(default: True)" not in rendered and "(default: False)" not in rendered, (
            f"{name} {action.option_strings}: an on/off default in code words: {rendered}")


@pytest.mark.parametrize("name,parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_zero_defaults_are_stated(name, parser):
    """0 == False in Python: a default of 0 or 0.0 (--upsample, --min-confidence) is a value to
    state, not an on/off switch to leave unsaid."""
    formatter = parser._get_formatter()
    for action in parser._actions:
        if (action.option_strings and action.help and action.nargs != 0
                and not isinstance(action.default, bool) and action.default == 0
                and "default" not in action.help):
            assert "(default" in formatter._get_help_string(action), (
                f"{name} {action.option_strings}: default {action.default!r} not shown")


@pytest.mark.parametrize("name,parser", _parsers(), ids=lambda v: v if isinstance(v, str) else "")
def test_no_empty_list_default(name, parser):
    """"(default: [])" says nothing a reader can use: an option taking a list says in words
    what happens without it."""
    assert "(default: [])" not in parser.format_help(), name

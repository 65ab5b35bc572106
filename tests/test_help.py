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
    for action in parser._actions:
        if action.help and action.help.count("default") > 1 and "%(default)" in action.help:
            pytest.fail(f"{name} {action.option_strings}: default stated twice")
        if action.help and "(default" in action.help and isinstance(
                parser.formatter_class, type) and issubclass(
                parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter):
            rendered = parser._get_formatter()._expand_help(action)
            assert rendered.count("default") <= 1 or "%(default)" in action.help, (
                f"{name} {action.option_strings}: default stated twice: {rendered}")

"""The docs work as written: their marked commands run on a tiny twin, their options parse.

A fenced shell block right after ``<!-- run-on-twin -->`` is run, in document order (README first,
then the guides in ``GUIDES``), in one scratch folder, after the substitutions in ``SUBSTITUTIONS``
(the DISFA root becomes a tiny twin, heavy settings tiny ones). A ``<!-- writes: A B -->`` line
after such a block names paths (relative to the scratch folder) that must exist afterwards. A block
after ``<!-- parse-only -->`` (real weights, GPUs, a real release) is checked by its command's own
argument parser only. docs/development.md documents the markers and substitutions.
"""
from __future__ import annotations

import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_FIRST = ["README.md", "docs/twin.md", "docs/disfa.md", "docs/predict.md", "docs/model.md",
          "docs/reliability.md", "docs/benchmarks.md", "docs/development.md"]
#: README and the main guides first (later blocks use what earlier ones wrote), then every other
#: page of docs/, so a block on a new page is never skipped.
GUIDES = _FIRST + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")
                         if str(p.relative_to(ROOT)) not in _FIRST)
RUN, PARSE = "<!-- run-on-twin -->", "<!-- parse-only -->"
#: The tiny twin every runnable command works on, made before the first block runs.
TWIN = ["python", "-m", "pipeline.synth", "--out", "twin", "--n-subjects", "6", "--frames", "40",
        "--width", "160", "--height", "120", "--jobs", "1"]
#: (pattern, replacement) applied to each runnable command, in this order.
SUBSTITUTIONS: list[tuple[str, str]] = [
    (r"^pip install -e \S+ && ", ""),
    (r"/data/DISFA", "twin"),
    (r"data/disfa_twin", "twin"),
    (r"--jobs \d+", "--jobs 1"),
    (r"(python -m model\.demo .*)", r"\1 --n-subjects 6 --frames 40 --frame-width 160 "
     r"--frame-height 120 --k 3 --val-subjects 1 --folds 1 --epochs 1 --batches-per-epoch 2 "
     r"--batch-size 8 --predict-subjects 1 --jobs 1 --quiet"),
    (r"(python -m model\.(train|crossval) .*)", r"\1 --epochs 1 --batches-per-epoch 2 "
     r"--batch-size 8 --eval-batches 2 --quiet"),
    (r"my_clip\.mp4", "twin/Videos_LeftCamera/LeftVideoSN001_comp.avi"),
]


@dataclass
class Block:
    source: str
    line: int
    mode: str                      # "run" or "parse"
    commands: list[str]
    writes: list[str] = field(default_factory=list)


def _commands(text: str) -> list[str]:
    """Shell lines of a block: continuations joined, comments and optional [--x] dropped."""
    joined = re.sub(r"\\\n\s*", " ", text)
    out = []
    for line in joined.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        line = re.sub(r"\[[^\]]*\]", "", line).strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def doc_blocks(paths: list[str] = GUIDES) -> list[Block]:
    blocks = []
    for rel in paths:
        path = ROOT / rel
        if not path.is_file():
            continue
        text = path.read_text()
        pattern = re.compile(r"(<!-- (?:run-on-twin|parse-only) -->)\s*\n```[a-z]*\n(.*?)```"
                             r"(?:\s*\n<!-- writes: (.*?) -->)?", re.S)
        for m in pattern.finditer(text):
            blocks.append(Block(rel, text[:m.start()].count("\n") + 1,
                                "run" if m.group(1) == RUN else "parse", _commands(m.group(2)),
                                (m.group(3) or "").split()))
    return blocks


def substitute(command: str) -> str:
    for pattern, replacement in SUBSTITUTIONS:
        command = re.sub(pattern, replacement, command)
    return command


def _python_module(command: str) -> tuple[str, list[str]] | None:
    for part in command.split("&&"):
        words = shlex.split(part)
        if len(words) >= 3 and words[0] in ("python", "python3") and words[1] == "-m":
            if words[2] != "pytest":
                return words[2], words[3:]
    return None


def test_docs_have_runnable_and_parse_only_blocks():
    blocks = doc_blocks()
    assert any(b.mode == "run" for b in blocks), "no <!-- run-on-twin --> block in the docs"
    assert any(b.mode == "parse" for b in blocks), "no <!-- parse-only --> block in the docs"


@pytest.mark.parametrize("block", [b for b in doc_blocks() if b.mode == "parse"],
                         ids=lambda b: f"{b.source}:{b.line}")
def test_parse_only_commands_parse(block):
    for command in block.commands:
        found = _python_module(command)
        assert found, f"{block.source}:{block.line}: not a python -m command: {command}"
        module, argv = found
        parser = importlib.import_module(module).build_parser()
        try:
            parser.parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{block.source}:{block.line}: {module} rejects {argv} (exit {err.code})")


def test_runnable_commands_run_on_a_tiny_twin(tmp_path):
    blocks = [b for b in doc_blocks() if b.mode == "run"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    # this interpreter, not whichever python is first on PATH (CI runs a venv's without it)
    subprocess.run([sys.executable, *TWIN[1:]], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    for block in blocks:
        for command in block.commands:
            command = substitute(command).replace("python -m", f"{sys.executable} -m")
            done = subprocess.run(command, shell=True, cwd=tmp_path, env=env,
                                  capture_output=True, text=True)
            assert done.returncode == 0, (f"{block.source}:{block.line}: {command}\n"
                                          f"{done.stderr[-3000:]}")
        missing = [p for p in block.writes if not (tmp_path / p).exists()]
        assert not missing, f"{block.source}:{block.line}: the guide says it writes {missing}"


def test_readme_is_a_front_door():
    assert (ROOT / "README.md").stat().st_size < 14_000

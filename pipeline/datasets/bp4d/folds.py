"""BP4D's standard three parts, its fold -> test-part mapping and the peers' drop lists, as
versioned in ``data_manifests/`` (sources in each file and in BP4D_FACTS.md).

Fold numbering differs between peers; the manifest's ``folds`` say which part each fold tests
(ME-GraphAU's fold 1 tests part 3, fold 2 part 2, fold 3 part 1), so nobody has to guess.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from ..disfa.facts import MANIFEST_DIR

FOLDS_JSON = MANIFEST_DIR / "bp4d_folds.json"
SEQUENCES_CSV = MANIFEST_DIR / "bp4d_sequences.csv"
#: Drop lists offered by name (``BP4DAdapter().dropped_frames(name)``, ``--drop-list``).
DROP_LISTS: dict[str, Path] = {"jaa": MANIFEST_DIR / "bp4d_jaa_dropped_frames.txt"}

_DROP_LINE_RE = re.compile(r"^([FM]\d{3})/(T\d)\s*\((\d+)\)\s*:\s*(.+)$")
_TOTAL_RE = re.compile(r"^#\s*total\s+(\d+)\s*$")


def standard_folds() -> dict:
    """The BP4D folds manifest: parts, fold -> test part, validation hold-outs, frame counts."""
    with FOLDS_JSON.open() as handle:
        return json.load(handle)


def _ranges(text: str, where: str) -> set[int]:
    frames: set[int] = set()
    for item in text.split(","):
        first, _, last = item.strip().partition("-")
        try:
            a, b = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"{where}: cannot read the frame range {item.strip()!r}") from None
        if b < a:
            raise ValueError(f"{where}: frame range {a}-{b} runs backwards")
        frames.update(range(a, b + 1))
    return frames


def read_drop_list(path: Path) -> dict[tuple[str, str], set[int]]:
    """``SUBJECT/TASK (count): a-b, c, ...`` lines -> {(subject, task): frames}; each line's
    count and the ``# total`` line are checked against the ranges."""
    out: dict[tuple[str, str], set[int]] = {}
    total = None
    for no, line in enumerate(Path(path).read_text().splitlines(), start=1):
        line = line.strip()
        if (m := _TOTAL_RE.match(line)) is not None:
            total = int(m.group(1))
        if not line or line.startswith("#"):
            continue
        m = _DROP_LINE_RE.match(line)
        if m is None:
            raise ValueError(f"{path}, line {no}: expected 'F001/T1 (n): a-b, c', got {line!r}")
        frames = _ranges(m.group(4), f"{path}, line {no}")
        if len(frames) != int(m.group(3)):
            raise ValueError(f"{path}, line {no}: says {m.group(3)} frames, lists {len(frames)}")
        out.setdefault((m.group(1), m.group(2)), set()).update(frames)
    if total is not None and total != sum(len(v) for v in out.values()):
        raise ValueError(f"{path}: '# total {total}' but the lines list "
                         f"{sum(len(v) for v in out.values())} frames")
    return out


def dropped_frames(name: str) -> dict[tuple[str, str], set[int]]:
    """The frames drop list ``name`` leaves out (ValueError naming the choices otherwise)."""
    if name not in DROP_LISTS:
        raise ValueError(f"unknown BP4D drop list {name!r}; choose from {', '.join(DROP_LISTS)}")
    return read_drop_list(DROP_LISTS[name])


def sequence_table() -> list[dict[str, str]]:
    """``bp4d_sequences.csv``: per subject/task its part, first/last coded frame, CSV rows and
    the rows the JAA and AU-Net lists keep (strings, as in the file)."""
    with SEQUENCES_CSV.open(newline="") as handle:
        return list(csv.DictReader(line for line in handle if not line.startswith("#")))

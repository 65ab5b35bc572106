"""DISFA+ label files: per trial ``AU<N>.txt``, two header lines then ``000.jpg     3`` lines.

A frame is kept only where all 12 AU files list it (py-feat's intersection); the frames each
rule leaves out are counted. Frame numbers are the 0-based image file numbers (unlike DISFA's
1-based label lines).
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..disfa.layout import ReleaseError, read_bounded
from . import facts
from .layout import au_files

#: The only line a label file's body may hold (after its two header lines).
LINE_RE = re.compile(r"^\s*(\d+)\.jpg\s+(\d+)\s*$", re.IGNORECASE)
N_HEADER_LINES = 2
MAX_LABEL_BYTES = 4 * 2**20
DROP_NOT_IN_ALL = "not listed in all 12 AU files"


def read_au_file(path: Path, rel: str | None = None) -> dict[int, int]:
    """0-based frame number -> intensity (0-5) of one ``AU<N>.txt``.

    Up to two leading lines that are not frame lines are the header (their content is
    UNVERIFIED); blank and ``#`` lines are skipped; any other line that does not match
    ``LINE_RE``, an intensity above 5 or a frame listed twice is a ReleaseError naming it."""
    rel = rel or str(path)
    try:
        text = read_bounded(path, rel, MAX_LABEL_BYTES).decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ReleaseError(f"{rel}: not a text label file ({err})") from None
    out: dict[int, int] = {}
    for line_no, line in enumerate(text.splitlines(), start=1):
        m = LINE_RE.match(line)
        if m is None:
            header = line_no <= N_HEADER_LINES and not out
            if header or not line.strip() or line.lstrip().startswith("#"):
                continue
            raise ReleaseError(f"{rel} line {line_no}: expected '<NNN>.jpg <intensity>', "
                               f"got {line.strip()[:60]!r}")
        frame, value = int(m.group(1)), int(m.group(2))
        if value > 5:
            raise ReleaseError(f"{rel} line {line_no}: intensity {value} is not 0-5")
        if frame in out:
            raise ReleaseError(f"{rel} line {line_no}: frame {m.group(1)}.jpg listed twice")
        out[frame] = value
    return out


def read_trial_labels(label_dir: Path, rel: str | None = None
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """(frame numbers sorted, intensity ``[N, 12]`` uint8 in ``facts.AUS`` order, dropped).

    Columns are mapped by the AU number in each file's name, never by listing order (a
    listing gives AU1, AU12, AU15, ... AU2). A missing AU file is a ReleaseError."""
    rel = rel or str(label_dir)
    files = au_files(label_dir)
    missing = [au for au in facts.AUS if au not in files]
    if missing:
        raise ReleaseError(f"{rel}: AU file(s) {', '.join(f'AU{a}.txt' for a in missing)} "
                           "missing (each trial has 12)")
    per_au = {au: read_au_file(files[au], f"{rel}/{files[au].name}") for au in facts.AUS}
    listed = [set(v) for v in per_au.values()]
    common = sorted(set.intersection(*listed))
    frames = np.asarray(common, dtype=np.int64)
    intensity = np.zeros((len(frames), len(facts.AUS)), dtype=np.uint8)
    for col, au in enumerate(facts.AUS):
        intensity[:, col] = [per_au[au][f] for f in common]
    dropped = {DROP_NOT_IN_ALL: len(set.union(*listed)) - len(common)}
    return frames, intensity, dropped

"""Where ``model.predict`` writes each input's CSV, and whether a rerun may skip it.

An output is named by its input's path relative to the folder it was found in, mirrored inside
OUT (``--video rec/`` finds ``rec/day2/a.avi`` -> ``OUT/day2/a.csv``), never by its position
in the batch: adding an input never renames another's output. The sidecar records the input's
path, size and modification time (:func:`fingerprint`); a rerun skips only a CSV whose sidecar
matches its input now: a changed input is redone in place, and another input that would take
the name of a finished CSV gets a name of its own (:func:`settle_clashes`).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Sequence

from .output import is_complete, sidecar_path


def relative_name(path: Path, root: Path | None) -> str:
    """``path`` relative to ``root`` without its ending, as a POSIX path (``day2/a``); the
    bare stem when there is no root or the path is not below it (nothing may climb out of OUT)."""
    if root is not None:
        try:
            parts = Path(path).with_suffix("").relative_to(root).parts
        except ValueError:
            parts = ()
        if parts and ".." not in parts:
            return PurePosixPath(*parts).as_posix()
    return Path(path).stem or "input"


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def fingerprint(source: Path, files: Sequence[Path] = ()) -> dict[str, Any] | None:
    """The input as the sidecar records it: its resolved path, size and mtime (for an image
    sequence: file count, total size, latest mtime and a digest of every file's name, size and
    mtime). None when it cannot be read (the run then reports it failed)."""
    if not files:
        stat = _stat(Path(source))
        if stat is None or not Path(source).is_file():
            return None
        return {"path": str(Path(source).resolve()), "size": stat[0], "mtime_ns": stat[1]}
    digest, total, latest = hashlib.sha1(), 0, 0
    for f in files:
        stat = _stat(Path(f)) or (-1, -1)
        digest.update(f"{Path(f).resolve()}\0{stat[0]}\0{stat[1]}\n".encode())
        total, latest = total + max(stat[0], 0), max(latest, stat[1])
    return {"path": str(Path(source).resolve()), "files": len(files), "size": total,
            "mtime_ns": latest, "digest": digest.hexdigest()}


def recorded_source(csv_path: Path) -> dict[str, Any] | None:
    """The ``source`` a finished run recorded in ``csv_path``'s sidecar (None if none)."""
    try:
        meta = json.loads(sidecar_path(csv_path).read_text())
    except (OSError, ValueError):
        return None
    source = meta.get("source") if isinstance(meta, dict) else None
    return source if isinstance(source, dict) else None


def resume_state(csv_path: Path, current: dict[str, Any] | None) -> str:
    """``"missing"`` (no CSV), ``"foreign"`` (a CSV this command did not finish: left alone),
    ``"done"`` (finished from this very input, unchanged) or ``"stale"`` (finished from another
    input or an older version of this one: redone)."""
    if not Path(csv_path).exists():
        return "missing"
    if not is_complete(csv_path):
        return "foreign"
    return "done" if current is not None and recorded_source(csv_path) == current else "stale"


def owner_path(csv_path: Path) -> str | None:
    """The resolved input path a finished CSV was made from, per its sidecar (``input`` for
    sidecars written before ``source`` existed)."""
    try:
        meta = json.loads(sidecar_path(csv_path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict):
        return None
    source = meta.get("source")
    if isinstance(source, dict) and isinstance(source.get("path"), str):
        return source["path"]
    return str(Path(meta["input"]).resolve()) if isinstance(meta.get("input"), str) else None


def settle_clashes(names: list[str], sources: list[Path], out: Path) -> list[str]:
    """Names made unique without depending on order. The input that owns the finished CSV at a
    name keeps it; another input that would take that name (in this run, or a CSV an earlier
    run made from another input) gets ``name-<6 hex of its path>`` instead of overwriting it."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.casefold(), []).append(i)   # case-insensitive file systems
    settled = list(names)
    for members in groups.values():
        owner = owner_path(out / f"{names[members[0]]}.csv")
        if len(members) < 2 and owner is None:
            continue
        for i in members:
            resolved = str(Path(sources[i]).resolve())
            if resolved != owner:
                tag = hashlib.sha1(resolved.encode()).hexdigest()[:6]
                settled[i] = f"{names[i]}-{tag}"
    return settled


def prepare_parent(csv_path: Path) -> None:
    """Create the CSV's folder inside OUT (outputs mirror the inputs' folders)."""
    os.makedirs(Path(csv_path).parent, exist_ok=True)

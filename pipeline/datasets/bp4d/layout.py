"""Find the files of a BP4D release by pattern, whichever of the two shipped variants it is.

The FERA 2015 subset has ``AUCoding/F001_T1.csv``, ``AU Intensity Codes3.0/AU06/F001_T1_*.csv``
(or ``AU-Intensity-Codes3.0``), ``BP4D-training/F001/T1/<n>.jpg`` and ``BP4D-fpoints/``; the full
release has ``AUCoding/AU_OCC/F001_T1.csv`` and ``2DFeatures/F001_T1.mat``. Folder names are
matched loosely (case, ``-``/``_``/space) because the peers' copies spell them differently, and
nothing is assumed about where the frame folders are: any folder ``<subject>/<task>/`` holding
images is one (BP4D_FACTS.md, "Loader rule"). Anything ambiguous (two files for one sequence)
is an error naming both, never a silent pick.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..disfa.layout import ReleaseError

Key = tuple[str, str]  # (subject, task), e.g. ("F001", "T1")

_SUBJECT_RE = re.compile(r"^[FM]\d{3}$", re.IGNORECASE)
_TASK_RE = re.compile(r"^T\d$", re.IGNORECASE)
_OCC_CSV_RE = re.compile(r"^([FM]\d{3})_(T\d)\.csv$", re.IGNORECASE)
_INT_CSV_RE = re.compile(r"^([FM]\d{3})_(T\d)(?:_.*)?\.csv$", re.IGNORECASE)
_AU_DIR_RE = re.compile(r"^AU_?0*(\d+)$", re.IGNORECASE)
_LM_PATH_RE = re.compile(r"([FM]\d{3})[_/\\](T\d)(?:[_.].*)?\.mat$", re.IGNORECASE)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def _loose(name: str) -> str:
    """A folder name without case and separators: ``AU Intensity Codes3.0`` -> ``auintensitycodes30``."""
    return re.sub(r"[\s_\-.]", "", name.lower())


def _is_coding_dir(name: str) -> bool:
    return _loose(name).startswith("aucoding")


def _is_intensity_dir(name: str) -> bool:
    loose = _loose(name)
    return loose.startswith("auintensitycodes") or loose == "auint"


def _is_landmark_dir(name: str) -> bool:
    loose = _loose(name)
    return "fpoints" in loose or loose.startswith("2dfeatures")


@dataclass
class BP4DLayout:
    """Per sequence (subject, task), where its files are (paths absolute)."""

    root: Path
    occurrence: dict[Key, Path] = field(default_factory=dict)
    frames: dict[Key, Path] = field(default_factory=dict)
    intensity: dict[Key, dict[int, Path]] = field(default_factory=dict)  # AU -> file
    landmarks: dict[Key, Path] = field(default_factory=dict)

    def rel(self, path: Path) -> str:
        """``path`` relative to the release root, for messages."""
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


def _key(subject: str, task: str) -> Key:
    return subject.upper(), task.upper()


def _put(table: dict, key, path: Path, layout: BP4DLayout, what: str) -> None:
    if key in table and table[key] != path:
        raise ReleaseError(f"two {what} files for {'/'.join(map(str, key))}: "
                           f"{layout.rel(table[key])} and {layout.rel(path)}")
    table[key] = path


def _has_image(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries)


def _scan_dir(layout: BP4DLayout, path: str, files: list[str], context: set[str]) -> None:
    """Record what folder ``path`` holds; ``context`` says which kinds of folder it is under."""
    here = Path(path)
    if "coding" in context and "intensity" not in context:
        for name in files:
            if (m := _OCC_CSV_RE.match(name)) is not None:
                _put(layout.occurrence, _key(*m.groups()), here / name, layout, "occurrence")
    if "intensity" in context and (au := _AU_DIR_RE.match(here.name)) is not None:
        for name in files:
            if (m := _INT_CSV_RE.match(name)) is not None:
                table = layout.intensity.setdefault(_key(*m.groups()), {})
                _put(table, int(au.group(1)), here / name, layout,
                     f"AU{int(au.group(1))} intensity ({m.group(1)}_{m.group(2)})")
    if "landmarks" in context:
        for name in files:
            rel = layout.rel(here / name)
            if (m := _LM_PATH_RE.search(rel)) is not None:
                _put(layout.landmarks, _key(*m.groups()), here / name, layout, "landmark")
            elif name.lower().endswith(".mat"):
                # The landmark folders' layout is UNVERIFIED: a file we cannot place means the
                # assumption is wrong, and going on would silently drop every landmark.
                raise ReleaseError(f"{rel}: a landmark .mat whose name does not say its "
                                   "sequence (expected F001_T1.mat, one file per sequence)")
    if _TASK_RE.match(here.name) and _SUBJECT_RE.match(here.parent.name) and _has_image(path):
        _put(layout.frames, _key(here.parent.name, here.name), here, layout, "frame folder")


def find_release(root: Path | str) -> BP4DLayout:
    """Walk ``root`` once and map every sequence's files; a ReleaseError when it has no
    occurrence CSVs (the one part every BP4D copy has)."""
    root = Path(root)
    if not root.is_dir():
        raise ReleaseError(f"BP4D root {root} does not exist or is not a folder")
    layout = BP4DLayout(root=root)
    contexts: dict[str, set[str]] = {str(root): set()}
    for path, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        context = contexts.pop(path, set())
        _scan_dir(layout, path, files, context)
        for d in dirs:
            sub = set(context)
            sub |= {kind for kind, test in (("coding", _is_coding_dir),
                                            ("intensity", _is_intensity_dir),
                                            ("landmarks", _is_landmark_dir)) if test(d)}
            contexts[os.path.join(path, d)] = sub
        if _TASK_RE.match(Path(path).name) and _SUBJECT_RE.match(Path(path).parent.name):
            dirs[:] = []  # a frame folder: its files were listed, nothing below is BP4D's
    if not layout.occurrence:
        raise ReleaseError(f"{root}: no occurrence CSV (AUCoding/F001_T1.csv or "
                           "AUCoding/AU_OCC/F001_T1.csv); is this the BP4D release root?")
    return layout

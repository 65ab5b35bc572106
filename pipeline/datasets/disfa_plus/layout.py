"""Where a DISFA+ release keeps its files (DISFAPLUS_FACTS.md, "Layout of the release").

    <root>/Images/SN001/A1_AU1_TrailNo_1/000.jpg ...       (+ TimeStamp.txt, ignored)
    <root>/Labels/SN001/A1_AU1_TrailNo_1/AU1.txt ... AU26.txt
    <root>/FaceLandmarks/SN001/A1_AU1_TrailNo_1_FaceCropped.mat

Trial folders are found by searching below each subject folder (some unpacked copies nest the
subject twice, ``Labels/SN001/SN001/...``), so nothing depends on the nesting depth; trial
names are opaque strings ("Trail" and "Suprise" are the release's spellings).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

from ..disfa.layout import ReleaseError
from . import facts

log = logging.getLogger("pipeline.datasets.disfa_plus")

IMAGES, LABELS, LANDMARKS = "Images", "Labels", "FaceLandmarks"
#: ``AU1.txt`` .. ``AU26.txt``; the number, never the listing order, names the AU.
AU_FILE_RE = re.compile(r"^AU(\d+)\.txt$", re.IGNORECASE)
#: Frame images: the 0-based file number (``000.jpg``).
IMAGE_RE = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)
LANDMARK_SUFFIX = "_FaceCropped.mat"
#: Folders searched below a subject folder for trials (subject, nested subject, trial).
MAX_DEPTH = 3


def release_top(root: Path) -> Path:
    """The folder holding ``Labels/`` and ``Images/``: ``root`` or one folder below it (the
    archive's ``DISFAPlusDataset/``); a ReleaseError naming what is missing otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise ReleaseError(f"{root}: no such folder (the DISFA+ release root)")
    candidates = [root] + sorted(p for p in root.iterdir() if p.is_dir())
    for top in candidates:
        if (top / LABELS).is_dir() and (top / IMAGES).is_dir():
            return top
    raise ReleaseError(f"{root}: not a DISFA+ release (expected {LABELS}/ and {IMAGES}/ in it "
                       "or in one folder below it)")


def subject_dirs(folder: Path) -> dict[str, Path]:
    """Subject name -> its folder under ``Labels/`` or ``Images/``; other entries are skipped."""
    out = {}
    for path in sorted(Path(folder).iterdir()):
        if not path.is_dir():
            continue
        if not facts.SUBJECT_PATTERN.fullmatch(path.name):
            log.debug("%s: not a subject folder, skipped", path)
            continue
        if path.name not in facts.SUBJECTS:
            log.warning("%s: %s is not one of DISFA+'s 9 subjects; read anyway", path, path.name)
        out[path.name] = path
    return out


def trial_dirs(subject_dir: Path, holds: re.Pattern) -> dict[str, Path]:
    """Trial name -> folder, for every folder below ``subject_dir`` holding a file that
    ``holds`` matches (searched ``MAX_DEPTH`` deep; two folders of one name are an error)."""
    found: dict[str, Path] = {}
    level = [Path(subject_dir)]
    for _ in range(MAX_DEPTH):
        below = []
        for folder in level:
            for path in sorted(p for p in folder.iterdir() if p.is_dir()):
                if any(holds.match(f.name) for f in path.iterdir() if f.is_file()):
                    if path.name in found:
                        raise ReleaseError(f"trial {path.name} is in two folders: "
                                           f"{found[path.name]} and {path}")
                    found[path.name] = path
                else:
                    below.append(path)
        level = below
    return found


def au_files(label_dir: Path) -> dict[int, Path]:
    """AU number -> its label file in one trial folder (any listing order)."""
    out: dict[int, Path] = {}
    for path in sorted(Path(label_dir).iterdir()):
        m = AU_FILE_RE.match(path.name)
        if m is None:
            continue
        au = int(m.group(1))
        if au not in facts.AUS:
            raise ReleaseError(f"{path}: AU{au} is not one of DISFA+'s 12 AUs {list(facts.AUS)}")
        if au in out:
            raise ReleaseError(f"{label_dir}: two label files for AU{au}: "
                               f"{out[au].name} and {path.name}")
        out[au] = path
    return out


def landmark_files(top: Path, subject: str) -> dict[str, Path]:
    """Trial name -> its ``<trial>_FaceCropped.mat`` (searched below FaceLandmarks/<subject>)."""
    base = Path(top) / LANDMARKS / subject
    if not base.is_dir():
        return {}
    out: dict[str, Path] = {}
    for depth in range(1, MAX_DEPTH + 1):
        for path in sorted(base.glob("/".join(["*"] * depth))):
            if path.is_file() and path.name.endswith(LANDMARK_SUFFIX):
                out.setdefault(path.name[: -len(LANDMARK_SUFFIX)], path)
    return out

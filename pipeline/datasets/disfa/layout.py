"""Find and read the files of a DISFA release: videos, AU labels, landmarks, the error log.

The release is not uniform (see DISFA_FACTS.md), so discovery is tolerant where the release
varies and strict where a mistake would silently change the data:

* folder and file names match case-insensitively (``LeftVideo``/``leftVideo``, ``_comp``/``_Comp``,
  ``Video_RightCamera`` singular or plural);
* the landmark subfolder is taken whatever its name, as long as it is the only one holding
  ``.mat`` files;
* both landmark naming schemes are understood: ``SN001_0000_lm.mat`` (0-based frame) and
  ``l0NNNN_lm.mat`` (1-based frame);
* every parse error names the file (relative to the release root) and the line or frame.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ...cli import CommandError

CAMERAS = ("left", "right")

_DIR_PATTERNS = {
    "labels": re.compile(r"^action_?units?_?labels?$"),
    "left": re.compile(r"^videos?_?left_?camera$"),
    "right": re.compile(r"^videos?_?right_?camera$"),
    "landmarks": re.compile(r"^landmarks?_?points?$"),
}
_VIDEO_RE = re.compile(r"^(left|right)video(sn\d{3})(?:_comp)?\.(avi|mp4|mkv|mov)$", re.IGNORECASE)
_LABEL_RE = re.compile(r"^(sn\d{3})_au(\d+)\.txt$", re.IGNORECASE)
_SUBJECT_RE = re.compile(r"^sn\d{3}$", re.IGNORECASE)

#: Largest file read from a release, and the most a landmark .mat may inflate to. A DISFA label
#: file is ~40 KB and a landmark .mat ~1 KB (66x2 doubles); anything far larger is not DISFA and
#: must not be able to exhaust memory (a 300 KB .mat can inflate to gigabytes).
MAX_RELEASE_FILE_BYTES = 64 * 2**20


class ReleaseError(CommandError, ValueError):
    """A file of the release is missing or does not parse; the message names file and line."""


def read_bounded(path: Path | str, rel: str, limit: int = MAX_RELEASE_FILE_BYTES) -> bytes:
    """The bytes of a release file, refusing one larger than ``limit`` before reading it."""
    try:
        size = os.stat(path).st_size
        if size > limit:
            raise ReleaseError(f"{rel}: {size} bytes, more than the {limit} a DISFA file of this "
                               "kind can hold; refused")
        with open(path, "rb") as handle:
            return handle.read(limit + 1)
    except OSError as err:
        raise ReleaseError(f"{rel}: cannot read ({err})") from err



@dataclass
class SubjectFiles:
    """Where one subject's files are (``None`` where the release lacks one)."""

    subject: str
    root: Path
    label_files: dict[int, Path] = field(default_factory=dict)  # AU number -> path
    videos: dict[str, Path] = field(default_factory=dict)  # camera -> path
    landmark_dir: Path | None = None

    def rel(self, path: Path) -> str:
        """``path`` relative to the release root, for messages."""
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return str(path)


@dataclass
class ReleaseLayout:
    root: Path
    dirs: dict[str, Path]
    subjects: dict[str, SubjectFiles]


def _find_dir(root: Path, key: str) -> Path | None:
    matches = [
        p for p in root.iterdir()
        if p.is_dir() and _DIR_PATTERNS[key].match(p.name.lower().replace("-", "_"))
    ]
    if len(matches) > 1:
        raise ReleaseError(f"{root}: several folders look like the {key} folder: "
                           f"{sorted(p.name for p in matches)}")
    return matches[0] if matches else None


def discover(root: Path | str) -> ReleaseLayout:
    """Map the release under ``root``: subjects are those with labels, a video or landmarks."""
    root = Path(root)
    if not root.is_dir():
        raise ReleaseError(f"DISFA root {root} does not exist or is not a folder")
    dirs = {key: d for key in _DIR_PATTERNS if (d := _find_dir(root, key)) is not None}
    if "labels" not in dirs and "left" not in dirs and "right" not in dirs:
        raise ReleaseError(
            f"{root}: no ActionUnit_Labels, Videos_LeftCamera or Video_RightCamera folder; "
            "is this the DISFA release root?")
    subjects: dict[str, SubjectFiles] = {}

    def entry(name: str) -> SubjectFiles:
        name = name.upper()
        return subjects.setdefault(name, SubjectFiles(subject=name, root=root))

    if "labels" in dirs:
        for sdir in sorted(dirs["labels"].iterdir()):
            if sdir.is_dir() and _SUBJECT_RE.match(sdir.name):
                files = entry(sdir.name).label_files
                for f in sdir.iterdir():
                    m = _LABEL_RE.match(f.name)
                    if m and m.group(1).upper() == sdir.name.upper():
                        files[int(m.group(2))] = f
    for camera in CAMERAS:
        if camera not in dirs:
            continue
        for f in sorted(dirs[camera].iterdir()):
            m = _VIDEO_RE.match(f.name)
            if m and m.group(1).lower() == camera:
                sf = entry(m.group(2))
                if camera in sf.videos:
                    raise ReleaseError(f"{sf.subject}: two {camera}-camera videos: "
                                       f"{sf.videos[camera].name} and {f.name}")
                sf.videos[camera] = f
    if "landmarks" in dirs:
        for sdir in sorted(dirs["landmarks"].iterdir()):
            if sdir.is_dir() and _SUBJECT_RE.match(sdir.name):
                entry(sdir.name).landmark_dir = _landmark_folder(sdir, root)
    return ReleaseLayout(root=root, dirs=dirs, subjects=dict(sorted(subjects.items())))


def _landmark_folder(subject_dir: Path, root: Path) -> Path:
    """The one folder under ``subject_dir`` holding the .mat files (its name varies)."""
    candidates = [p for p in subject_dir.iterdir() if p.is_dir()]
    with_mats = [p for p in candidates if any(p.glob("*.mat"))]
    if len(with_mats) == 1:
        return with_mats[0]
    if not with_mats and any(subject_dir.glob("*.mat")):
        return subject_dir  # .mat files directly in the subject folder
    if len(with_mats) > 1:
        raise ReleaseError(f"{subject_dir.relative_to(root)}: several landmark subfolders "
                           f"{sorted(p.name for p in with_mats)}; expected one")
    if len(candidates) == 1:
        return candidates[0]  # empty: reported as missing landmarks later
    return subject_dir


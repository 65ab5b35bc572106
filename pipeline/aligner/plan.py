"""Planning a run: one job per subject and camera, with the bad-frame ranges in use, and the
release root's own error logs that disagree with them."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from ..folder_lock import FolderLock
from ..datasets.disfa import ReleaseError, ReleaseLayout, read_error_log
from ..datasets.disfa.facts import FrameRange, bad_frame_ranges
from ..shards import shard_name
from .config import AlignConfig
from .job import SubjectJob



def load_bad_ranges(cfg: AlignConfig) -> dict[str, list[FrameRange]]:
    """The bad-frame ranges in use: ``--error-log``, else the versioned manifest."""
    return read_error_log(cfg.error_log) if cfg.error_log else bad_frame_ranges()


def plan_jobs(cfg: AlignConfig, layout: ReleaseLayout,
              ranges: dict[str, list[FrameRange]] | None = None,
              lock: FolderLock | None = None) -> list[SubjectJob]:
    """One job per requested subject and camera, with that subject's bad-frame ranges."""
    ranges = load_bad_ranges(cfg) if ranges is None else ranges
    subjects = cfg.subjects if cfg.subjects is not None else list(layout.subjects)
    out = Path(cfg.out)
    # The error log describes the left camera's AAM landmarks only.
    return [SubjectJob(subject=s, camera=camera, files=layout.subjects.get(s),
                       bad_ranges=[] if cfg.uses_dlib(camera) else ranges.get(s, []),
                       shard_path=out / shard_name(s, camera), config=cfg,
                       lock=(str(lock.path), lock.token) if lock is not None else None)
            for s in subjects for camera in cfg.cameras()]


_ROOT_ERROR_LOG_RE = re.compile(r"^error_?log_?sheet.*\.(xls|xlsx|csv)$", re.IGNORECASE)


def root_error_logs_differing(cfg: AlignConfig, root: Path, in_use: dict[str, list[FrameRange]],
                              subjects: Iterable[str]) -> list[dict[str, Any]]:
    """The release root's own ``Error_LOG_Sheet`` files whose ranges for ``subjects`` differ
    from the ones in use (a copy of the release with its own log, aligned with the manifest's)."""
    notes = []
    in_use_here = cfg.error_log and Path(cfg.error_log).resolve()
    for sheet in sorted(p for p in root.iterdir() if _ROOT_ERROR_LOG_RE.match(p.name)):
        if not sheet.is_file() or sheet.resolve() == in_use_here:
            continue
        try:
            theirs = read_error_log(sheet)
        except ReleaseError as err:
            notes.append({"sheet": str(sheet), "unreadable": str(err)})
            continue
        differing = [s for s in subjects
                     if {(r.first, r.last) for r in theirs.get(s, [])}
                     != {(r.first, r.last) for r in in_use.get(s, [])}]
        if differing:
            notes.append({"sheet": str(sheet), "subjects_differing": differing})
    return notes

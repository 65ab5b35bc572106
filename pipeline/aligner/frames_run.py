"""``pipeline.align --dataset bp4d|disfa+``: plan one job per subject from the dataset's
adapter, run them (joblib), write ``align_summary.json``.

The same guarantees as DISFA's path: one writer per output folder (a lock), atomic shards, a
failed subject does not stop the others, a rerun skips current shards, ``--force`` redoes them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..cli import check_out_dir, remove_stale_temp_files
from ..datasets.adapters import get_adapter
from ..datasets.base import SequenceRef
from ..datasets.disfa import ReleaseError
from ..folder_lock import FolderLock
from ..shards import shard_name
from .config import AlignConfig
from .frames_job import CAMERA, FramesJob, align_frames_subject
from .parallel import run_jobs
from .summary import write_summary


def frames_detector(cfg: AlignConfig) -> Any:
    """dlib's 68-point tracker: the chin of the nose/chin rule, and the points of frames the
    release has no landmarks for."""
    why = (f"--dataset {cfg.dataset}: the 68-point detector (dlib) gives the chin of "
           "--alignment nose-chin and the points of frames without release landmarks")
    try:
        import dlib  # noqa: F401  (fail here, with a clear message, not at the first frame)

        from ..face_landmarks import FaceLandmarker, FaceTracker
    except ImportError as err:
        raise ReleaseError(f"{why}, but dlib cannot be imported ({err}); install dlib-bin, "
                           "or use --alignment jaa") from err
    try:
        landmarker = FaceLandmarker(cfg.predictor, max_detect_width=cfg.max_detect_width)
    except FileNotFoundError as err:
        raise ReleaseError(f"{why}, but it is unavailable: {err}") from err
    return FaceTracker(landmarker, detect_every=cfg.detect_every)


def align_one(job: FramesJob) -> dict[str, Any]:
    """One subject with dlib as its detector; module level so that joblib can send it."""
    return align_frames_subject(job, frames_detector)


def drop_frames(adapter: Any, name: str | None) -> dict[tuple[str, str], set[int]]:
    """``--drop-list NAME``: ``{(subject, sequence): frame numbers}`` from the adapter."""
    if name is None:
        return {}
    offered = tuple(getattr(adapter, "drop_lists", ()))
    if name not in offered:
        raise ReleaseError(f"--drop-list {name}: {adapter.info.title} offers "
                           f"{', '.join(offered) or 'none'}")
    return {(str(s), str(q)): {int(f) for f in frames}
            for (s, q), frames in adapter.dropped_frames(name).items()}


def plan_frames_jobs(cfg: AlignConfig, adapter: Any, lock: FolderLock | None = None
                     ) -> list[FramesJob]:
    """One job per requested subject, with its sequences (sorted) and drop-list frames."""
    root = Path(cfg.disfa_root)
    by_subject: dict[str, list[SequenceRef]] = {}
    for ref in adapter.sequences(root):
        by_subject.setdefault(ref.subject, []).append(ref)
    info = adapter.info
    odd = [s for s in by_subject if not info.is_subject(s)]
    if odd:  # subject names become file names
        raise ReleaseError(f"{root}: the adapter found subjects {odd} that are not "
                           f"{info.title} subject names ({info.subject_pattern.pattern})")
    drop = drop_frames(adapter, cfg.drop_list)
    subjects = cfg.subjects if cfg.subjects is not None else sorted(by_subject)
    out = Path(cfg.out)
    return [FramesJob(subject=s, adapter=adapter, root=root,
                      sequences=sorted(by_subject.get(s, []), key=lambda r: r.name),
                      shard_path=out / shard_name(s, CAMERA), config=cfg,
                      drop={q: frames for (subj, q), frames in drop.items() if subj == s},
                      lock=(str(lock.path), lock.token) if lock is not None else None)
            for s in subjects]


def run_frames_align(cfg: AlignConfig) -> dict[str, Any]:
    """Align an image-folder dataset; returns (and writes) the summary. Raises ReleaseError
    only for what stops every subject (no adapter, no release, an unknown drop list)."""
    from tqdm import tqdm

    if cfg.backend != "joblib":
        raise ReleaseError(f"--backend {cfg.backend}: --dataset {cfg.dataset} runs on joblib")
    root = Path(cfg.disfa_root)
    if not root.is_dir():
        raise ReleaseError(f"--root {root}: no such folder")
    adapter = get_adapter(cfg.dataset)
    out = check_out_dir(cfg.out)
    with FolderLock(out) as lock:  # one writer per folder; a killed run's lock is taken over
        jobs = plan_frames_jobs(cfg, adapter, lock)
        if not jobs:
            raise ReleaseError(f"{root}: no {adapter.info.title} subjects found")
        remove_stale_temp_files(out)
        rows: list[dict[str, Any]] = []
        with tqdm(total=len(jobs), desc="align", unit="subject", disable=None) as bar:
            for row in run_jobs(align_one, jobs, cfg.jobs):
                rows.append(row)
                bar.set_postfix_str(f"{row['subject']} {row['status']}")
                bar.update(1)
        rows.sort(key=lambda r: r["subject"])
        return write_summary(cfg, rows, {"in_use": None, "root_sheets": [],
                                         "drop_list": cfg.drop_list})

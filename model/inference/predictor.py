"""The predictor behind ``python -m model.predict``: frames -> a table of per-face AU outputs.

Per frame: dlib finds the faces and their 68 landmarks (``pipeline.face_landmarks``); the
tracker (``model.inference.tracking``) keeps the best face or every face with a stable id; each
face is prepared exactly as the checkpoint's training frames were (:class:`TrainingPreprocess`:
``pipeline.alignment.align_face`` with the size and targets stored in the checkpoint, the
shards' JPEG round trip, the trainer's resize), its head pose and fit confidence are estimated
(``model.inference.pose``) and the network (PyTorch or ONNX, ``model.inference.backends``)
classifies the crops in batches.

Work is split over two threads so both cores are busy: a reader thread decodes frames, finds
the faces and aligns them while the main thread runs the network on the previous batch.

The result is a pandas table with the CSV's columns (``model.inference.output``), one row per
frame per tracked face and exactly one row (``success = 0``) for a frame without any face.
"""
from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from pipeline.alignment import AlignmentError
from pipeline.face_landmarks import DEFAULT_MIN_SCORE, FaceLandmarker
from pipeline.image_limits import DEFAULT_MAX_PIXELS

from ..engine.checkpoint import CheckpointError
from ..engine.validation import check_task_options
from ..evaluation.tasks import reports_occurrence, task_of, task_record
from .backends import intensity_au_ids, load_backend
from .card_notice import notice_of
from .csv_format import DEFAULT_FORMAT, FORMATS, au_name, table_columns
from .pose import estimate_pose
from .face_search import DEFAULT_MIN_FACE, search_scale, still_landmarker
from .postprocess import postprocess
from .preprocess import TrainingPreprocess
from .tracking import DEFAULT_MAX_GAP, BestFaceTracker, MultiFaceTracker, TrackedFace
from .video_io import Frame

log = logging.getLogger(__name__)

#: Decision threshold on the sigmoid when the checkpoint does not record one (the field's rule).
DEFAULT_DECISION_THRESHOLD = 0.5


@dataclass
class PredictConfig:
    """Everything one prediction run depends on; recorded in ``predict_summary.json``."""

    checkpoint: Path
    out: Path
    videos: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    images_name: str | None = None
    glob: str | None = None
    predictor: Path | None = None
    backend: str = "torch"
    device: str = "cpu"
    batch_size: int = 16
    threads: int | None = None
    jobs: int = 1
    faces: str = "best"
    max_gap: int = DEFAULT_MAX_GAP
    detect_every: int = 5
    detect_width: int | None = 640
    upsample: int = 0
    min_face: int = DEFAULT_MIN_FACE
    min_score: float = DEFAULT_MIN_SCORE
    min_confidence: float = 0.0
    decision_threshold: float | None = None
    calibrate: bool = False
    smooth: int = 0
    fps: float | None = None
    plot: bool = False
    overlay: bool = False
    landmarks: bool = False
    csv_format: str = DEFAULT_FORMAT
    skip_existing: bool = True
    keep_changed: bool = False   # --skip-existing: a changed input's finished CSV is kept too
    progress: bool = True
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        self.out = Path(self.out)
        self.videos = [Path(p) for p in self.videos]
        self.images = [Path(p) for p in self.images]
        self.predictor = Path(self.predictor) if self.predictor else None
        if not self.videos and not self.images:
            raise ValueError("nothing to do: give --video FILE|DIR|LIST... and/or "
                             "--images DIR|FILE...")
        checks = [(self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.detect_every >= 1, "detect_every must be >= 1"),
                  (self.jobs >= 1, "jobs must be >= 1"),
                  (self.max_gap >= 0, "max_gap must be >= 0"),
                  (self.faces in ("best", "all"), "faces must be 'best' or 'all'"),
                  (self.backend in ("torch", "onnx"), "backend must be 'torch' or 'onnx'"),
                  (self.smooth == 0 or (self.smooth > 1 and self.smooth % 2 == 1),
                   "smooth must be 0 (off) or an odd window of 3 or more frames"),
                  (0 <= self.min_confidence <= 1, "min_confidence must be in [0, 1]"),
                  (self.fps is None or self.fps > 0, "fps must be positive"),
                  (self.max_pixels >= 1, "max_pixels must be >= 1"),
                  (self.csv_format in FORMATS, f"format must be one of {', '.join(FORMATS)}")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        search_scale(self.min_face)  # a ValueError for a size dlib cannot be asked for
        if self.detect_width is not None and self.detect_width <= 0:
            self.detect_width = None  # 0 on the command line: detect on the full frame
        if self.decision_threshold is not None and not 0 < self.decision_threshold < 1:
            raise ValueError(f"decision_threshold must be in (0, 1), got {self.decision_threshold}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class FaceRow:
    """One face in one frame on its way to the table."""

    frame: Frame
    face_id: int
    found: TrackedFace | None
    aligned: np.ndarray | None = None
    pose: tuple[float, float, float] = (float("nan"),) * 3
    translation: tuple[float, float, float] = (float("nan"),) * 3
    confidence: float = 0.0
    probabilities: np.ndarray | None = None
    intensities: np.ndarray | None = None


@dataclass
class StageTimes:
    """Seconds spent per stage (reader-thread stages overlap with the network's)."""

    decode: float = 0.0
    face: float = 0.0      # detection or local search, plus the 68 landmarks
    align: float = 0.0     # alignment, JPEG round trip, resize, head pose
    network: float = 0.0
    output: float = 0.0

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {k: round(1000 * v / max(frames, 1), 2) for k, v in asdict(self).items()}


def checkpoint_warnings(meta: dict[str, Any], source: Path) -> list[str]:
    """Reasons to distrust a checkpoint's outputs (not a finished, selected model)."""
    problems = []
    if meta.get("epoch") in (None, 0):
        problems.append(f"{source}: epoch {meta.get('epoch')} - an untrained model")
    if meta.get("selected") is False:
        problems.append(f"{source}: not a selected model (no selection metrics; e.g. last.pt "
                        f"rather than best.pt)")
    return problems


def decision_thresholds(explicit: float | None, meta: dict[str, Any],
                        checkpoint: Path | str) -> float | np.ndarray:
    """``--decision-threshold`` if given, else the per-AU thresholds tuned at training
    (``--tune-threshold``, stored in the checkpoint), else 0.5."""
    if explicit is not None:
        return float(explicit)
    tuned = meta.get("decision_thresholds")
    if tuned:
        if [int(a) for a in tuned["au_ids"]] != [int(a) for a in meta["au_ids"]]:
            raise CheckpointError(f"{checkpoint}: tuned thresholds are for AUs {tuned['au_ids']}, the "
                             f"model predicts {meta['au_ids']}")
        return np.asarray(tuned["values"], dtype=np.float32)
    return float(meta.get("decision_threshold", DEFAULT_DECISION_THRESHOLD))


class AUPredictor:
    """A loaded network plus the face finder, ready to turn frame sequences into tables."""

    def __init__(self, cfg: PredictConfig) -> None:
        self.cfg = cfg
        self.backend = load_backend(cfg.checkpoint, cfg.backend, cfg.device, cfg.threads)
        self.meta = self.backend.meta
        self.card = notice_of(self.meta)   # its summary logged, a twin model warned of
        self.card.announce(cfg.checkpoint)
        # Occurrence options on a model whose occurrence head never trained: refused, not ignored.
        check_task_options(task_of(self.meta), {"decision_threshold": cfg.decision_threshold,
                                                "calibrate": cfg.calibrate},
                           source=str(cfg.checkpoint))
        for problem in checkpoint_warnings(self.meta, cfg.checkpoint):
            log.warning("%s; its outputs mean little", problem)
        self.au_ids: list[int] = [int(a) for a in self.meta["au_ids"]]
        self.threshold = decision_thresholds(cfg.decision_threshold, self.meta, cfg.checkpoint)
        self.preprocess = TrainingPreprocess.from_meta(self.meta, cfg.checkpoint)
        self.landmarker = FaceLandmarker(predictor_path=cfg.predictor, upsample=cfg.upsample,
                                         max_detect_width=cfg.detect_width, min_score=cfg.min_score)
        self.still_landmarker = still_landmarker(cfg.min_face, cfg.predictor, cfg.min_score)
        # The AUs with an AUxx_r column: known from the backend when it can tell (so a video
        # with no face still gets them); otherwise after the first batch.
        has_intensity = getattr(self.backend, "has_intensity", None)
        self.intensity_aus: list[int] | None = (
            None if has_intensity is None else
            intensity_au_ids(self.meta) if has_intensity else [])
        self.last_tracker: BestFaceTracker | MultiFaceTracker | None = None
        # A --task intensity checkpoint's occurrence head never trained: no AUxx_c/AUxx_p.
        self.task = task_of(self.meta)
        self.has_occurrence = reports_occurrence(self.task)

    def describe(self) -> dict[str, Any]:
        """What the numbers mean, for the sidecar and the summary."""
        meaning = (f"AUxx_c = 1: FACS intensity >= {self.meta.get('threshold')} predicted "
                   "(probability AUxx_p >= decision threshold)" if self.has_occurrence else
                   "no AUxx_c/AUxx_p: the checkpoint's occurrence head was never trained")
        return {"checkpoint": str(self.cfg.checkpoint), "backend": self.backend.name,
                **task_record(self.task), "au_ids": self.au_ids,
                "intensity_aus": self.intensity_aus,
                "label_threshold": self.meta.get("threshold"), "label_meaning": meaning,
                "decision_threshold": np.asarray(self.threshold).tolist(),
                "epoch": self.meta.get("epoch"), "selected": self.meta.get("selected"),
                "faces": self.cfg.faces, "min_score": self.cfg.min_score,
                "min_confidence": self.cfg.min_confidence, "calibrate": self.cfg.calibrate,
                "smooth": self.cfg.smooth, "preprocess": self.preprocess.describe(),
                **self.card.record()}

    def classify(self, rows: Sequence[FaceRow]) -> None:
        probabilities, intensities = self.backend([r.aligned for r in rows])
        self.intensity_aus = ([] if intensities is None else
                              intensity_au_ids(self.meta, intensities.shape[1]))
        for i, row in enumerate(rows):
            row.probabilities = probabilities[i]
            row.intensities = intensities[i] if intensities is not None else None

    def make_tracker(self, detect_every: int,
                     still: bool = False) -> BestFaceTracker | MultiFaceTracker:
        """``still``: unrelated images, each searched whole down to ``--min-face``."""
        finder = self.still_landmarker if still else self.landmarker
        every = 1 if still else detect_every
        if self.cfg.faces == "all":
            return MultiFaceTracker(finder, every, self.cfg.max_gap)
        return BestFaceTracker(finder, every)

    def frame_rows(self, frame: Frame, tracker: Any, times: StageTimes) -> list[FaceRow]:
        """The rows of one frame: each tracked face aligned and posed, or one empty row."""
        t0 = time.perf_counter()
        tracked = tracker.update(frame.image)
        t1 = time.perf_counter()
        rows = []
        for item in tracked:
            row = FaceRow(frame, item.face_id, item if item.face is not None else None)
            if row.found is not None:
                try:
                    row.aligned = self.preprocess(frame.image, item.face.landmarks66)
                    row.pose, row.translation, row.confidence = estimate_pose(
                        item.face.landmarks68, (frame.image.shape[1], frame.image.shape[0]))
                except AlignmentError as err:  # degenerate landmarks: treat as no face
                    log.warning("frame %d: %s; written as no face", frame.index, err)
                    row.found = None
            rows.append(row)
        times.face += t1 - t0
        times.align += time.perf_counter() - t1
        # A frame where nobody is (or is still tracked) keeps its single row.
        return rows or [FaceRow(frame, 0 if self.cfg.faces == "best" else -1, None)]

    def frames_in_thread(self, frames: Iterable[Frame], times: StageTimes,
                         detect_every: int, still: bool = False) -> Iterator[list[FaceRow]]:
        """:meth:`frame_rows` for each frame, computed in a reader thread (bounded queue)."""
        tracker = self.make_tracker(detect_every, still)
        self.last_tracker = tracker

        def produce() -> Iterator[list[FaceRow]]:
            iterator = iter(frames)
            while True:
                t0 = time.perf_counter()
                frame = next(iterator, None)
                times.decode += time.perf_counter() - t0
                if frame is None:
                    return
                yield self.frame_rows(frame, tracker, times)

        yield from _threaded(produce(), 4 * self.cfg.batch_size)

    def run_sequence(self, frames: Iterable[Frame], total: int | None, label: str,
                     on_frame: Callable[[list[FaceRow]], None] | None = None,
                     detect_every: int | None = None,
                     still: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Predict every frame of one input: ``(table, stats)``. ``on_frame`` sees each frame's
        rows after classification (the overlay); ``detect_every`` defaults to the config's;
        ``still``: the frames are unrelated images (see :meth:`make_tracker`)."""
        times = StageTimes()
        rows: list[FaceRow] = []
        batch = _Batcher(self, times, rows, on_frame)
        bar = tqdm(total=total, desc=label, unit="frame", disable=None if self.cfg.progress else True,
                   leave=False, dynamic_ncols=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            for frame_rows in self.frames_in_thread(frames, times,
                                                    detect_every or self.cfg.detect_every, still):
                batch.add(frame_rows, keep_image=on_frame is not None)
                bar.update(1)
            batch.flush()
        finally:
            bar.close()
        t0 = time.perf_counter()
        table = self.to_table(rows)
        times.output += time.perf_counter() - t0
        elapsed = time.perf_counter() - start
        frames_done = int(table["frame"].nunique()) if len(table) else 0
        doubtful = getattr(self.last_tracker, "doubtful_frames", 0)
        if doubtful:
            log.warning("%s: the chosen face was doubtful in %d frame(s) (low detector score or "
                        "a rival face nearly as likely; see face_score)", label, doubtful)
        stats = {"frames": frames_done,
                 "faces_found": int(table.loc[table["face_found"] == 1, "frame"].nunique()),
                 "face_ids": sorted(int(i) for i in table.loc[table["face_found"] == 1,
                                                              "face_id"].unique()),
                 "doubtful_frames": int(doubtful), "seconds": round(elapsed, 3),
                 "processing_fps": round(frames_done / elapsed, 2) if elapsed > 0 else None,
                 "ms_per_frame": times.per_frame_ms(frames_done),
                 "cpu_ms_per_frame": round(1000 * (time.process_time() - cpu_start)
                                           / max(frames_done, 1), 2)}
        return table, stats

    def to_table(self, rows: Sequence[FaceRow]) -> pd.DataFrame:
        """The CSV's columns for ``rows`` (then ``--min-confidence``, calibration, smoothing)."""
        with_file = any(r.frame.name for r in rows)
        intensity_aus = self.intensity_aus or []
        columns = table_columns(self.au_ids, intensity_aus, with_file, self.cfg.landmarks)
        table = pd.DataFrame([_row_values(r, self.au_ids, intensity_aus, self.cfg.landmarks,
                                          with_file) for r in rows], columns=columns)
        for name in columns:
            # float64 throughout: float32 columns (all rows with a face) refuse the float64
            # values calibration writes back (pandas >= 3 raises on such silent upcasts).
            table[name] = table[name].astype("int64" if name in _INT_COLUMNS else
                                             "str" if name == "file" else "float64")
        table.loc[table["confidence"] < self.cfg.min_confidence, "success"] = 0
        table = postprocess(table, self.au_ids, self.threshold, calibrate=self.cfg.calibrate,
                            smooth=self.cfg.smooth)
        if not self.has_occurrence:
            table = table.drop(columns=[f"{au_name(a)}_{s}" for s in "cp" for a in self.au_ids])
        return table


_INT_COLUMNS = ("frame", "face_id", "success", "face_found")


def _row_values(row: FaceRow, au_ids: Sequence[int], intensity_aus: Sequence[int],
                landmarks: bool, with_file: bool) -> dict[str, Any]:
    """One table row as ``{column: value}``; a column left out is empty (NaN)."""
    found = row.found is not None and row.probabilities is not None
    values: dict[str, Any] = {"frame": row.frame.index, "face_id": row.face_id,
                              "timestamp": row.frame.timestamp,
                              "confidence": row.confidence if found else 0.0,
                              "success": int(found), "face_found": int(found)}
    if with_file:
        values["file"] = row.frame.name
    if not found:
        return values
    face = row.found.face
    values.update(zip(["face_score", "face_x", "face_y", "face_w", "face_h"],
                      [face.score, *face.box]))
    values.update(zip(["pose_Tx", "pose_Ty", "pose_Tz"], row.translation))
    values.update(zip(["pose_Rx", "pose_Ry", "pose_Rz"], row.pose))
    values.update({f"{au_name(a)}_p": p for a, p in zip(au_ids, row.probabilities)})
    if row.intensities is not None:  # AUxx_c is filled by postprocess
        values.update({f"{au_name(a)}_r": v for a, v in zip(intensity_aus, row.intensities)})
    if landmarks:
        values.update({f"x_{i}": v for i, v in enumerate(face.landmarks68[:, 0])})
        values.update({f"y_{i}": v for i, v in enumerate(face.landmarks68[:, 1])})
    return values


class _Batcher:
    """Collects frames' rows, runs the network once a batch of faces is waiting."""

    def __init__(self, predictor: AUPredictor, times: StageTimes, rows: list[FaceRow],
                 on_frame: Callable[[list[FaceRow]], None] | None) -> None:
        self.predictor, self.times, self.rows, self.on_frame = predictor, times, rows, on_frame
        self.pending: list[list[FaceRow]] = []
        self.faces = 0

    def add(self, frame_rows: list[FaceRow], keep_image: bool) -> None:
        if not keep_image:  # free the decoded frame: only the overlay needs it
            frame = frame_rows[0].frame
            small = Frame(frame.index, frame.timestamp, np.empty(0, np.uint8), frame.name)
            for row in frame_rows:
                row.frame = small
        self.pending.append(frame_rows)
        self.faces += sum(r.aligned is not None for r in frame_rows)
        batch = self.predictor.cfg.batch_size
        # Flush on a full batch, or when a long face-less stretch piles up rows.
        if self.faces >= batch or len(self.pending) >= 4 * batch:
            self.flush()

    def flush(self) -> None:
        with_face = [r for rows in self.pending for r in rows if r.aligned is not None]
        if with_face:
            t0 = time.perf_counter()
            self.predictor.classify(with_face)
            self.times.network += time.perf_counter() - t0
        t0 = time.perf_counter()
        for frame_rows in self.pending:
            for row in frame_rows:
                row.aligned = None
            if self.on_frame is not None:
                self.on_frame(frame_rows)
            self.rows.extend(frame_rows)
        self.times.output += time.perf_counter() - t0
        self.pending.clear()
        self.faces = 0


def _threaded(items: Iterator[Any], size: int) -> Iterator[Any]:
    """Iterate ``items`` in a background thread, handing them over through a bounded queue;
    an exception in the thread is re-raised here."""
    handoff: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as err:  # hand any failure to the consumer, which re-raises it
            put(err)

    reader = threading.Thread(target=work, name="predict-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=5)


__all__ = ["AUPredictor", "PredictConfig", "TrainingPreprocess", "FaceRow", "au_name"]

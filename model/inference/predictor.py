"""The predictor behind ``python -m model.predict``: checkpoint -> per-frame AU outputs.

Per frame: dlib finds the face and its 68 landmarks (``pipeline.face_landmarks``), they are
mapped to DISFA's 66-point order and the face is prepared exactly as the checkpoint's training
frames were (:class:`TrainingPreprocess`: ``pipeline.alignment.align_face`` with the size and
targets stored in the checkpoint, the shards' JPEG round trip, the trainer's resize), converted by
``model.nets.transforms.to_model_input`` and classified in batches.

Work is split over two threads so both cores are busy: a reader thread decodes frames, finds
the face and aligns it while the main thread runs the network on the previous batch (PyTorch and
OpenCV release the GIL while they compute).

Output per input (``OUT/<input stem>.csv``; images: one CSV per directory, or one for the loose
files given): one row per frame with OpenFace-style columns (see ``model.inference.output``),
optional ``--plot`` timeline PNG and ``--overlay`` video/frames, and ``OUT/predict_summary.json``
recording the configuration, the checkpoint's metadata and per-input results.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import cv2
import numpy as np
import torch
from tqdm import tqdm

from pipeline.alignment import AlignmentConfig, AlignmentError, align_face
from pipeline.face_landmarks import FaceLandmarker, FaceResult, FaceTracker
from pipeline.shards import decode_jpeg, encode_jpeg

from ..engine.checkpoint import CheckpointError, load_for_inference
from .output import PredictionCsv, au_name, draw_overlay, save_timeline_plot
from ..nets.transforms import to_model_input
from .video_io import (
    Frame,
    ImageFrames,
    InputError,
    OverlayVideoWriter,
    VideoFrames,
    list_images,
)

log = logging.getLogger(__name__)

#: Decision threshold on the sigmoid when the checkpoint does not record one (the field's rule).
DEFAULT_DECISION_THRESHOLD = 0.5
SUMMARY_NAME = "predict_summary.json"


@dataclass
class PredictConfig:
    """Everything one prediction run depends on; recorded in ``predict_summary.json``."""

    checkpoint: Path
    out: Path
    videos: list[Path] = field(default_factory=list)
    images: list[Path] = field(default_factory=list)
    images_name: str | None = None
    predictor: Path | None = None
    device: str = "cpu"
    batch_size: int = 16
    threads: int | None = None
    detect_every: int = 5
    detect_width: int | None = 640
    upsample: int = 0
    min_score: float = 0.0
    decision_threshold: float | None = None
    fps: float | None = None
    plot: bool = False
    overlay: bool = False
    landmarks: bool = False
    skip_existing: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.checkpoint = Path(self.checkpoint)
        self.out = Path(self.out)
        self.videos = [Path(p) for p in self.videos]
        self.images = [Path(p) for p in self.images]
        self.predictor = Path(self.predictor) if self.predictor else None
        if not self.videos and not self.images:
            raise ValueError("nothing to do: give --video FILE... and/or --images DIR|FILE...")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.detect_every < 1:
            raise ValueError(f"detect_every must be >= 1, got {self.detect_every}")
        if self.detect_width is not None and self.detect_width <= 0:
            self.detect_width = None  # 0 on the command line: detect on the full frame
        if self.decision_threshold is not None and not 0 < self.decision_threshold < 1:
            raise ValueError(f"decision_threshold must be in (0, 1), got {self.decision_threshold}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    def to_json(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


@dataclass
class FrameRecord:
    """A frame on its way from the reader thread to the CSV."""

    frame: Frame
    face: FaceResult | None
    aligned: np.ndarray | None
    probabilities: np.ndarray | None = None
    decisions: np.ndarray | None = None


@dataclass
class StageTimes:
    """Seconds spent per stage (reader-thread stages overlap with the network's)."""

    decode: float = 0.0
    face: float = 0.0      # detection or local search, plus the 68 landmarks
    align: float = 0.0     # alignment, JPEG round trip, resize
    network: float = 0.0
    output: float = 0.0

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {k: round(1000 * v / max(frames, 1), 2) for k, v in asdict(self).items()}


class AUPredictor:
    """A loaded checkpoint plus the face finder, ready to turn frame sequences into rows."""

    def __init__(self, cfg: PredictConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        self.model, self.meta = load_for_inference(cfg.checkpoint, device=self.device)
        self.au_ids: list[int] = [int(a) for a in self.meta["au_ids"]]
        self.threshold = float(cfg.decision_threshold if cfg.decision_threshold is not None
                               else self.meta.get("decision_threshold", DEFAULT_DECISION_THRESHOLD))
        self.preprocess = TrainingPreprocess.from_meta(self.meta, cfg.checkpoint)
        self.landmarker = FaceLandmarker(predictor_path=cfg.predictor, upsample=cfg.upsample,
                                         max_detect_width=cfg.detect_width, min_score=cfg.min_score)

    @torch.inference_mode()
    def classify(self, aligned: Sequence[np.ndarray]) -> np.ndarray:
        """Sigmoid probabilities ``[B, K]`` for aligned RGB uint8 crops."""
        batch = torch.from_numpy(np.stack(aligned)).to(self.device)
        logits = self.model(to_model_input(batch))
        return torch.sigmoid(logits.float()).cpu().numpy()

    def records(self, frames: Iterable[Frame], times: StageTimes,
                detect_every: int) -> Iterator[FrameRecord]:
        """Face + alignment for each frame, computed in a reader thread (bounded queue)."""
        tracker = FaceTracker(self.landmarker, detect_every=detect_every)
        handoff: queue.Queue = queue.Queue(maxsize=4 * self.cfg.batch_size)
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
                iterator = iter(frames)
                while True:
                    t0 = time.perf_counter()
                    frame = next(iterator, None)
                    t1 = time.perf_counter()
                    times.decode += t1 - t0
                    if frame is None:
                        break
                    face = tracker.update(frame.image)
                    t2 = time.perf_counter()
                    aligned = None
                    if face is not None:
                        try:
                            aligned = self.preprocess(frame.image, face.landmarks66)
                        except AlignmentError as err:  # degenerate landmarks: treat as no face
                            log.warning("frame %d: %s; written as no face", frame.index, err)
                            face = None
                    times.face += t2 - t1
                    times.align += time.perf_counter() - t2
                    if not put(FrameRecord(frame, face, aligned)):
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

    def run_sequence(self, frames: Iterable[Frame], sink: PredictionCsv, total: int | None,
                     label: str, overlay: Any = None, detect_every: int | None = None
                     ) -> dict[str, Any]:
        """Predict every frame of one input into ``sink``; returns counts, timings and the
        per-frame series used by the timeline plot. ``detect_every`` defaults to the config's."""
        times = StageTimes()
        stamps: list[float] = []
        index: list[int] = []
        probs: list[np.ndarray] = []
        found = 0
        pending: list[FrameRecord] = []
        nan_row = np.full(len(self.au_ids), np.nan, dtype=np.float32)
        bar = tqdm(total=total, desc=label, unit="frame", disable=not self.cfg.progress,
                   leave=False, dynamic_ncols=True)

        def flush() -> None:
            nonlocal found
            with_face = [r for r in pending if r.aligned is not None]
            if with_face:
                t0 = time.perf_counter()
                p = self.classify([r.aligned for r in with_face])
                times.network += time.perf_counter() - t0
                for record, row in zip(with_face, p):
                    record.probabilities = row
                    record.decisions = (row >= self.threshold).astype(np.int8)
            t0 = time.perf_counter()
            for record in pending:
                f = record.frame
                sink.write(f.index, f.timestamp, f.name, record.face, record.probabilities,
                           record.decisions)
                if overlay is not None:
                    overlay(record)
                found += record.face is not None
                index.append(f.index)
                stamps.append(f.timestamp)
                probs.append(record.probabilities if record.probabilities is not None else nan_row)
            times.output += time.perf_counter() - t0
            bar.update(len(pending))
            bar.set_postfix(faces=found, refresh=False)
            pending.clear()

        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            faces_waiting = 0
            for record in self.records(frames, times, detect_every or self.cfg.detect_every):
                if overlay is None:
                    record.frame = Frame(record.frame.index, record.frame.timestamp,
                                         np.empty(0, np.uint8), record.frame.name)  # free memory
                pending.append(record)
                faces_waiting += record.aligned is not None
                # Flush on a full batch, or when a long face-less stretch piles up rows.
                if faces_waiting >= self.cfg.batch_size or len(pending) >= 4 * self.cfg.batch_size:
                    flush()
                    faces_waiting = 0
            flush()
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start  # every thread of the process
        frames_done = len(index)
        return {
            "frames": frames_done,
            "faces_found": found,
            "seconds": round(elapsed, 3),
            "frames_per_second": round(frames_done / elapsed, 2) if elapsed > 0 else None,
            "ms_per_frame": times.per_frame_ms(frames_done),
            "cpu_ms_per_frame": round(1000 * cpu / max(frames_done, 1), 2),
            "series": (np.array(index), np.array(stamps, dtype=np.float64),
                       np.stack(probs) if probs else np.zeros((0, len(self.au_ids)))),
        }


@dataclass
class TrainingPreprocess:
    """Prepares a detected face exactly as a training frame reached the network.

    Training frames were aligned by ``pipeline.align`` at the shards' size (``source_size``),
    stored (JPEG at ``jpeg_quality`` by default), decoded and, when the trainer ran at another
    ``image_size``, resized with INTER_AREA (``model.data``). Repeating each step keeps new
    faces in the training distribution, JPEG artefacts included.
    """

    alignment: AlignmentConfig     # at the shards' size, with the shards' targets
    image_size: int                # the network's input size
    jpeg_quality: int | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: Path) -> "TrainingPreprocess":
        """Read size, targets, border and storage from a checkpoint's ``data`` entry."""
        try:
            size = int(meta["image_size"])
            nose = [float(v) for v in meta["nose_target"]]
            chin = [float(v) for v in meta["chin_target"]]
            extra = meta.get("alignment") or {}
            shard_cfg = extra.get("config") or {}
            source_size = int(extra.get("source_image_size") or size)
            scale = source_size / size
            alignment = AlignmentConfig(size=source_size,
                                        nose_target=(nose[0] * scale, nose[1] * scale),
                                        chin_target=(chin[0] * scale, chin[1] * scale),
                                        border=shard_cfg.get("border", "replicate"))
            quality = shard_cfg.get("jpeg_quality") if shard_cfg.get("encoding") == "jpeg" else None
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise CheckpointError(f"{source}: checkpoint lacks a usable alignment description "
                                  f"(image_size, nose_target, chin_target): {err}") from err
        return cls(alignment, size, int(quality) if quality else None)

    def __call__(self, image: np.ndarray, landmarks66: np.ndarray) -> np.ndarray:
        aligned, _, _ = align_face(image, landmarks66, self.alignment)
        if self.jpeg_quality is not None:
            aligned = decode_jpeg(encode_jpeg(aligned, self.jpeg_quality))
        if self.alignment.size != self.image_size:
            aligned = cv2.resize(aligned, (self.image_size, self.image_size),
                                 interpolation=cv2.INTER_AREA)
        return aligned

    def describe(self) -> dict[str, Any]:
        return {"aligned_size": self.alignment.size, "nose_target": self.alignment.nose_target,
                "chin_target": self.alignment.chin_target, "border": self.alignment.border,
                "jpeg_quality": self.jpeg_quality, "network_input_size": self.image_size}


def _unique_stem(stem: str, taken: set[str]) -> str:
    """``stem``, or ``stem_2``, ``stem_3``... if an earlier input already used it."""
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}_{n}"
    taken.add(name)
    return name


@dataclass
class _Job:
    kind: str            # "video" | "images"
    name: str            # output stem
    source: Path         # the video, the directory, or the first loose image
    files: list[Path] = field(default_factory=list)


def plan_jobs(cfg: PredictConfig) -> list[_Job]:
    """One job per video, per image directory, and one for all loose image files."""
    taken: set[str] = set()
    jobs = [_Job("video", _unique_stem(p.stem, taken), p) for p in cfg.videos]
    loose = [p for p in cfg.images if not p.is_dir()]
    for directory in (p for p in cfg.images if p.is_dir()):
        jobs.append(_Job("images", _unique_stem(directory.resolve().name or "images", taken),
                         directory, [directory]))
    if loose:
        stem = cfg.images_name or (loose[0].stem if len(loose) == 1 else "images")
        jobs.append(_Job("images", _unique_stem(stem, taken), loose[0], loose))
    return jobs


def _run_job(predictor: AUPredictor, job: _Job, cfg: PredictConfig) -> dict[str, Any]:
    out = cfg.out
    csv_path = out / f"{job.name}.csv"
    result: dict[str, Any] = {"input": str(job.source), "kind": job.kind, "csv": str(csv_path)}
    if cfg.skip_existing and csv_path.exists():
        log.info("%s: %s exists, skipped (--skip-existing)", job.source, csv_path)
        return {**result, "status": "skipped"}

    if job.kind == "video":
        source = VideoFrames(job.source, default_fps=cfg.fps or 30.0)
        frames: Iterable[Frame] = source
        total = source.declared_frames
        result.update(fps=source.fps, width=source.width, height=source.height)
    else:
        files = list_images(job.files)
        source = ImageFrames(files, fps=cfg.fps)
        frames, total = source, len(files)

    sink: PredictionCsv | None = None
    overlay_writer: OverlayVideoWriter | None = None
    overlay_dir: Path | None = None
    overlay = None
    ok = False
    try:
        sink = PredictionCsv(csv_path, predictor.au_ids, with_file=job.kind == "images",
                             with_landmarks=cfg.landmarks)
        if cfg.overlay:
            if job.kind == "video":
                overlay_writer = OverlayVideoWriter(out / f"{job.name}_overlay.avi", source.fps,
                                                    (source.width, source.height))
            else:
                overlay_dir = out / f"{job.name}_overlay"
                overlay_dir.mkdir(parents=True, exist_ok=True)

            def overlay(record: FrameRecord) -> None:
                picture = draw_overlay(record.frame.image, record.face, record.probabilities,
                                       record.decisions, predictor.au_ids)
                if overlay_writer is not None:
                    overlay_writer.write(picture)
                else:
                    target = overlay_dir / f"{Path(record.frame.name).stem}.jpg"
                    cv2.imwrite(str(target), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))

        # Images are usually unrelated stills: search each one whole, never around the previous
        # image's face (which could also miss a larger face elsewhere).
        stats = predictor.run_sequence(frames, sink, total, job.name, overlay,
                                       detect_every=1 if job.kind == "images" else None)
        if stats["frames"] == 0:
            raise InputError(f"{job.source}: no frame could be read")
        sink.commit()
        ok = True
    finally:
        if isinstance(source, VideoFrames):
            source.close()
        if sink is not None and not ok:
            sink.discard()
        if overlay_writer is not None:
            overlay_writer.close(keep=ok)
    index, stamps, probs = stats.pop("series")
    result.update(status="ok", **stats)
    if overlay_writer is not None:
        result["overlay"] = str(overlay_writer.path)
    elif overlay_dir is not None:
        result["overlay"] = str(overlay_dir)
    if job.kind == "images":
        result["bad_files"] = [{"file": str(p), "error": e} for p, e in source.failures]
        if source.failures:
            result["status"] = "partial"
    if cfg.plot:
        use_time = bool(np.isfinite(stamps).all()) and len(stamps) > 0
        result["plot"] = str(save_timeline_plot(
            out / f"{job.name}_timeline.png", stamps if use_time else index, probs,
            predictor.au_ids, predictor.threshold, "time (s)" if use_time else "frame",
            f"{job.name}: {result['faces_found']}/{result['frames']} frames with a face"))
    return result


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """Predict every input of ``cfg``; one failed input does not stop the others.

    Returns the summary (also written to ``OUT/predict_summary.json``); ``summary["failed"]``
    counts inputs that failed entirely or in part. A checkpoint or predictor problem raises
    (:class:`CheckpointError`, :class:`PredictorNotFoundError`): nothing could run.
    """
    previous_threads = torch.get_num_threads()
    # One core is left to the reader thread (decode, dlib, warp) unless told otherwise.
    torch.set_num_threads(cfg.threads or max(1, (os.cpu_count() or 2) - 1))
    try:
        predictor = AUPredictor(cfg)
        cfg.out.mkdir(parents=True, exist_ok=True)
        results = []
        start = time.perf_counter()
        for job in plan_jobs(cfg):
            try:
                results.append(_run_job(predictor, job, cfg))
            except (InputError, OSError) as err:
                log.error("%s", err)
                results.append({"input": str(job.source), "kind": job.kind, "status": "failed",
                                "error": str(err)})
        elapsed = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    frames = sum(r.get("frames", 0) for r in results)
    summary = {
        "config": cfg.to_json(),
        "checkpoint": {k: v for k, v in predictor.meta.items() if k != "train_config"},
        "decision_threshold": predictor.threshold,
        "preprocess": predictor.preprocess.describe(),
        "au_columns": [au_name(a) for a in predictor.au_ids],
        "inputs": results,
        "frames": frames,
        "faces_found": sum(r.get("faces_found", 0) for r in results),
        "seconds": round(elapsed, 3),
        "frames_per_second": round(frames / elapsed, 2) if elapsed > 0 else None,
        "failed": sum(r["status"] in ("failed", "partial") for r in results),
    }
    path = cfg.out / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(summary, indent=2, default=str))
    os.replace(tmp, path)
    return summary

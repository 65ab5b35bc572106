"""The faces an int8 export is calibrated on (``python -m model.export --int8``).

Activation ranges must come from what the network sees in ``model.predict``, so videos and
image folders go through the predictor itself: dlib's face search, ``TrainingPreprocess``
(alignment at the shards' size, their JPEG round trip, the trainer's resize). Aligned shards
(``--calibration-shards``) already hold such crops. Without either, a small synthetic twin is
made in a temporary folder and its videos are used. Each source returns ``(faces, record)``:
uint8 ``[N, S, S, 3]`` and what they were, for the export's metadata.
"""
from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from pipeline.cli import CommandError

from .video_io import IMAGE_SUFFIXES, ImageFrames, InputError, VideoFrames, list_images

log = logging.getLogger(__name__)

#: Faces calibrated on by default: enough for stable MinMax ranges, seconds of dlib time.
DEFAULT_CALIBRATION_FACES = 200
#: Subjects of the synthetic twin calibrated on when no frames are named.
TWIN_SUBJECTS = 4
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv")


def _open(path: Path) -> tuple[Iterable[Any], int | None, bool]:
    """``(frames, frame count if known, still images?)`` of one ``--calibration`` input;
    an InputError naming it when it is none of those or cannot be read."""
    try:
        if path.is_dir():
            files = list_images([path])   # an InputError for a folder without images
            return ImageFrames(files), len(files), True
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            return ImageFrames([path]), 1, True
        if suffix in VIDEO_SUFFIXES:
            video = VideoFrames(path)   # opened and its first frame decoded: corrupt fails here
            return video, video.declared_frames, False
    except InputError as err:
        raise InputError(f"--calibration {err}") from None
    raise InputError(f"--calibration {path}: not a folder of images, an image or a video "
                     f"({', '.join(VIDEO_SUFFIXES)})")


def check_inputs(inputs: Sequence[Path]) -> None:
    """An InputError naming the first ``--calibration`` input that is missing, unreadable or of
    no kind calibration takes, before the (slow) export starts."""
    for path in inputs:
        frames, _, _ = _open(Path(path))
        close = getattr(frames, "close", None)
        if close is not None:
            close()


def faces_from_inputs(onnx_fp32: Path, inputs: Sequence[Path],
                      limit: int = DEFAULT_CALIBRATION_FACES, predictor: Path | None = None
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Up to ``limit`` aligned faces from videos, image files and image folders, found and
    prepared by ``model.predict``'s own predictor for the export ``onnx_fp32``; spread evenly
    over each input (a frame stride) and over the inputs (an equal share each)."""
    from .predictor import AUPredictor, PredictConfig, StageTimes

    opened = [(Path(p), *_open(Path(p))) for p in inputs]   # all checked before any dlib work
    cfg = PredictConfig(checkpoint=onnx_fp32, out=onnx_fp32.parent, videos=[opened[0][0]],
                        backend="onnx", predictor=predictor, progress=False)
    # The card's notes and the untrained/unselected warnings would name the temporary file;
    # model.predict says them for the export itself.
    quiet = [logging.getLogger(f"model.inference.{name}") for name in ("card_notice", "predictor")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        engine = AUPredictor(cfg)
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)
    share = math.ceil(limit / len(opened))
    faces: list[np.ndarray] = []
    for path, frames, count, still in opened:
        stride = max(1, (count or share) // share)
        found = _faces_of(engine, frames, stride, share, still, StageTimes())
        log.info("calibration: %d face(s) from %s", len(found), path)
        faces += found
    if not faces:
        raise InputError(f"--calibration {', '.join(map(str, inputs))}: no face found in any "
                         "frame; int8 needs frames with a face")
    return np.stack(faces[:limit]), {"source": "frames", "inputs": [str(p) for p in inputs],
                                     "faces": min(len(faces), limit)}


def _faces_of(engine: Any, frames: Iterable[Any], stride: int, share: int, still: bool,
              times: Any) -> list[np.ndarray]:
    kept = (f for i, f in enumerate(frames) if i % stride == 0)
    found: list[np.ndarray] = []
    # every frame is searched whole: a stride breaks the tracker's frame-to-frame search
    for rows in engine.frames_in_thread(kept, times, detect_every=1, still=still):
        found += [r.aligned for r in rows if r.aligned is not None]
        if len(found) >= share:
            break
    return found[:share]


def faces_from_shards(shards: Path, image_size: int, limit: int = DEFAULT_CALIBRATION_FACES
                      ) -> tuple[np.ndarray, dict[str, Any]]:
    """Up to ``limit`` crops from the aligned shards in ``shards`` (a folder or one ``.h5``),
    evenly spread, resized to ``image_size`` as the trainer does when the sizes differ."""
    from pipeline.shards import ShardError, ShardReader

    paths = [shards] if shards.is_file() else sorted(shards.glob("*.h5"))
    if not paths:
        raise CommandError(f"--calibration-shards {shards}: no .h5 shards there")
    faces: list[np.ndarray] = []
    share = math.ceil(limit / len(paths))
    for path in paths:
        try:
            with ShardReader(path) as reader:
                step = max(1, len(reader) // share)
                faces += [reader.image(i) for i in range(0, len(reader), step)][:share]
        except ShardError as err:
            raise CommandError(f"--calibration-shards: {err}") from None
    faces = [f if f.shape[0] == image_size else
             cv2.resize(f, (image_size, image_size), interpolation=cv2.INTER_AREA) for f in faces]
    if not faces:
        raise CommandError(f"--calibration-shards {shards}: the shards hold no frames")
    return np.stack(faces[:limit]), {"source": "shards", "inputs": [str(p) for p in paths],
                                     "faces": min(len(faces), limit)}


def faces_from_twin(onnx_fp32: Path, limit: int = DEFAULT_CALIBRATION_FACES,
                    predictor: Path | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Faces from the raw left videos of a small synthetic twin (four subjects, seed 1: other
    renderings than the demo's seed 0) made in a temporary folder, through the predictor.
    Several subjects, because activation ranges must cover their variety: on the twin,
    calibrating on two subjects darker than the held-out ones cost 5.7 F1 points, on four 0.x."""
    from pipeline.datasets.disfa import discover
    from pipeline.twin import SynthConfig, synthesize

    with tempfile.TemporaryDirectory(prefix="tranet_calib_twin_") as tmp:
        config = SynthConfig(n_subjects=TWIN_SUBJECTS, seed=1, width=320, height=240,
                             frames=max(16, 2 * math.ceil(limit / TWIN_SUBJECTS)),
                             right_camera=False)
        synthesize(Path(tmp), config)
        layout = discover(Path(tmp))
        videos = [files.videos["left"] for files in layout.subjects.values()]
        faces, record = faces_from_inputs(onnx_fp32, videos, limit, predictor)
    record.update(source="twin", inputs=[f"synthetic DISFA twin (pipeline.twin), {TWIN_SUBJECTS} "
                                         f"subjects, seed 1, {config.frames} frames 320x240"])
    return faces, record

"""Synthetic inputs the benchmarks and the tests share: a video with a real face drifting across
a textured background, and a checkpoint around an untrained model (weights do not change speed).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from pipeline.alignment import AlignmentConfig
from pipeline.shards import DEFAULT_JPEG_QUALITY

from ..engine.checkpoint import save_checkpoint
from ..inference.video_io import write_video


def astronaut_head() -> np.ndarray:
    """skimage's astronaut cropped to her head: 280x280 RGB, face box ~88 px.

    The crop matters: on a plain canvas the full picture's flag and suit give dlib a weak false
    detection larger than the face."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[0:280, 90:370])


def make_face_video(path: Path, n_frames: int = 100, size: tuple[int, int] = (640, 360),
                    fps: float = 25.0, face_scale: float = 1.0,
                    face_present: Sequence[bool] | None = None, seed: int = 0) -> Path:
    """Write an MJPG AVI: a textured background with the astronaut's head drifting across it.

    ``face_present[i]`` False leaves frame i without the face (background only), for testing
    face/no-face patterns. ``face_scale`` resizes the 280 px head patch (face box ~88 px at 1).
    """
    width, height = size
    rng = np.random.default_rng(seed)
    # Smooth random texture: an empty frame is unrealistic and too easy for the detector.
    noise = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    background = cv2.GaussianBlur(cv2.resize(noise, (width, height)), (0, 0), 3)
    background = (background // 2 + 60).astype(np.uint8)
    head = astronaut_head()
    if face_scale != 1.0:
        head = cv2.resize(head, None, fx=face_scale, fy=face_scale, interpolation=cv2.INTER_AREA)
    ph, pw = head.shape[:2]
    if ph > height or pw > width:
        raise ValueError(f"face patch {pw}x{ph} does not fit a {width}x{height} video")
    present = list(face_present) if face_present is not None else [True] * n_frames
    if len(present) != n_frames:
        raise ValueError("face_present needs one entry per frame")

    def frames():
        for i in range(n_frames):
            frame = background.copy()
            if present[i]:
                phase = 2 * np.pi * i / max(n_frames, 1)
                x = int((width - pw) * (0.5 + 0.4 * np.sin(phase)))
                y = int((height - ph) * (0.5 + 0.3 * np.sin(2 * phase)))
                frame[y:y + ph, x:x + pw] = head
            yield frame

    return write_video(Path(path), frames(), fps)


def make_untrained_checkpoint(path: Path, preset: str = "small", image_size: int = 224,
                              au_ids: Sequence[int] | None = None, variant: str = "tranet") -> Path:
    """A checkpoint in the documented format around a freshly initialised model.

    The ``data`` entry is what ``model.train`` records for shards made by ``pipeline.align`` with
    its defaults at ``image_size`` (targets in pixels, JPEG storage)."""
    from pipeline.datasets.disfa.facts import DEFAULT_THRESHOLD, EVAL_AUS

    from ..nets.tranet import TRANetConfig, build_model

    align = AlignmentConfig(size=image_size)
    au_ids = tuple(au_ids or EVAL_AUS)
    config = TRANetConfig(variant=variant, preset=preset, au_ids=au_ids, image_size=image_size,
                          center=align.nose_fraction)
    model = build_model(config)
    return save_checkpoint(path, {
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(config),
        "data": {"au_ids": list(au_ids), "threshold": DEFAULT_THRESHOLD, "image_size": image_size,
                 "nose_target": list(align.nose_target), "chin_target": list(align.chin_target),
                 "alignment": {"config": {"size": image_size, "nose_target": align.nose_fraction,
                                          "chin_target": align.chin_fraction,
                                          "border": align.border, "encoding": "jpeg",
                                          "jpeg_quality": DEFAULT_JPEG_QUALITY},
                               "source_image_size": image_size}},
        "train_config": {"note": "untrained, for benchmarks"},
        "epoch": 0,
    })

"""The Python API: load a checkpoint once, predict videos, images or numpy frames.

    from model.inference.api import AUDetector

    detector = AUDetector("runs/fold1/best.pt")            # or "model.onnx", backend="onnx"
    table = detector.predict_video("clip.mp4")             # pandas DataFrame, the CSV's columns
    table = detector.predict_image("photo.jpg")
    table = detector.predict_frame(rgb_uint8_array)        # one frame, HxWx3 RGB

Each returns one row per frame per face with the columns of ``model.predict``'s CSV
(docs/predict.md). Options are :class:`~model.inference.predictor.PredictConfig`'s fields
(``faces="all"``, ``calibrate=True``, ``smooth=5``, ``min_confidence=0.3``...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .predictor import AUPredictor, PredictConfig
from .video_io import Frame, ImageFrames, VideoFrames


class AUDetector:
    """A checkpoint (or ONNX file) and the face finder, loaded once."""

    def __init__(self, checkpoint: Path | str, **options: Any) -> None:
        options = {"progress": False, **options}
        # PredictConfig wants an input and an output; the API hands frames over directly.
        self.config = PredictConfig(checkpoint=Path(checkpoint), out=Path("."),
                                    videos=[Path("-")], **options)
        self.predictor = AUPredictor(self.config)

    @property
    def au_ids(self) -> list[int]:
        return self.predictor.au_ids

    @property
    def meaning(self) -> dict[str, Any]:
        """Thresholds and settings: what ``AUxx_c`` and ``AUxx_p`` mean for this model."""
        return self.predictor.describe()

    def predict_video(self, path: Path | str) -> pd.DataFrame:
        """Every frame of a video file."""
        source = VideoFrames(path, default_fps=self.config.fps or 30.0,
                             max_pixels=self.config.max_pixels)
        try:
            return self.predictor.run_sequence(source, source.declared_frames, str(path))[0]
        finally:
            source.close()

    def predict_image(self, path: Path | str) -> pd.DataFrame:
        """One image file (searched whole, down to ``min_face`` px; with a ``file`` column)."""
        return self.predictor.run_sequence(ImageFrames([Path(path)], self.config.fps,
                                                       self.config.max_pixels), 1,
                                           str(path), still=True)[0]

    def predict_frame(self, rgb: np.ndarray, index: int = 1,
                      timestamp: float = float("nan")) -> pd.DataFrame:
        """One RGB uint8 frame (``HxWx3``) held in memory."""
        frame = Frame(index, timestamp, np.ascontiguousarray(rgb))
        return self.predictor.run_sequence([frame], 1, "frame", detect_every=1)[0]

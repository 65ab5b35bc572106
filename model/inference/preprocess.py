"""How a detected face is prepared for the network: exactly as its training frames were."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.alignment import AlignmentConfig, align_face
from pipeline.shards import decode_jpeg, encode_jpeg

from ..engine.checkpoint import CheckpointError


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

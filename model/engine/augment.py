"""Alignment jitter: a small random similarity transform of an aligned training frame.

Training frames are aligned with the release's AAM landmarks; frames at prediction time are
aligned with dlib's, which land a few percent of the face size away from them (on the twin:
nose and chin ~0.08-0.10 inter-ocular distances, scale +-3 %). A model trained only on perfectly
aligned frames is brittle to that shift. Jittering scale, rotation and position during training
teaches it the tolerance. Off by default: the paper trains with horizontal flips only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


@dataclass(frozen=True)
class AlignmentJitter:
    """Uniform jitter ranges: scale 1 +- ``scale``, rotation +- ``degrees``, shift +- ``shift``
    times the image size in x and y. The transform is about the image centre."""

    scale: float = 0.0
    degrees: float = 0.0
    shift: float = 0.0

    def __post_init__(self) -> None:
        if not (0 <= self.scale < 1 and 0 <= self.degrees <= 45 and 0 <= self.shift < 0.5):
            raise ValueError(f"jitter out of range: scale {self.scale} (0-1), degrees "
                             f"{self.degrees} (0-45), shift {self.shift} (0-0.5)")

    @property
    def enabled(self) -> bool:
        return bool(self.scale or self.degrees or self.shift)

    def matrix(self, size: int, uniforms: Sequence[float]) -> np.ndarray:
        """The 2x3 transform for four uniforms in [0, 1) (scale, angle, x shift, y shift)."""
        u = 2.0 * np.asarray(uniforms, dtype=np.float64) - 1.0  # -> [-1, 1)
        centre = ((size - 1) / 2.0, (size - 1) / 2.0)
        m = cv2.getRotationMatrix2D(centre, self.degrees * u[1], 1.0 + self.scale * u[0])
        m[:, 2] += self.shift * size * u[2:4]
        return m

    def apply(self, image: np.ndarray, uniforms: Sequence[float]) -> np.ndarray:
        """Warp a square uint8 image; the border repeats the edge, as the alignment does."""
        size = image.shape[0]
        return cv2.warpAffine(image, self.matrix(size, uniforms), (size, size),
                              flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)

"""Frame sources (videos, image files) and an overlay video writer for ``model.predict``.

Every failure to read an input becomes an :class:`InputError` that names the file (and the frame
where it applies), so a batch run can report it and go on with the other inputs.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
from pipeline.cli import CommandError
from pipeline.image_limits import DEFAULT_MAX_PIXELS, ImageSizeError, check_image_size
from pipeline.shards import jpeg_is_whole

log = logging.getLogger(__name__)

#: File name endings read in images mode (case-insensitive); other files in a directory are ignored.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


class InputError(CommandError, RuntimeError):
    """An input file is missing, unreadable, or holds no frames."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: ``index`` is 1-based (OpenFace's ``frame``), ``image`` RGB uint8."""

    index: int
    timestamp: float
    image: np.ndarray
    name: str = ""


class VideoFrames:
    """Decode a video file frame by frame (RGB).

    The file is opened and its first frame decoded on construction, so a missing, unreadable
    or empty video fails at once with a clear error. ``fps`` falls back to ``default_fps`` (with a
    warning) when the container does not declare a usable rate.
    """

    def __init__(self, path: Path | str, default_fps: float = 30.0,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(f"{self.path}: no such file")
        if not self.path.is_file():
            raise InputError(f"{self.path}: not a file")
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            raise InputError(f"{self.path}: cannot be opened as a video (unknown format or corrupt)")
        self._check_frame_size(max_pixels)
        ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            raise InputError(f"{self.path}: holds no decodable frames (empty or corrupt video)")
        self._first: np.ndarray | None = first
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(fps) or fps <= 0 or fps > 1000:
            log.warning("%s: no usable frame rate in the file; timestamps assume %.3g fps",
                        self.path, default_fps)
            fps = default_fps
        self.fps = fps
        self.height, self.width = first.shape[:2]
        declared = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.declared_frames = declared if declared > 0 else None

    def _check_frame_size(self, max_pixels: int) -> None:
        # The container's declared size, known before any frame is decoded (and allocated).
        width = int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        height = int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if width * height > max_pixels:
            self._capture.release()
            raise InputError(f"{self.path}: frames of {width} x {height} = {width * height:,} "
                             f"pixels, above the limit of {max_pixels:,} (--max-pixels); "
                             "not decoded")

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        try:
            while True:
                if self._first is not None:
                    bgr, self._first = self._first, None
                else:
                    ok, bgr = self._capture.read()
                    if not ok or bgr is None:
                        break
                index += 1
                yield Frame(index, (index - 1) / self.fps, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        finally:
            self._capture.release()
        if self.declared_frames is not None and index < self.declared_frames:
            # Containers often over-declare by a frame or two; a large gap is a truncated file.
            level = logging.WARNING if self.declared_frames - index > 2 else logging.DEBUG
            log.log(level, "%s: decoded %d of %d declared frames (decoding stopped at frame %d)",
                    self.path, index, self.declared_frames, index + 1)

    def close(self) -> None:
        self._capture.release()


def list_images(paths: Sequence[Path | str]) -> list[Path]:
    """Image files of ``paths``: each directory's images sorted by name, files as given."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError(f"{item}: directory holds no image files "
                                 f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            files += found
        else:
            files.append(item)
    return files


def read_image_rgb(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read one image file as RGB uint8; :class:`InputError` naming the file if it cannot.

    The header's width x height is checked against ``max_pixels`` before decoding (a small
    file can declare a picture of gigabytes)."""
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        check_image_size(data, max_pixels)
    except ImageSizeError as err:
        raise InputError(f"{path}: {err}") from None
    if data[:2] == b"\xff\xd8" and not jpeg_is_whole(data):
        raise InputError(f"{path}: truncated JPEG (no end marker); not scored")
    try:
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:  # OpenCV 5 raises on some corrupt files where 4.x returned None
        raise InputError(f"{path}: not a readable image ({str(err).strip().splitlines()[-1]})")
    if bgr is None:
        raise InputError(f"{path}: not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class ImageFrames:
    """A list of image files read as one sequence; unreadable files are skipped and recorded.

    ``timestamp`` is ``(index - 1) / fps`` when ``fps`` is given (a folder of extracted video
    frames), NaN otherwise. ``failures`` collects ``(path, message)`` of the files skipped.
    """

    def __init__(self, files: Sequence[Path], fps: float | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.files = [Path(f) for f in files]
        self.fps = fps
        self.max_pixels = max_pixels
        self.failures: list[tuple[Path, str]] = []

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        for index, path in enumerate(self.files, start=1):
            try:
                image = read_image_rgb(path, self.max_pixels)
            except InputError as err:
                log.error("%s", err)
                self.failures.append((path, str(err)))
                continue
            stamp = (index - 1) / self.fps if self.fps else float("nan")
            yield Frame(index, stamp, image, name=path.name)


class OverlayVideoWriter:
    """MJPG AVI writer (available in every OpenCV build) that lands atomically at ``path``."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(f".{self.path.stem}.tmp-{os.getpid()}{self.path.suffix}")
        self.size = size
        self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
        if not self._writer.isOpened():
            raise InputError(f"{self.path}: cannot open an MJPG video writer")

    def write(self, rgb: np.ndarray) -> None:
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            rgb = cv2.resize(rgb, self.size)
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self, keep: bool = True) -> None:
        self._writer.release()
        if keep and self._tmp.exists():
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


def write_video(path: Path, frames: Sequence[np.ndarray] | Iterator[np.ndarray], fps: float) -> Path:
    """Write RGB frames to an MJPG AVI (for tests, benchmarks and demos)."""
    writer: OverlayVideoWriter | None = None
    for rgb in frames:
        if writer is None:
            writer = OverlayVideoWriter(Path(path), fps, (rgb.shape[1], rgb.shape[0]))
        writer.write(rgb)
    if writer is None:
        raise ValueError("write_video needs at least one frame")
    writer.close()
    return Path(path)

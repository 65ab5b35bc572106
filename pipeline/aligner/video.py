"""Reading a release video frame by frame, with errors that name the file and the frame, and
the check that the video and its labels are the same length."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..datasets.disfa import ReleaseError

log = logging.getLogger("pipeline.align")  # the command's name: one logger for the whole run


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


class VideoReader:
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


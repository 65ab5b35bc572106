"""The aligned-frame shard format: one HDF5 file per subject and camera.

Schema (other tools read it; keep the names)::

    images        JPEG bytes per frame (vlen uint8) or raw uint8 [N, S, S, 3]; attr ``encoding``
    frame_index   int32  [N]        0-based video frame
    intensity     uint8  [N, R]     FACS intensity 0-5 of the AUs in attr ``intensity_au_ids``
                                    (DISFA: the 12 AUs 1,2,4,5,6,9,12,15,17,20,25,26)
    occurrence    uint8  [N, O]     (schema 2, datasets coded 0/1 such as BP4D) the release's
                                    occurrence codes of the AUs in attr ``occurrence_au_ids``
    labels        uint8  [N, K]     occurrence of the AUs in attr ``au_ids`` by the dataset's
                                    rule (attr ``label_rule``: DISFA intensity >= threshold)
    landmarks     float32 [N, P, 2] landmarks in aligned pixel coordinates (0-based); P = 66
                                    (DISFA) or 49 (BP4D, DISFA+); NaN rows: the frame had none

In every label array 255 (``NOT_CODED``) means "not coded": masked, never read as 0 or 1.
Schema 2 adds the attrs ``dataset`` (see ``pipeline.datasets.registry``; shards without it are
DISFA's), ``intensity_au_ids``, ``occurrence_au_ids``, ``n_landmarks`` and ``label_rule``;
schema-1 shards read as DISFA shards.

File attrs: ``subject``, ``camera``, ``au_ids``, ``threshold``, ``pos_count``,
``neg_pos_ratio`` (n_neg / max(n_pos, 1) per AU of ``au_ids`` in this shard alone: a statistic
of one subject, not the weights training uses, which come from the training subjects of a fold;
shards made before the rename call it ``pos_weight``, and :class:`ShardReader` gives it under
the new name), ``intensity_hist`` ([12, 6] counts), ``image_size``, ``nose_target``,
``chin_target``, ``n_source_frames`` (the frames both the video and the labels have, which
are the frames aligned), ``n_video_frames`` (frames the video decodes), ``n_label_frames``
(lines of the label files), ``dropped`` (JSON: reason -> count), ``pipeline_version``,
``config`` (JSON of the command that made it) and ``complete`` (set last). Optional (shards
made before them lack them; readers say "unknown"): ``data_source`` ("release" or "twin": the
synthetic twin of ``pipeline.synth``) and ``release_root`` (the name of the folder aligned).

A shard is written to a temporary file beside its final name and renamed only once complete,
so a file under the final name is always whole.
"""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Sequence

import cv2
import h5py
import numpy as np

from .datasets.base import intensity_matrix, label_matrix
from .datasets.registry import LEGACY_DATASET, DatasetInfo, dataset_info
from .shard_checks import ShardStructureError, check_structure
from .hdf5_faults import is_disk_full, keep_unclosed  # noqa: F401 (API)
from .shard_labels import binarize, intensity_histogram, label_stats  # noqa: F401 (API)
from .cli import CommandError
from .validation import DATA_FIELDS, ValidationError, check_au_list, check_value

SCHEMA_VERSION = 2
ENCODINGS = ("jpeg", "raw")
DEFAULT_JPEG_QUALITY = 90


class ShardError(CommandError, RuntimeError):
    """A shard file is missing, incomplete or does not follow the schema."""


def encode_jpeg(image: np.ndarray, quality: int = DEFAULT_JPEG_QUALITY, bgr: bool = False
                ) -> np.ndarray:
    """Encode an RGB (or, with ``bgr``, OpenCV-order) uint8 image as JPEG bytes (1-D uint8)."""
    bgr_image = image if bgr else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr_image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ShardError("OpenCV could not encode a frame as JPEG")
    return buf.reshape(-1)


def decode_jpeg(data: np.ndarray) -> np.ndarray:
    """Decode JPEG bytes into an RGB uint8 image (truncated or corrupt data: ShardError)."""
    buf = np.asarray(data, dtype=np.uint8)
    if not jpeg_is_whole(buf.tobytes()):
        raise ShardError("corrupt JPEG frame (truncated: no start or end marker)")
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ShardError("corrupt JPEG frame")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def jpeg_is_whole(data: bytes) -> bool:
    """Whether JPEG bytes start with SOI and hold the EOI marker near their end. OpenCV decodes a
    truncated JPEG without an error, filling the missing part with grey; this catches that.
    (Entropy-coded data never holds FF D9, so a cut file has no EOI in its tail.)"""
    return data[:2] == b"\xff\xd8" and b"\xff\xd9" in data[-1024:]


def verify_images(reader: "ShardReader") -> str | None:
    """Decode every frame of a shard; the first failure's message, or None if all decode."""
    for i in range(len(reader)):
        try:
            reader.image(i)
        except ShardError as err:
            return str(err)
    return None


class ShardWriter:
    """Append aligned frames one at a time; ``commit`` writes the rest and renames atomically.

    Used as a context manager, an exception (or a missing ``commit``) removes the temporary file,
    so no partial shard is ever left under the final name.
    """

    def __init__(
        self,
        path: Path | str,
        image_size: int,
        encoding: str = "jpeg",
        jpeg_quality: int = DEFAULT_JPEG_QUALITY,
        dataset: str = LEGACY_DATASET,
    ) -> None:
        """``dataset`` (``pipeline.datasets.registry``) sets the label columns and the number
        of landmarks the frames carry."""
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {encoding!r}")
        self.info: DatasetInfo = dataset_info(dataset)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp_path = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        self.image_size = int(image_size)
        self.encoding = encoding
        self.jpeg_quality = int(jpeg_quality)
        try:
            self._file = h5py.File(self.tmp_path, "w")
        except OSError as err:
            self.tmp_path.unlink(missing_ok=True)
            if is_disk_full(err):
                raise OSError(errno.ENOSPC, "No space left on device", str(self.path)) from err
            raise
        s = self.image_size
        if encoding == "jpeg":
            self._images = self._file.create_dataset(
                "images", shape=(0,), maxshape=(None,), dtype=h5py.vlen_dtype(np.uint8), chunks=(64,)
            )
            self._images.attrs["jpeg_quality"] = self.jpeg_quality
        else:
            self._images = self._file.create_dataset(
                "images", shape=(0, s, s, 3), maxshape=(None, s, s, 3), dtype=np.uint8,
                chunks=(1, s, s, 3),
            )
        self._images.attrs["encoding"] = encoding
        self._frame_index: list[int] = []
        self._intensity: list[np.ndarray] = []
        self._occurrence: list[np.ndarray] = []
        self._landmarks: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._frame_index)

    def append(
        self, image_rgb: np.ndarray, frame_index: int, intensity: np.ndarray, landmarks: np.ndarray,
        occurrence: np.ndarray | None = None,
    ) -> None:
        """Append one aligned RGB frame with its intensities, occurrence codes (datasets that
        have them) and aligned landmarks."""
        s = self.image_size
        if image_rgb.shape != (s, s, 3) or image_rgb.dtype != np.uint8:
            raise ShardError(f"frame {frame_index}: expected uint8 {s}x{s}x3, got "
                             f"{image_rgb.dtype} {image_rgb.shape}")
        self.append_many(image_rgb[None], [frame_index], np.asarray(intensity)[None],
                         np.asarray(landmarks)[None],
                         occurrence=None if occurrence is None else np.asarray(occurrence)[None])

    def append_many(
        self, images_rgb: np.ndarray, frame_indices: Sequence[int], intensities: np.ndarray,
        landmarks: np.ndarray, bgr: bool = False, occurrence: np.ndarray | None = None,
    ) -> None:
        """Append a block of frames: ``[k, S, S, 3]`` uint8 images and their metadata.

        One HDF5 resize and write per block
        instead of per frame (h5py's per-call overhead is ~0.2-0.5 ms, more than aligning a
        frame). ``bgr=True`` takes OpenCV's channel order (what a decoder gives), which saves
        two colour conversions per JPEG frame; the shard still stores RGB. ``intensities``
        ``[k, len(info.intensity_aus)]``, ``occurrence`` ``[k, len(info.occurrence_aus)]``
        (required when the dataset codes occurrence), ``landmarks`` ``[k, P, 2]``.
        """
        k, s = len(frame_indices), self.image_size
        images = np.asarray(images_rgb)
        if images.shape != (k, s, s, 3) or images.dtype != np.uint8:
            raise ShardError(f"frames {list(frame_indices)[:1]}...: expected uint8 [{k}, {s}, {s}, "
                             f"3], got {images.dtype} {images.shape}")
        if k == 0:
            return
        n = len(self._frame_index)
        self._images.resize(n + k, axis=0)
        if self.encoding == "jpeg":
            encoded = np.empty(k, dtype=object)
            for j in range(k):
                encoded[j] = encode_jpeg(images[j], self.jpeg_quality, bgr=bgr)
            # write_direct keeps the 1-D object array as is; __setitem__ would turn equal-length
            # encodings into a 2-D array and fail to broadcast.
            self._images.write_direct(encoded, np.s_[0:k], np.s_[n : n + k])
        else:
            self._images[n : n + k] = images[..., ::-1] if bgr else images
        self._frame_index.extend(int(f) for f in frame_indices)
        info = self.info
        self._intensity.extend(
            np.asarray(intensities, dtype=np.uint8).reshape(k, len(info.intensity_aus)))
        if info.occurrence_aus:
            if occurrence is None:
                raise ShardError(f"{info.title} frames need their occurrence codes")
            self._occurrence.extend(
                np.asarray(occurrence, dtype=np.uint8).reshape(k, len(info.occurrence_aus)))
        self._landmarks.extend(
            np.asarray(landmarks, dtype=np.float32).reshape(k, info.n_landmarks, 2))

    def commit(
        self,
        *,
        subject: str,
        camera: str,
        threshold: int,
        au_ids: Sequence[int] | None = None,
        nose_target: Sequence[float],
        chin_target: Sequence[float],
        n_source_frames: int,
        n_video_frames: int | None = None,
        n_label_frames: int | None = None,
        dropped: dict[str, int] | None = None,
        config: dict[str, Any] | None = None,
        pipeline_version: str = "",
        origin: dict[str, str] | None = None,
    ) -> Path:
        """Write the per-frame arrays and attrs, then rename the file to its final name.

        ``n_video_frames``/``n_label_frames`` default to ``n_source_frames`` (lengths agree).
        ``origin``: ``{"data_source": ..., "release_root": ...}`` (written as attrs when given).
        ``au_ids`` defaults to the dataset's evaluated AUs."""
        info = self.info
        au_ids = info.eval_aus if au_ids is None else au_ids
        intensity = self._stacked(self._intensity, (len(info.intensity_aus),), np.uint8)
        occurrence = self._stacked(self._occurrence, (len(info.occurrence_aus),), np.uint8)
        landmarks = self._stacked(self._landmarks, (info.n_landmarks, 2), np.float32)
        labels = binarize(intensity, au_ids, threshold, info.name, occurrence)
        f = self._file
        f.create_dataset("frame_index", data=np.asarray(self._frame_index, dtype=np.int32))
        f.create_dataset("intensity", data=intensity)
        if info.occurrence_aus:
            f.create_dataset("occurrence", data=occurrence)
        f.create_dataset("labels", data=labels)
        f.create_dataset("landmarks", data=landmarks)
        self._write_attrs(f.attrs, subject=subject, camera=camera, au_ids=au_ids,
                          threshold=threshold, labels=labels, intensity=intensity,
                          nose_target=nose_target, chin_target=chin_target,
                          frame_counts=(n_source_frames, n_video_frames, n_label_frames),
                          dropped=dropped, config=config, pipeline_version=pipeline_version,
                          origin=origin)
        f.attrs["complete"] = True
        f.close()
        os.replace(self.tmp_path, self.path)
        return self.path

    def _write_attrs(self, attrs, *, subject: str, camera: str, au_ids: Sequence[int],
                     threshold: int, labels: np.ndarray, intensity: np.ndarray,
                     nose_target: Sequence[float], chin_target: Sequence[float],
                     frame_counts: tuple, dropped: dict | None, config: dict | None,
                     pipeline_version: str, origin: dict | None) -> None:
        info = self.info
        n_source_frames, n_video_frames, n_label_frames = frame_counts
        pos, neg_pos_ratio = label_stats(labels)
        attrs["schema_version"] = SCHEMA_VERSION
        attrs["dataset"] = info.name
        attrs["subject"] = subject
        attrs["camera"] = camera
        attrs["au_ids"] = np.asarray(au_ids, dtype=np.int32)
        attrs["all_au_ids"] = np.asarray(info.au_ids, dtype=np.int32)
        attrs["intensity_au_ids"] = np.asarray(info.intensity_aus, dtype=np.int32)
        attrs["occurrence_au_ids"] = np.asarray(info.occurrence_aus, dtype=np.int32)
        attrs["n_landmarks"] = int(info.n_landmarks)
        attrs["label_rule"] = info.label_rule
        attrs["threshold"] = int(threshold)
        attrs["pos_count"] = pos
        attrs["neg_pos_ratio"] = neg_pos_ratio
        attrs["intensity_hist"] = intensity_histogram(intensity)
        attrs["image_size"] = self.image_size
        attrs["nose_target"] = np.asarray(nose_target, dtype=np.float64)
        attrs["chin_target"] = np.asarray(chin_target, dtype=np.float64)
        attrs["n_source_frames"] = int(n_source_frames)
        attrs["n_video_frames"] = int(n_source_frames if n_video_frames is None
                                      else n_video_frames)
        attrs["n_label_frames"] = int(n_source_frames if n_label_frames is None
                                      else n_label_frames)
        attrs["dropped"] = json.dumps(dropped or {}, sort_keys=True)
        attrs["config"] = json.dumps(config or {}, sort_keys=True, default=str)
        attrs["pipeline_version"] = pipeline_version
        for key, value in (origin or {}).items():
            attrs[key] = str(value)

    def _stacked(self, rows: list[np.ndarray], tail: tuple[int, ...], dtype) -> np.ndarray:
        return np.stack(rows) if rows else np.zeros((0, *tail), dtype)

    def abort(self) -> None:
        """Close and delete the temporary file."""
        try:
            self._file.close()
        finally:
            self.tmp_path.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.tmp_path.exists():
            return
        if exc is not None and is_disk_full(exc):
            keep_unclosed(self)  # HDF5 crashes when it frees a handle whose flush failed
            self.tmp_path.unlink(missing_ok=True)
            raise OSError(errno.ENOSPC, "No space left on device", str(self.path)) from exc
        self.abort()


class ShardReader:
    """Read one shard. Per-frame metadata is loaded at once (small); images decode on demand.

    The HDF5 handle is opened lazily and re-opened in a forked process, so one reader object
    can be handed to several DataLoader workers.
    """

    def __init__(self, path: Path | str, max_frames: int | None = None) -> None:
        """``max_frames``: refuse, before reading, a shard declaring more frames (e.g. more than
        a folds manifest recorded for its subject)."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"{self.path}: no such shard")
        self._file: h5py.File | None = None
        self._dataset: h5py.Dataset | None = None
        self._pid = -1
        try:
            with h5py.File(self.path, "r") as f:
                self.attrs = _read_attrs(f)
                if not self.attrs.get("complete", False):
                    raise ShardError(f"{self.path}: shard is incomplete (no 'complete' attr)")
                _check_structure(f, self.path, max_frames)
                self.frame_index = f["frame_index"][()]
                self.intensity = f["intensity"][()]
                self.occurrence = f["occurrence"][()] if "occurrence" in f else None
                self.labels = f["labels"][()]
                self.landmarks = f["landmarks"][()]
                self.encoding = str(f["images"].attrs.get("encoding", "raw"))
        except OSError as err:
            raise ShardError(f"{self.path}: not a readable HDF5 shard ({err})") from err
        self._check_attr_values()
        self.info = self._dataset_info()
        self.dataset = self.info.name
        self.au_ids = tuple(int(a) for a in self.attrs["au_ids"])
        self.image_size = int(self.attrs["image_size"])
        self.subject = str(self.attrs["subject"])
        if not self.info.is_subject(self.subject):
            raise ShardError(f"{self.path}: subject {self.subject!r} is not a subject name "
                             f"of {self.info.title} ({self.info.subject_pattern.pattern})")
        self.camera = str(self.attrs["camera"])
        self._check_label_columns()

    def _dataset_info(self) -> DatasetInfo:
        try:
            return dataset_info(str(self.attrs.get("dataset", LEGACY_DATASET)))
        except ValueError as err:
            raise ShardError(f"{self.path}: {err}") from None

    def _check_label_columns(self) -> None:
        """The label arrays have the columns the shard's dataset says (a schema-2 shard could
        claim any dataset)."""
        info = self.info
        wants = {"intensity": len(info.intensity_aus), "landmarks": info.n_landmarks}
        have = {"intensity": self.intensity.shape[1], "landmarks": self.landmarks.shape[1]}
        if info.occurrence_aus:
            if self.occurrence is None:
                raise ShardError(f"{self.path}: a {info.title} shard needs dataset 'occurrence'")
            wants["occurrence"] = len(info.occurrence_aus)
            have["occurrence"] = self.occurrence.shape[1]
        for name, want in wants.items():
            if have[name] != want:
                raise ShardError(f"{self.path}: dataset '{name}' has {have[name]} columns; a "
                                 f"{info.title} shard has {want}")
        missing = [a for a in self.au_ids if info.label_source(a) == "none"]
        if missing:
            raise ShardError(f"{self.path}: au_ids {missing} are not coded in {info.title}")

    def label_matrix(self, au_ids: Sequence[int], threshold: int) -> np.ndarray:
        """Occurrence ``[N, len(au_ids)]`` float32 by this dataset's rule (1/0), NaN where the
        frame is not coded for that AU or the dataset does not code the AU at all."""
        return label_matrix(self.info, self.intensity, self.occurrence, au_ids, threshold)

    def intensity_matrix(self, au_ids: Sequence[int]) -> np.ndarray:
        """Intensity ``[N, len(au_ids)]`` float32 0-5, NaN where not coded / not in the dataset."""
        return intensity_matrix(self.info, self.intensity, au_ids)

    def _check_attr_values(self) -> None:
        """The attrs training and inference size things by: the one validation's data fields
        (an image_size of 100000 would be a 30 GB frame), a ShardError naming file and field."""
        try:
            for name in ("image_size", "threshold"):
                if name not in self.attrs:
                    raise ShardError(f"{self.path}: attribute '{name}' is missing")
                check_value(name, self.attrs[name], DATA_FIELDS[name], str(self.path))
            check_au_list("au_ids", self.attrs.get("au_ids"), str(self.path))
        except ValidationError as err:
            raise ShardError(str(err)) from err

    def __len__(self) -> int:
        return len(self.frame_index)

    def _images(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            # Kept: looking the dataset up by name costs ~40 us, a third of a frame's decode.
            self._dataset = self._file["images"]
        return self._dataset

    def image(self, i: int) -> np.ndarray:
        """Frame ``i`` as uint8 RGB ``[S, S, 3]``."""
        data = self._images()[i]
        if self.encoding == "jpeg":
            try:
                return decode_jpeg(data)
            except ShardError as err:
                raise ShardError(f"{self.path}, frame {i}: {err}") from err
        return np.asarray(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._dataset = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_file"] = None  # h5py handles do not pickle; reopen in the worker
        state["_dataset"] = None
        state["_pid"] = -1
        return state

    def __enter__(self) -> "ShardReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_structure(f: h5py.File, path: Path, max_frames: int | None) -> None:
    """:func:`pipeline.shard_checks.check_structure` as a ShardError."""
    try:
        check_structure(f, path, max_frames)
    except ShardStructureError as err:
        raise ShardError(str(err)) from None


def _read_attrs(f: h5py.File) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for key, value in f.attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if key in ("dropped", "config") and isinstance(value, str):
            value = json.loads(value)
        attrs[key] = value
    if "neg_pos_ratio" not in attrs and "pos_weight" in attrs:  # shards before the rename
        attrs["neg_pos_ratio"] = attrs.pop("pos_weight")
    return attrs


def is_complete_shard(path: Path | str) -> bool:
    """True if ``path`` opens as a complete, consistent shard (used to skip work on reruns)."""
    try:
        ShardReader(path).close()
    except ShardError:
        return False
    return True


def shard_name(subject: str, camera: str) -> str:
    return f"{subject}_{camera}.h5"

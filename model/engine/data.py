"""Training and evaluation data: frames streamed from the aligned shards of a fold's subjects.

Only per-frame labels (a few bytes a frame) are held in memory; images are decoded from the
HDF5 shards on demand, in whichever DataLoader worker asks for them (``ShardReader`` reopens
its file per process).

Labels are re-derived from the shards' raw codes by their dataset's rule
(``ShardReader.label_matrix``: DISFA intensity >= the requested threshold, so ``--threshold 2``,
the peers' protocol, works on shards written at the default 3; BP4D's 0/1 occurrence codes).
A label the release did not code is NaN: masked in the loss, the per-AU weights and the metrics,
never read as 0 or 1. A fold reads the shards of one dataset (the manifest's ``dataset``, DISFA
when it has none); shards of several datasets in one run are refused unless ``mix_datasets``.

Horizontal flip: the alignment puts the hard-mask centre (the nose midpoint) on the vertical
midline of the aligned image, so a mirrored frame has the same centre and the same
upper/middle/lower regions; the AU labels of DISFA are not lateralised, so nothing else
changes with the flip. ``check_flip_symmetry`` refuses shards whose centre is off the midline
rather than silently training with a misplaced mask.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from pipeline.datasets.disfa.facts import ALL_AUS, au_columns
from pipeline.datasets.base import NOT_CODED
from pipeline.datasets.registry import LEGACY_DATASET, dataset_info, is_known_subject
from pipeline.shards import ShardError, ShardReader, shard_name

from .augment import AlignmentJitter
from pipeline.cli import CommandError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


class DataError(CommandError, ValueError):
    """The shards, the folds manifest or the requested fold cannot be used as asked."""


@dataclass(frozen=True)
class FoldSpec:
    """What one fold of a folds manifest says about the data."""

    manifest: Path
    fold: int
    subjects: dict[str, list[str]]  # split -> subjects
    au_ids: tuple[int, ...]
    threshold: int
    image_size: int | None  # None: the shards' (a shipped manifest names none)
    au_weights: tuple[float, ...] | None
    raw: dict[str, Any]
    dataset: str = LEGACY_DATASET  # the manifest's "dataset" (manifests without one: DISFA)
    # where a fold without test subjects is tested (a shipped manifest's other dataset)
    test_manifest: str | None = None


def load_manifest(path: Path | str) -> dict[str, Any]:
    """Read a folds.json with ``pipeline.build_folds.load_folds`` (the one reader of the format)
    and check the extra keys training relies on; every problem is a DataError naming the file."""
    from pipeline.build_folds import FoldError, load_folds

    path = Path(path)
    try:
        manifest = load_folds(path)
    except FoldError as err:
        raise DataError(str(err)) from err
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable folds manifest ({err})") from err
    if not isinstance(manifest["folds"], list) or not manifest["folds"]:
        raise DataError(f"{path}: folds manifest lists no folds")
    return manifest


def fold_spec(manifest_path: Path | str, fold: int) -> FoldSpec:
    """The subjects and label settings of fold ``fold`` (numbered from 1)."""
    manifest_path = Path(manifest_path)
    manifest = load_manifest(manifest_path)
    entries = [f for f in manifest["folds"] if int(f.get("fold", -1)) == int(fold)]
    if not entries:
        known = [f.get("fold") for f in manifest["folds"]]
        raise DataError(f"{manifest_path}: no fold {fold} (folds: {known})")
    entry = entries[0]
    subjects = {split: [str(s) for s in entry.get(split, []) or []] for split in SPLITS}
    dataset = manifest_dataset(manifest, manifest_path)
    info = dataset_info(dataset)
    unknown = [a for a in manifest["au_ids"] if int(a) not in info.au_ids]
    if unknown:
        raise DataError(f"{manifest_path}: AUs {unknown} are not {info.title} AUs "
                        f"({info.title} codes {list(info.au_ids)})")
    weights = entry.get("au_weights") or (entry.get("sampler") or {}).get("au_weights")
    return FoldSpec(
        manifest=manifest_path, fold=int(fold), subjects=subjects,
        au_ids=tuple(int(a) for a in manifest["au_ids"]), threshold=int(manifest["threshold"]),
        image_size=None if manifest["image_size"] is None else int(manifest["image_size"]),
        au_weights=tuple(float(w) for w in weights) if weights else None, raw=entry,
        dataset=dataset, test_manifest=manifest.get("test_manifest") or None,
    )


def manifest_dataset(manifest: Mapping[str, Any], path: Path) -> str:
    """The dataset a folds manifest is of (its ``dataset`` key; DISFA without one)."""
    name = manifest.get("dataset", LEGACY_DATASET)
    try:
        return dataset_info(name).name
    except ValueError as err:
        raise DataError(f"{path}: {err}") from None


def check_frame_counts(spec: FoldSpec, readers: Sequence[ShardReader], camera: str) -> None:
    """A DataError if a shard holds a different number of frames than when the folds were built
    (realigned since): the fold's statistics and AU weights would silently be wrong."""
    expected = spec.raw.get("frames_per_subject") or {}
    changed = [f"{r.path.name} ({expected[r.subject]} -> {len(r)} frames)" for r in readers
               if r.camera == camera and r.subject in expected
               and int(expected[r.subject]) != len(r)]
    if changed:
        raise DataError(f"{spec.manifest}: shards changed since the folds were built: "
                        f"{', '.join(changed)}; rebuild the folds (pipeline.build_folds)")


def training_subjects(spec: FoldSpec, select_on: str) -> FoldSpec:
    """The fold as a run uses it. Selecting on the test subjects (the paper's protocol) leaves the
    validation subjects nothing to do, so they train too: every non-test subject (18 a fold on
    DISFA's 3 folds), as the paper trains. The manifest's au_weights were computed without them
    and are dropped (the trainer derives the weights from its training shards)."""
    if select_on != "test" or not spec.subjects["val"]:
        return spec
    subjects = {"train": spec.subjects["train"] + spec.subjects["val"], "val": [],
                "test": list(spec.subjects["test"])}
    log.info("%s fold %d: selection on the test subjects, so the validation subjects %s train "
             "too (%d training subjects)", spec.manifest, spec.fold, spec.subjects["val"],
             len(subjects["train"]))
    return dataclasses.replace(spec, subjects=subjects, au_weights=None)


def fold_numbers(manifest_path: Path | str) -> list[int]:
    return [int(f["fold"]) for f in load_manifest(manifest_path)["folds"]]


def open_shards(
    shards_dir: Path | str, subjects: Sequence[str], cameras: Sequence[str], context: str,
    spec: FoldSpec | None = None,
) -> list[ShardReader]:
    """Open the shard of every subject and camera; a missing or corrupt one is a DataError.

    With ``spec``, a shard declaring more frames than the manifest recorded for its subject is
    refused before its data is read (a crafted shard cannot make the reader allocate more)."""
    shards_dir = Path(shards_dir)
    expected = manifest_frames(spec) if spec is not None else {}
    readers = []
    for subject in subjects:
        check_subject_names([subject], context)
        for camera in cameras:
            path = shards_dir / shard_name(subject, camera)
            if not path.exists():
                raise DataError(f"{context} lists subject {subject}, but its shard {path} "
                                "does not exist (align that subject, or rebuild the folds)")
            try:
                reader = ShardReader(path, max_frames=expected.get(subject))
            except ShardError as err:
                hint = (f" ({spec.manifest} records {expected[subject]} frames for {subject}: "
                        "rebuild the folds if the shard was realigned)"
                        if subject in expected and "expected" in str(err) else "")
                raise DataError(f"corrupt shard: {err}{hint}") from err
            try:
                # Decoding the first and last frame catches truncated or corrupt image data
                # before training starts rather than hours into it.
                if len(reader):
                    reader.image(0)
                    reader.image(len(reader) - 1)
            except ShardError as err:
                raise DataError(f"corrupt shard: {err}") from err
            except (OSError, KeyError, ValueError) as err:
                raise DataError(f"corrupt shard {path}: {err}") from err
            finally:
                reader.close()  # workers reopen their own handles
            if reader.subject != subject:
                raise DataError(f"{path}: shard says subject {reader.subject!r}, expected {subject}")
            readers.append(reader)
    return readers


def manifest_frames(spec: FoldSpec) -> dict[str, int]:
    """``frames_per_subject`` of a fold (subject -> frames); entries that are not counts are
    left out (the shard's own limit then applies)."""
    counts = spec.raw.get("frames_per_subject")
    if not isinstance(counts, Mapping):
        return {}
    return {str(s): int(n) for s, n in counts.items()
            if isinstance(n, int) and not isinstance(n, bool) and n >= 0}


def check_subject_names(subjects: Sequence[object], source: object) -> None:
    """A DataError naming ``source`` for any subject that is not a subject name (a shard file
    name is built from it, so ``../elsewhere/SN003`` would read outside the shards folder)."""
    bad = [s for s in subjects if not is_known_subject(s)]
    if bad:
        raise DataError(f"{source}: subject {bad[0]!r} is not a subject name of DISFA, DISFA+ "
                        "or BP4D")


def check_consistent(readers: Sequence[ShardReader], spec: FoldSpec,
                     mix_datasets: bool = False) -> dict[str, Any]:
    """All shards agree with the manifest (AUs, image size) and with each other (targets);
    ``mix_datasets``: shards of several datasets (``dataset_checks``), whose AU lists differ.

    Returns the shared geometry: ``image_size``, ``nose_target``, ``chin_target``.
    """
    first = readers[0]
    geometry = {"image_size": first.image_size,
                "nose_target": [float(v) for v in first.attrs["nose_target"]],
                "chin_target": [float(v) for v in first.attrs["chin_target"]]}
    for r in readers:
        # mixed datasets: labels come from each shard's raw codes, its uncoded AUs NaN
        if tuple(r.au_ids) != spec.au_ids and not mix_datasets:
            raise DataError(f"{r.path}: AUs {list(r.au_ids)} differ from the manifest "
                            f"{spec.manifest} ({list(spec.au_ids)})")
        if r.image_size != (spec.image_size or first.image_size):
            raise DataError(f"{r.path}: image size {r.image_size} differs from the manifest "
                            f"{spec.manifest} ({spec.image_size or first.image_size})")
        if int(r.attrs.get("threshold", spec.threshold)) != spec.threshold:
            raise DataError(f"{r.path}: labels were written at threshold {r.attrs['threshold']}, "
                            f"the manifest {spec.manifest} says {spec.threshold}")
        for key in ("nose_target", "chin_target"):
            if not np.allclose(r.attrs[key], geometry[key], atol=1e-6):
                raise DataError(f"{r.path}: {key} {list(r.attrs[key])} differs from "
                                f"{first.path} ({geometry[key]}); shards of one run must share "
                                "one alignment")
    return geometry


def shard_origin(readers: Sequence[ShardReader]) -> dict[str, Any]:
    """Where the shards' frames came from, as the model card records it: ``data_source``
    ("release", "twin", "unknown" for shards made before ``pipeline.align`` recorded it, or
    "mixed" when they differ), each source and release root seen, the landmark sources."""
    sources = sorted({str(r.attrs.get("data_source", "unknown")) for r in readers})
    roots = sorted({str(r.attrs["release_root"]) for r in readers if "release_root" in r.attrs})
    landmarks = sorted({str((r.attrs.get("config") or {}).get("landmark_source", "unknown"))
                        if isinstance(r.attrs.get("config"), Mapping) else "unknown"
                        for r in readers})
    source = sources[0] if len(sources) == 1 else "mixed"
    return {"data_source": source, "data_sources": sources, "release_roots": roots,
            "landmark_sources": landmarks}


def all_subjects_spec(spec: FoldSpec) -> FoldSpec:
    """The manifest's every subject (over all its folds) as training subjects, none held out.

    ``val`` lists them too: the epoch loop's monitor then reads training frames (in-sample, never
    a selection: an --all-subjects run keeps its last epoch). ``test`` is empty."""
    manifest = load_manifest(spec.manifest)
    subjects = sorted({str(s) for fold in manifest["folds"] for split in SPLITS
                       for s in fold.get(split, []) or []})
    check_subject_names(subjects, spec.manifest)
    return dataclasses.replace(spec, subjects={"train": subjects, "val": list(subjects),
                                               "test": []}, au_weights=None)


def check_flip_symmetry(geometry: dict[str, Any], context: str) -> None:
    """Random flips need the hard-mask centre on the vertical midline (see module doc)."""
    size = geometry["image_size"]
    x = geometry["nose_target"][0]
    if abs(x - size / 2) > max(1.0, 0.01 * size):
        raise DataError(f"{context}: the aligned nose point x={x} is not on the vertical midline "
                        f"of {size}-pixel frames, so a flipped frame would move the hard-mask "
                        "centre; train with --no-flip or realign with a centred nose target")


class ShardFrames(Dataset):
    """Frames of several shards as one indexable dataset.

    ``dataset[i]``, ``dataset[(i, flip)]`` or ``dataset[(i, flip, uniforms)]`` -> (uint8 RGB
    ``[S, S, 3]``, float labels ``[K]``, global index); ``uniforms`` drive ``jitter``
    (``model.augment.AlignmentJitter``, training only). ``image_size`` other than the shards' resizes on the fly (INTER_AREA); the
    alignment targets scale with the size, so this equals aligning at that size up to
    resampling.
    """

    def __init__(
        self,
        readers: Sequence[ShardReader],
        au_ids: Sequence[int],
        threshold: int,
        image_size: int | None = None,
        jitter: AlignmentJitter | None = None,
    ) -> None:
        if not readers:
            raise DataError("no shards to read")
        self.readers = list(readers)
        self.au_ids = tuple(int(a) for a in au_ids)
        self.threshold = int(threshold)
        self.source_size = self.readers[0].image_size
        self.image_size = int(image_size or self.source_size)
        lengths = np.array([len(r) for r in self.readers], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        # float32 1/0, NaN = not coded (or an AU the shard's dataset does not code)
        self.labels = np.concatenate(
            [r.label_matrix(self.au_ids, self.threshold) for r in self.readers])
        self.datasets = tuple(dict.fromkeys(r.dataset for r in self.readers))
        # Raw FACS intensities 0-5 of the 12 coded AUs (ALL_AUS order), for --task intensity/both;
        # None where a shard's intensity columns are not DISFA's 12 (BP4D codes 5 of its own).
        disfa_columns = all(r.info.intensity_aus == ALL_AUS for r in self.readers)
        self.intensity = (np.concatenate([np.asarray(r.intensity, np.uint8) for r in self.readers])
                          if disfa_columns else None)
        self.subjects = [r.subject for r in self.readers]
        self.jitter = jitter if jitter is not None and jitter.enabled else None
        self._decoded: np.ndarray | None = None  # every frame, once preload() has run

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[ShardReader, int]:
        if not 0 <= index < len(self):
            raise IndexError(f"frame {index} out of range (dataset has {len(self)})")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        return self.readers[shard], index - int(self.offsets[shard])

    @property
    def decoded_bytes(self) -> int:
        """Memory that :meth:`preload` takes: every frame as uint8 RGB at ``image_size``."""
        return len(self) * self.image_size * self.image_size * 3

    def preload(self) -> None:
        """Decode every frame once into memory; later reads skip HDF5 and JPEG decoding (the
        frames are the ones decoding on demand gives, bit for bit). For small sets such as the
        demo's 64-pixel twin, where reading a frame costs as much as a tenth of a training step."""
        decoded = np.empty((len(self), self.image_size, self.image_size, 3), np.uint8)
        for index in range(len(self)):
            decoded[index] = self._decode(index)
        self._decoded = decoded

    def _decode(self, index: int) -> np.ndarray:
        reader, local = self.locate(index)
        try:
            image = reader.image(local)
        except ShardError:
            raise
        except Exception as err:  # h5py raises assorted types on damaged chunks
            raise ShardError(f"{reader.path}, frame {local}: unreadable ({err})") from err
        if self.image_size != self.source_size:
            image = cv2.resize(image, (self.image_size, self.image_size),
                               interpolation=cv2.INTER_AREA)
        return image

    def image(self, index: int, flip: bool = False,
              jitter_uniforms: Sequence[float] | None = None) -> np.ndarray:
        if self._decoded is not None:
            self.locate(index)  # the same IndexError as without the cache
            image = self._decoded[index]
        else:
            image = self._decode(index)
        if self.jitter is not None and jitter_uniforms is not None:
            image = self.jitter.apply(image, jitter_uniforms)
        if flip:
            # cv2.flip writes a new contiguous image (~6 us at 224 px); a reversed numpy view
            # plus the copy below costs ~40x that.
            return cv2.flip(image, 1)
        # A copy when cached: the caller may write into what it gets.
        return image.copy() if self._decoded is not None else np.ascontiguousarray(image)

    def __getitem__(self, key: int | tuple):
        index, flip, uniforms = (tuple(key) + (None,))[:3] if isinstance(key, tuple) \
            else (key, False, None)
        index = int(index)
        image = torch.from_numpy(self.image(index, bool(flip), uniforms))
        return image, torch.from_numpy(self.labels[index].copy()), index

    def subject_groups(self) -> tuple[list[str], np.ndarray]:
        """Distinct subject names and the ``[len(self)]`` index of each frame's subject (a
        subject's cameras share one index)."""
        names = list(dict.fromkeys(self.subjects))
        lengths = np.diff(self.offsets)
        groups = np.repeat([names.index(s) for s in self.subjects], lengths).astype(np.int64)
        return names, groups

    def intensities(self, index: Sequence[int] | np.ndarray | torch.Tensor,
                    au_ids: Sequence[int]) -> torch.Tensor:
        """Float intensities ``[B, len(au_ids)]`` of the frames at global ``index``. A batch's
        (host) index tensor is used as it is: no ``.numpy()``/``.cpu()`` call, which the
        training loop's no-sync check would count as a host copy."""
        rows = torch.from_numpy(self.intensity)[torch.as_tensor(index, dtype=torch.long)]
        rows = rows[:, au_columns(au_ids)]
        # "not coded" is NaN (the metrics leave it out); DISFA has none, so nothing changes there
        return torch.where(rows == NOT_CODED, float("nan"), rows.float())

    def natural_positive_rate(self) -> np.ndarray:
        """Per-AU positive rate over the frames coded for that AU."""
        if not len(self):
            return np.zeros(len(self.au_ids))
        labels = self.labels.astype(np.float64)
        return np.nanmean(labels, axis=0) if self.has_uncoded else labels.mean(axis=0)

    @property
    def has_uncoded(self) -> bool:
        """Whether any label is "not coded" (NaN): the loss then masks (DISFA never has one)."""
        return bool(np.isnan(self.labels).any())


def frame_subset(dataset: ShardFrames, keep: Mapping[str, Sequence[int]]) -> np.ndarray:
    """Global indices of the frames whose 0-based video frame is in ``keep[subject]`` (a subject
    missing from ``keep`` contributes none): one frame set evaluated on two cameras' shards."""
    parts = [np.zeros(0, np.int64)]
    for reader, start in zip(dataset.readers, dataset.offsets[:-1]):
        wanted = np.asarray(keep.get(reader.subject, ()), dtype=np.int64)
        parts.append(int(start) + np.flatnonzero(np.isin(reader.frame_index, wanted)))
    return np.concatenate(parts).astype(np.int64)


def select_frames(dataset: ShardFrames, keep: Mapping[str, Sequence[int]] | None,
                  context: str) -> ShardFrames | Subset:
    """``dataset``, or only its frames in ``keep`` (see :func:`frame_subset`); none is an error."""
    if keep is None:
        return dataset
    chosen = Subset(dataset, frame_subset(dataset, keep).tolist())
    if len(chosen) == 0:
        raise DataError(f"{context}: no frame is in the frame set to compare")
    return chosen


def evaluation_indices(n: int, max_frames: int | None) -> np.ndarray:
    """All frames, or ``max_frames`` spread evenly over them (deterministic, every subject)."""
    if max_frames is None or max_frames >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_frames).round().astype(np.int64))


#: Most DataLoader workers an option may ask for (``--workers``): each is a process holding
#: its own shard handles; far more than any machine's useful parallelism for decoding.
MAX_WORKERS = 64


def default_workers(processes_per_node: int = 1) -> int:
    """DataLoader workers for one training process: the CPU cores this process may use, shared
    among the processes of the node, one core kept for the training loop itself, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(0, min(8, (cores or 1) // max(processes_per_node, 1) - 1))


def single_threaded_opencv(workers: int) -> None:
    """Before DataLoader workers fork: one OpenCV thread in each (a worker is one process a core;
    OpenCV's own pool would only oversubscribe). Set here, in the parent, because calling
    ``cv2.setNumThreads`` inside a forked worker can deadlock on the pool the fork copied
    (seen in the test suite); the children inherit the setting. The parent does no image work
    while workers do it, so it loses nothing."""
    if workers > 0:
        cv2.setNumThreads(1)


def collate_frames(batch):
    images, labels, index = zip(*batch)
    return torch.stack(images), torch.stack(labels), torch.as_tensor(index)

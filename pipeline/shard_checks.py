"""Structural checks of a shard, made before any of its data is read.

A shard may come from elsewhere (another machine, a download), and HDF5 lets a file do more than
hold its own data: a dataset can be stored in another file (external storage), a link can point
into another file (external link), a dataset can be assembled from other files (virtual), and
a shape can be declared that no data backs (2^40 entries read as fill values). Each of these
either reads outside the shards folder or allocates without bound, so a shard is refused,
naming the file, unless:

- no link anywhere in it is external, and no dataset has external storage or is virtual;
- its datasets use only the filters a shard writer may use (deflate, shuffle, fletcher32,
  lzf), whose expansion is bounded (deflate's is at most 1032:1, lzf's less);
- the per-frame datasets agree in length, at most :data:`MAX_SHARD_FRAMES` (and at most what
  the caller expects, e.g. the folds manifest's count), with the per-frame shapes of the schema;
- every dataset's declared size is backed by storage actually in the file: at most the stored
  bytes (no filter) or :data:`MAX_EXPANSION` times them (filtered), and a chunk is at most
  :data:`MAX_CHUNK_BYTES` (HDF5 inflates a whole chunk to read one element of it).

Attribute *values* (image size, threshold, ...) are checked elsewhere; this module looks only at
structure and storage.
"""
from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np

from .datasets.registry import KNOWN_AUS

#: Frames one shard (one subject, one camera) may hold: 40x a DISFA video (4845 frames), about
#: 2.8 hours at 20 fps. Bounds the per-frame metadata the reader loads to about 110 MB.
MAX_SHARD_FRAMES = 200_000
#: Largest expansion of stored bytes by the allowed filters (deflate's theoretical limit).
MAX_EXPANSION = 1032
#: Largest chunk, uncompressed (a raw 4096-pixel frame is 48 MiB).
MAX_CHUNK_BYTES = 64 * 2**20
#: HDF5 filter ids a shard may use: deflate, shuffle, fletcher32, lzf. Others (scale-offset,
#: n-bit, plugins) can expand without a bound or need code this toolkit does not ship.
ALLOWED_FILTERS = {1: "deflate", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
#: Objects (groups, datasets, links) a shard may hold; one has about ten.
MAX_OBJECTS = 1000
#: Per-frame datasets: name -> shape after the frame axis (None: a length the dataset sets, at
#: most the AUs of every supported dataset for a label array, at most 68 landmarks). Which
#: length a dataset has is checked when the attrs are read (``ShardReader``).
PER_FRAME = {"frame_index": (), "intensity": (None,), "labels": (None,), "landmarks": (None, 2)}
#: Per-frame datasets only some shards have (schema 2): ``occurrence`` (datasets coded 0/1),
#: ``sequence`` (index into the JSON attr ``sequences``) and ``frame_number`` (the dataset's
#: own frame number) in image-folder datasets' shards.
OPTIONAL_PER_FRAME = {"occurrence": (None,), "sequence": (), "frame_number": ()}
MAX_COLUMNS = {"intensity": len(KNOWN_AUS), "labels": len(KNOWN_AUS),
               "occurrence": len(KNOWN_AUS), "landmarks": 68}
MIN_COLUMNS = {"labels": 1, "landmarks": 1}


class ShardStructureError(ValueError):
    """A shard's structure is unsafe or inconsistent; the message names what (not the file)."""


def check_structure(f: h5py.File, path: Path | str, max_frames: int | None = None) -> int:
    """Check the open shard ``f`` (at ``path``) before reading data; its frame count.

    Raises :class:`ShardStructureError` with a message that names ``path``."""
    try:
        file_size = Path(path).stat().st_size
        _check_self_contained(f)
        n = _check_shapes(f, max_frames)
        for name in ("images", *PER_FRAME, *_optional(f)):
            _check_storage(f[name], name, file_size)
    except ShardStructureError as err:
        raise ShardStructureError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # h5py on odd types/layouts
        raise ShardStructureError(f"{path}: not a readable shard ({err})") from None
    return n


def _optional(f: h5py.File) -> list[str]:
    """The optional per-frame datasets ``f`` has (as datasets; anything else is refused)."""
    present = [name for name in OPTIONAL_PER_FRAME if name in f]
    for name in present:
        if not isinstance(f.get(name), h5py.Dataset):
            raise ShardStructureError(f"'{name}' is not a dataset")
    return present


def _check_self_contained(f: h5py.File) -> None:
    """No external link, external storage or virtual dataset anywhere in the file."""
    todo, visited = [f], 0
    while todo:
        group = todo.pop()
        for name in group:
            visited += 1
            if visited > MAX_OBJECTS:  # also ends hard-link cycles
                raise ShardStructureError(f"holds more than {MAX_OBJECTS} objects")
            link = group.get(name, getlink=True)
            where = f"{group.name.rstrip('/')}/{name}"
            if isinstance(link, h5py.ExternalLink):
                raise ShardStructureError(
                    f"'{where}' is an external link to {link.filename}; a shard must hold its "
                    "own data")
            if isinstance(link, h5py.SoftLink):
                continue  # points inside this file; its target is checked where it is
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                todo.append(obj)
            elif isinstance(obj, h5py.Dataset):
                _check_dataset_storage_kind(obj, where)


def _check_dataset_storage_kind(dset: h5py.Dataset, where: str) -> None:
    if dset.external:
        files = sorted({str(e[0]) for e in dset.external})
        raise ShardStructureError(f"dataset '{where}' is stored in other files ({', '.join(files)})"
                                  "; a shard must hold its own data")
    if dset.is_virtual:
        raise ShardStructureError(f"dataset '{where}' is a virtual dataset (made of other files' "
                                  "data); a shard must hold its own data")
    plist = dset.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in ALLOWED_FILTERS:
            raise ShardStructureError(
                f"dataset '{where}' uses HDF5 filter {code}; shards use only "
                f"{', '.join(ALLOWED_FILTERS.values())}")


def _check_shapes(f: h5py.File, max_frames: int | None) -> int:
    """The per-frame datasets' shapes; the common frame count."""
    for name in ("images", *PER_FRAME):
        if not isinstance(f.get(name), h5py.Dataset):
            raise ShardStructureError(f"dataset '{name}' is missing")
    shapes = {name: f[name].shape for name in ("images", *PER_FRAME, *_optional(f))}
    if any(not shape for shape in shapes.values()):
        raise ShardStructureError("a per-frame dataset is a scalar")
    lengths = {shape[0] for shape in shapes.values()}
    if len(lengths) != 1:
        raise ShardStructureError("datasets disagree in length (" + ", ".join(
            f"{name} {shape[0]}" for name, shape in shapes.items()) + ")")
    n = lengths.pop()
    limit, source = MAX_SHARD_FRAMES, f"the limit of {MAX_SHARD_FRAMES} frames a shard"
    if max_frames is not None and max_frames < limit:
        limit, source = max_frames, f"the {max_frames} expected"
    if n > limit:
        raise ShardStructureError(f"declares {n} frames, more than {source}")
    for name, tail in {**PER_FRAME, **OPTIONAL_PER_FRAME}.items():
        if name in shapes:
            _check_frame_shape(f[name], name, tail)
    images = f["images"]
    if images.ndim == 4:
        if images.shape[3] != 3 or images.shape[1] != images.shape[2]:
            raise ShardStructureError(f"raw images have shape {images.shape}, not [N, S, S, 3]")
    elif images.ndim != 1 or h5py.check_vlen_dtype(images.dtype) is None:
        raise ShardStructureError(f"images have shape {images.shape} and type {images.dtype}, "
                                  "neither JPEG bytes [N] nor raw [N, S, S, 3]")
    return n


def _check_frame_shape(dset: h5py.Dataset, name: str, tail: tuple) -> None:
    shape = dset.shape[1:]
    bad = len(shape) != len(tail) or any(t is not None and s != t for s, t in zip(shape, tail))
    if name in MAX_COLUMNS and not bad:
        bad = not MIN_COLUMNS.get(name, 0) <= shape[0] <= MAX_COLUMNS[name]
    if bad:
        want = ", ".join("K" if t is None else str(t) for t in ("N", *tail))
        raise ShardStructureError(f"dataset '{name}' has shape {dset.shape}, not [{want}]")
    if dset.dtype.kind not in "iufb":
        raise ShardStructureError(f"dataset '{name}' has type {dset.dtype}, not a number")


def _check_storage(dset: h5py.Dataset, name: str, file_size: int) -> None:
    """Declared bytes backed by stored bytes, chunks of bounded size."""
    item = dset.id.get_type().get_size()  # as stored: a JPEG's heap reference is 16 bytes
    declared = math.prod(dset.shape) * item
    stored = min(dset.id.get_storage_size(), file_size)
    filtered = dset.id.get_create_plist().get_nfilters() > 0
    if declared > stored * (MAX_EXPANSION if filtered else 1):
        raise ShardStructureError(
            f"dataset '{name}' declares {declared} bytes ({'x'.join(map(str, dset.shape))}) but "
            f"the file stores {stored} for it; truncated or crafted")
    if dset.chunks is not None:
        chunk = math.prod(dset.chunks) * max(item, np.dtype(dset.dtype).itemsize)
        if chunk > MAX_CHUNK_BYTES:
            raise ShardStructureError(f"dataset '{name}' has chunks of {chunk} bytes, more than "
                                      f"{MAX_CHUNK_BYTES}")

"""Which weight file is this: its sha256 and size, and what it matched in the known list.

``--pretrained FILE`` logs one line with the file's sha256, its size and the entry of
:data:`KNOWN_WEIGHTS` it matched, and the same goes into the run's config.json and every
checkpoint (``pretrained.sha256`` ...), so a reader can tell later which bytes a model started from.

A checksum enters :data:`KNOWN_WEIGHTS` only when a public source states it (docs/backbones.md,
"Backbone weights"). None is published for the VGGFace2 SENet-50 pickles, so their entries carry
the file name and origin with ``sha256=None``: a file of that name is then reported as "sha256
not in the known list", and the digest recorded in the run is what identifies it.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


@dataclass(frozen=True)
class KnownWeights:
    """A weight file the toolkit knows of; ``sha256``/``size_bytes`` None where none is published."""

    name: str
    origin: str
    sha256: str | None = None
    size_bytes: int | None = None


#: The weight files docs/backbones.md names. Add a checksum only with its public source beside it.
KNOWN_WEIGHTS: tuple[KnownWeights, ...] = (
    KnownWeights("senet50_ft_weight.pkl",
                 "VGGFace2 SE-ResNet-50 (MS-Celeb-1M pretrain, VGGFace2 fine-tune), the authors' "
                 "Caffe model converted by cydonia999/VGGFace2-pytorch"),
    KnownWeights("senet50_scratch_weight.pkl",
                 "VGGFace2 SE-ResNet-50 trained from scratch on VGGFace2, the authors' Caffe "
                 "model converted by cydonia999/VGGFace2-pytorch"),
)

NOT_KNOWN = "sha256 not in the known list: recorded in the run's config"


@dataclass(frozen=True)
class FileIdentity:
    """A weight file's digest and size, and the known entry it matched (if any)."""

    path: str
    sha256: str
    size_bytes: int
    known: str | None = None        # "<name> (<origin>)" of the matched entry

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """What ``--pretrained FILE`` logs: digest, size, and the match or its absence."""
        matched = f"matches {self.known}" if self.known else NOT_KNOWN
        return (f"--pretrained {self.path}: sha256 {self.sha256}, {self.size_bytes} bytes "
                f"({self.size_bytes / 1e6:.1f} MB); {matched}")


def file_sha256(path: Path | str) -> str:
    """The hex sha256 of ``path``, read in 1 MiB pieces (weight files are ~100-200 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(_CHUNK), b""):
            digest.update(piece)
    return digest.hexdigest()


# The early check and the loader both identify the file; one read of 175 MB is enough.
_SEEN: dict[tuple[str, int, int], str] = {}


def identify_weights(path: Path | str) -> FileIdentity:
    """sha256 and size of ``path`` and the :data:`KNOWN_WEIGHTS` entry with that sha256."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SEEN:
        _SEEN[key] = file_sha256(path)
    sha = _SEEN[key]
    match = next((k for k in KNOWN_WEIGHTS if k.sha256 and k.sha256.lower() == sha), None)
    known = f"{match.name} ({match.origin})" if match else None
    return FileIdentity(path=str(path), sha256=sha, size_bytes=stat.st_size, known=known)

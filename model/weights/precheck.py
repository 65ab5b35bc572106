"""``--pretrained`` checked before a run reads any data or makes its folder.

The weights are loaded only once the model is built, which needs the shards' geometry, i.e. after
every frame of the fold was decoded; a missing file found then cost minutes and left an empty run
folder. :func:`check_pretrained_option` does the cheap part first: the file exists, is a readable
regular file, and starts as one of the two formats the loader reads (a ``torch.save`` zip or a
pickle); its sha256 and size are logged with what they matched. ``hub`` is checked as the loader
will check it (senet50 has no hub weights; timm's host or cache must answer), so an offline
machine fails in seconds. Whether the tensors fit the backbone is still the loader's check.
"""
from __future__ import annotations

import logging
import pickletools
import zipfile
from pathlib import Path

from ..nets.backbones import SENET50, BackboneError, TimmBackbone, parse_backbone
from .checksums import FileIdentity, identify_weights
from .hub import check_hub_reachable
from .pretrained import HUB, VGGFACE2_FILE
from .vggface2 import WeightsError

log = logging.getLogger(__name__)

OPTION = "--pretrained"


#: First bytes of a pickle of a dict: PROTO (protocol 2+), or protocol 0/1's MARK, EMPTY_DICT
#: or GLOBAL (an OrderedDict). Any other first byte is no weight pickle.
_PICKLE_STARTS = (b"\x80", b"(", b"}", b"c")


def _starts_as_pickle(path: Path) -> bool:
    """Whether ``path`` starts as a pickle of a dict (its first opcodes parsed, nothing run)."""
    with path.open("rb") as f:
        if f.read(1) not in _PICKLE_STARTS:
            return False
        f.seek(0)
        try:
            for i, _ in enumerate(pickletools.genops(f)):
                if i >= 2:
                    break
        except Exception:  # genops raises ValueError and others on foreign bytes
            return False
    return True


def _check_format(path: Path) -> None:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in archive.namelist()):
                raise WeightsError(f"{OPTION} {path}: a zip archive but not a torch.save file "
                                   "(no data.pkl inside); pass a state_dict saved with torch.save")
    elif not _starts_as_pickle(path):
        raise WeightsError(f"{OPTION} {path}: neither a torch.save state_dict nor a weight pickle "
                           f"such as {VGGFACE2_FILE} (docs/backbones.md, 'Backbone weights')")


def check_weight_file(spec: str) -> FileIdentity:
    """Raise :class:`WeightsError` (one line naming the option and file) unless ``spec`` is a
    readable, non-empty file in a format the loader reads; returns its sha256 and size."""
    path = Path(spec)
    if not path.exists():
        raise WeightsError(f"{OPTION} {spec}: no such weight file (where to get backbone "
                           "weights: docs/backbones.md, 'Backbone weights')")
    if not path.is_file():
        raise WeightsError(f"{OPTION} {spec}: not a file (a folder?); give the weight file itself")
    try:
        with path.open("rb") as f:
            empty = not f.read(1)
    except OSError as err:
        raise WeightsError(f"{OPTION} {spec}: cannot be read ({err.strerror or err})") from err
    if empty:
        raise WeightsError(f"{OPTION} {spec}: the file is empty (an interrupted download?)")
    _check_format(path)
    identity = identify_weights(path)
    log.info("%s", identity.line())
    return identity


def _check_hub(backbone: str) -> None:
    kind, name = parse_backbone(backbone)
    if kind == SENET50:
        raise WeightsError(f"{OPTION} hub: the VGGFace2 SENet-50 weights of the senet50 backbone "
                           f"are on no hub; bring the file {VGGFACE2_FILE} and pass {OPTION} FILE "
                           "(docs/backbones.md, 'Backbone weights'), or choose a timm backbone")
    try:
        where = check_hub_reachable(TimmBackbone(name))
    except BackboneError as err:
        raise WeightsError(f"--backbone {backbone}: {err}") from err
    log.info("%s hub: weights of timm:%s from %s", OPTION, name, where)


def check_pretrained_option(spec: str | None, backbone: str) -> FileIdentity | None:
    """Check ``--pretrained`` (a file, ``hub`` or None) for ``--backbone`` before anything else
    of the run happens; raises :class:`WeightsError`. Returns the file's identity (None for hub
    or no weights)."""
    if not spec:
        return None
    if spec == HUB:
        _check_hub(backbone)
        return None
    return check_weight_file(spec)

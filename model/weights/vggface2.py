"""Weight files for SENet-50: the VGGFace2 pickle (read by a numpy-only unpickler), torch
state_dicts, and timm ``legacy_seresnet50`` names, loaded into :class:`model.nets.senet.SENet`.

Weight files accepted by :func:`load_vggface2_weights`:

* the release pickle (``pickle.load(f, encoding='latin1')`` -> ``dict`` name -> ``numpy.ndarray``),
  read through :class:`NumpyOnlyUnpickler`, which admits dicts, numpy arrays and numpy's
  reconstruct helpers only and refuses every other global *before* anything is called;
* a PyTorch state_dict written with ``torch.save`` (read with ``torch.load(weights_only=True)``);
* either of the above under timm's ``legacy_seresnet50`` names, renamed by
  :func:`remap_timm_legacy_names` (``layer0.conv1`` -> ``conv1``, ``layer0.bn1`` -> ``bn1``,
  ``se_module.fc1`` -> ``conv4``, ``se_module.fc2`` -> ``conv5``, ``last_linear`` -> ``fc``); a
  DataParallel ``module.`` prefix is stripped too.

A module without a classifier (``SENet(include_top=False)``, the TRA-Net backbone) skips the file's
``fc.*`` arrays; they are reported in the log, not treated as an error.
"""
from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..nets.senet import SENet
from pipeline.cli import CommandError

log = logging.getLogger(__name__)


class WeightsError(CommandError, RuntimeError):
    """A weight file cannot be read safely, or its arrays do not fit the module."""


class UnsafePickleError(WeightsError, pickle.UnpicklingError):
    """The pickle names a global outside the numpy-array allow-list; nothing was executed."""


def _numpy_reconstruct():
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray._reconstruct, multiarray.scalar


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import _codecs
    import collections

    reconstruct, scalar = _numpy_reconstruct()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python-3 pickles at protocol <= 2 spell bytes as _codecs.encode(str, 'latin1').
        ("_codecs", "encode"): _codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,  # a dict; some tools save these
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy-array globals; any other global raises before use.

    Pickle executes code only by calling globals it has looked up through :meth:`find_class`
    (REDUCE/NEWOBJ/INST/OBJ all need one), so refusing the lookup refuses the call.
    """

    def __init__(self, file: io.BufferedIOBase, source: str = "<stream>") -> None:
        super().__init__(file, encoding="latin1")
        self._source = source
        self._allowed = _allowed_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global {module}.{name!s}; a VGGFace2 weight pickle "
                "holds only a dict of numpy arrays, so this file is not one (nothing was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: pickle uses persistent ids (a legacy torch.save "
                                "file?); re-save it with torch.save(state_dict) or as a numpy dict")


def _read_numpy_pickle(path: Path) -> dict[str, np.ndarray]:
    with path.open("rb") as f:
        try:
            data = NumpyOnlyUnpickler(f, source=str(path)).load()
        except UnsafePickleError:
            raise
        except Exception as err:  # truncated or foreign files raise many types
            raise WeightsError(f"{path}: not a readable weight pickle ({type(err).__name__}: {err})") from err
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: pickle holds a {type(data).__name__}, expected a dict of arrays")
    bad = [k for k, v in data.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise WeightsError(f"{path}: entries that are not name -> numpy array: {bad[:5]}")
    # Object arrays (Python objects inside) unpickle fine but are no weights: torch would fail
    # on them later with an error that names neither the file nor the array.
    not_numeric = [f"{k} ({v.dtype})" for k, v in data.items() if v.dtype.kind not in "biuf"]
    if not_numeric:
        raise WeightsError(f"{path}: arrays that are not numeric weights: "
                           f"{', '.join(not_numeric[:5])}")
    return data


def _read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for foreign/corrupt files
        raise WeightsError(f"{path}: not a readable torch state_dict ({type(err).__name__}: {err})") from err
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]  # common wrapper {"state_dict": ..., "epoch": ...}
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise WeightsError(f"{path}: torch file is not a state_dict (name -> tensor)")
    return data


def weight_file_format(path: Path | str) -> str:
    """"state_dict" for a ``torch.save`` file (a zip since PyTorch 1.6), else "vggface2-pickle"."""
    return "state_dict" if zipfile.is_zipfile(path) else "vggface2-pickle"


def read_raw_weights(path: Path | str) -> tuple[str, dict[str, torch.Tensor]]:
    """``("vggface2-pickle" | "state_dict", name -> tensor)`` of a release pickle or a torch
    state_dict, names as the file has them (a DataParallel ``module.`` prefix stripped)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    kind = weight_file_format(path)
    raw = _read_torch_state_dict(path) if kind == "state_dict" else _read_numpy_pickle(path)
    tensors = {}
    for key, value in raw.items():
        tensors[key[len("module."):] if key.startswith("module.") else key] = (
            torch.as_tensor(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value)
    return kind, tensors


def read_weight_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a release pickle or a torch state_dict into name -> tensor, with release names."""
    return remap_timm_legacy_names(read_raw_weights(path)[1])


_TIMM_RENAMES = (("layer0.conv1.", "conv1."), ("layer0.bn1.", "bn1."), ("last_linear.", "fc."))


def remap_timm_legacy_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename timm ``legacy_seresnet50`` (and ``module.``-prefixed) keys to the release's names.

    Keys already in release form pass through unchanged.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key[len("module."):] if key.startswith("module.") else key
        for old, repl in _TIMM_RENAMES:
            if new.startswith(old):
                new = repl + new[len(old):]
        new = new.replace(".se_module.fc1.", ".conv4.").replace(".se_module.fc2.", ".conv5.")
        if new in out:
            raise WeightsError(f"two entries map to the same name {new!r} (renaming {key!r})")
        out[new] = value
    return out


def to_timm_legacy_names(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`remap_timm_legacy_names`: release names -> timm ``legacy_seresnet50``
    names, so the VGGFace2 file also loads into ``--backbone timm:legacy_seresnet50``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for timm_prefix, release_prefix in _TIMM_RENAMES:
            if key.startswith(release_prefix):
                new = timm_prefix + key[len(release_prefix):]
        out[new.replace(".conv4.", ".se_module.fc1.").replace(".conv5.", ".se_module.fc2.")] = value
    return out


def load_vggface2_weights(module: SENet, path: Path | str) -> dict[str, list[str]]:
    """Copy VGGFace2 SENet-50 weights from ``path`` into ``module`` (in place).

    Every parameter and BN buffer of ``module`` must be in the file with the same shape
    (``num_batches_tracked`` is not in the release and is left as is). If ``module`` has no ``fc``
    the file's ``fc.*`` arrays are skipped. Anything else missing, extra or mis-shaped raises
    :class:`WeightsError` listing it. Returns ``{"loaded": [...], "skipped": [...]}``.
    """
    path = Path(path)
    source = read_weight_file(path)
    target = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    skipped = [k for k in source if k.startswith("fc.") and not any(t.startswith("fc.") for t in target)]
    source = {k: v for k, v in source.items() if k not in skipped}
    source = {k: v for k, v in source.items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(target) - set(source))
    unexpected = sorted(set(source) - set(target))
    misshaped = sorted(f"{k}: file {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                       for k in set(source) & set(target) if source[k].shape != target[k].shape)
    if missing or unexpected or misshaped:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if items:
                shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
                parts.append(f"{label}: {shown}")
        raise WeightsError(f"{path}: weights do not fit {type(module).__name__} ({'; '.join(parts)})")
    with torch.no_grad():
        state = module.state_dict()
        for key, value in source.items():
            state[key].copy_(value.to(state[key].dtype))
    if skipped:
        log.info("%s: skipped %d classifier arrays (%s) - the module has no fc", path, len(skipped),
                 ", ".join(sorted(skipped)))
    log.info("%s: loaded %d arrays", path, len(source))
    return {"loaded": sorted(source), "skipped": sorted(skipped)}


def load_backbone_weights(model: Any, path: Path | str) -> dict[str, list[str]]:
    """Load a VGGFace2 SENet-50 weight file into a TRA-Net's backbone (``fc.*`` skipped).

    Only the "full" preset has SENet-50's shapes; the small preset raises a clear error.
    """
    return load_vggface2_weights(model.backbone, path)

"""SENet-50 laid out exactly like the VGGFace2-pytorch release, and a safe loader for its weights.

The module names, parameter shapes and forward pass follow cydonia999/VGGFace2-pytorch
(``models/senet.py``) so that ``senet50_ft_weight.pkl`` / ``senet50_scratch_weight.pkl`` load key for
key: a 7x7 stem, ``MaxPool2d(3, 2, 0, ceil_mode=True)``, four stages of SE bottlenecks with the
stride on the *first 1x1* conv, the squeeze-excitation as ``conv4``/``conv5`` (1x1 convs with bias),
and an ``AvgPool2d(7, stride=1)`` + ``fc`` classifier over 8631 identities.

The weights expect BGR 0-255 input minus the VGGFace2 mean; that conversion lives only in
``model.transforms.to_model_input``.

Weight files accepted by :func:`load_vggface2_weights`:

* the release pickle (``pickle.load(f, encoding='latin1')`` -> ``dict`` name -> ``numpy.ndarray``),
  read through :class:`NumpyOnlyUnpickler`, which admits dicts, numpy arrays and numpy's
  reconstruct helpers only and refuses every other global *before* anything is called;
* a PyTorch state_dict written with ``torch.save`` (read with ``torch.load(weights_only=True)``);
* either of the above under timm's ``legacy_seresnet50`` names, renamed by :func:`remap_timm_legacy_names`
  (``layer0.conv1`` -> ``conv1``, ``layer0.bn1`` -> ``bn1``, ``se_module.fc1`` -> ``conv4``,
  ``se_module.fc2`` -> ``conv5``, ``last_linear`` -> ``fc``); a DataParallel ``module.`` prefix is
  stripped too.

A module without a classifier (``SENet(include_top=False)``, the TRA-Net backbone) skips the file's
``fc.*`` arrays; they are reported in the log, not treated as an error.
"""
from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

VGGFACE2_NUM_CLASSES = 8631
SENET50_LAYERS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
    """SE bottleneck of the release: 1x1 (strided) -> 3x3 -> 1x1, SE gate, then the residual add."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 se_reduction: int = 16) -> None:
        super().__init__()
        out = planes * self.expansion
        # The release puts the stride on the first 1x1 conv (Caffe heritage), not on the 3x3.
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        # Squeeze-excitation written as two biased 1x1 convs, named as in the release.
        self.conv4 = nn.Conv2d(out, out // se_reduction, kernel_size=1, bias=True)
        self.conv5 = nn.Conv2d(out // se_reduction, out, kernel_size=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        gate = out.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.conv5(self.relu(self.conv4(gate))))
        return self.relu(out * gate + residual)


class SENet(nn.Module):
    """SE-ResNet in the release's layout; ``base_width``/``layers`` shrink it for the small preset.

    With ``include_top`` the forward pass is the release's classifier (7x7 average pool, stride 1,
    flatten, ``fc``), which assumes 224x224 input. Without it the module has no ``fc`` and
    :meth:`forward` returns the last feature map; :meth:`stages` returns every stage's map.
    """

    def __init__(self, layers: Sequence[int] = SENET50_LAYERS, num_classes: int = VGGFACE2_NUM_CLASSES,
                 include_top: bool = True, base_width: int = 64, se_reduction: int = 16) -> None:
        super().__init__()
        if len(layers) != 4:
            raise ValueError(f"SENet needs four stages, got layers={list(layers)}")
        self.include_top = include_top
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        self.layer1 = self._make_layer(base_width, layers[0], 1, se_reduction)
        self.layer2 = self._make_layer(base_width * 2, layers[1], 2, se_reduction)
        self.layer3 = self._make_layer(base_width * 4, layers[2], 2, se_reduction)
        self.layer4 = self._make_layer(base_width * 8, layers[3], 2, se_reduction)
        #: Channels of the outputs of layer1..layer4.
        self.stage_channels = tuple(base_width * m * Bottleneck.expansion for m in (1, 2, 4, 8))
        if include_top:
            self.avgpool = nn.AvgPool2d(7, stride=1)
            self.fc = nn.Linear(self.stage_channels[-1], num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int, se_reduction: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        blocks_list = [Bottleneck(self.inplanes, planes, stride, downsample, se_reduction)]
        self.inplanes = planes * Bottleneck.expansion
        blocks_list += [Bottleneck(self.inplanes, planes, 1, None, se_reduction) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_list)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of layer1..layer4 (strides 4, 8, 16, 32 of the input)."""
        x1 = self.layer1(self.stem(x))
        x2 = self.layer2(x1)
        x3 = self.layer3(x2)
        return [x1, x2, x3, self.layer4(x3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(x)[-1]
        if not self.include_top:
            return x
        return self.fc(torch.flatten(self.avgpool(x), 1))


def senet50(num_classes: int = VGGFACE2_NUM_CLASSES, include_top: bool = True) -> SENet:
    """SENet-50 with the VGGFace2 release's exact state_dict layout."""
    return SENet(SENET50_LAYERS, num_classes=num_classes, include_top=include_top)


# --------------------------------------------------------------------------------------------------
# Weight files


class WeightsError(RuntimeError):
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


def read_weight_file(path: Path | str) -> dict[str, torch.Tensor]:
    """Read a release pickle or a torch state_dict into name -> tensor, with release names."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weight file")
    if zipfile.is_zipfile(path):  # torch.save's format since PyTorch 1.6
        raw: Mapping[str, Any] = _read_torch_state_dict(path)
    else:
        raw = _read_numpy_pickle(path)
    tensors = {k: torch.as_tensor(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
               for k, v in raw.items()}
    return remap_timm_legacy_names(tensors)


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

"""``--pretrained``: put published weights into a TRA-Net's backbone, and say what was loaded.

Sources:

* the VGGFace2 release pickle (``senet50_ft_weight.pkl``, read by the numpy-only unpickler), into
  ``senet50`` or, renamed, into ``timm:legacy_seresnet50``; the input transform is then VGGFace2's;
* a torch state_dict file: for ``senet50`` the release's (or timm ``legacy_seresnet50``) names, for
  ``timm:<name>`` the names of ``timm.create_model(<name>).state_dict()``; the transform is the
  backbone's default (VGGFace2 for senet50, the timm model's mean/std);
* ``hub``: timm fetches the model's published weights (``model.weights.hub``).

Every backbone tensor must come from the source with its shape (a silently half-random backbone is
worse than an error); tensors of the source that the backbone does not use (the classifier, a
timm head) are listed as ``unexpected``. :class:`PretrainedReport` is what the trainer logs and
records in config.json and every checkpoint.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ..nets.backbones import SENET50, TimmBackbone, parse_backbone
from ..nets.transforms import VGGFACE2
from .checksums import identify_weights
from .hub import fetch_hub_state_dict, hub_cached_file
from .vggface2 import (WeightsError, load_vggface2_weights, read_raw_weights, to_timm_legacy_names,
                       weight_file_format)

log = logging.getLogger(__name__)

HUB = "hub"
VGGFACE2_FILE = "senet50_ft_weight.pkl"


@dataclass
class PretrainedReport:
    """Which weights went into the backbone."""

    source: str                     # the file, or hf-hub:<repo> / the URL timm fetched
    format: str                     # vggface2-pickle | state_dict | hub
    backbone: str
    tensors: int                    # backbone tensors loaded
    missing: list[str] = field(default_factory=list)     # backbone tensors not in the source
    unexpected: list[str] = field(default_factory=list)  # source tensors the backbone leaves out
    input_transform: dict[str, Any] = field(default_factory=dict)
    # The bytes that were loaded (model.weights.checksums); None where no file was read (hub
    # without a cached file).
    sha256: str | None = None
    size_bytes: int | None = None
    known: str | None = None        # the KNOWN_WEIGHTS entry matched, else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        unused = (f"; {len(self.unexpected)} unused ({', '.join(self.unexpected[:4])}"
                  f"{', ...' if len(self.unexpected) > 4 else ''})" if self.unexpected else "")
        return (f"{self.backbone} <- {self.source} ({self.format}): {self.tensors} tensors, "
                f"{len(self.missing)} missing{unused}; input transform "
                f"{self.input_transform.get('name')}"
                + (f"; sha256 {self.sha256[:12]}... ({self.known or 'not in the known list'})"
                   if self.sha256 else ""))


def _original_names(key: str) -> list[str]:
    """``key`` of a features_only model and the full-model names it may come from:
    wrappers flatten ``stages.0`` into ``stages_0``."""
    head, _, rest = key.partition(".")
    names = [key]
    for i, char in enumerate(head):
        if char == "_":
            names.append(f"{head[:i]}.{head[i + 1:]}" + (f".{rest}" if rest else ""))
    return names


def load_state_into(module: nn.Module, source: Mapping[str, torch.Tensor], origin: str
                    ) -> tuple[int, list[str]]:
    """Copy ``source`` into ``module`` (a timm features model) by name; returns (tensors loaded,
    unused source names). Missing or mis-shaped tensors raise :class:`WeightsError`."""
    target = module.state_dict()
    mapping = {}
    for key in target:
        found = next((name for name in _original_names(key) if name in source), None)
        if found is not None:
            mapping[key] = found
    missing = sorted(k for k in target if k not in mapping and not k.endswith("num_batches_tracked"))
    misshaped = sorted(f"{k}: file {tuple(source[v].shape)} vs model {tuple(target[k].shape)}"
                       for k, v in mapping.items() if source[v].shape != target[k].shape)
    if missing or misshaped:
        parts = [f"{label}: {', '.join(items[:6])}{f', ... ({len(items)} in all)' if len(items) > 6 else ''}"
                 for label, items in (("missing", missing), ("mis-shaped", misshaped)) if items]
        raise WeightsError(f"{origin}: weights do not fit the backbone ({'; '.join(parts)}); is it a "
                           "state_dict of this very model?")
    with torch.no_grad():
        for key, name in mapping.items():
            target[key].copy_(source[name].to(target[key].dtype))
    used = set(mapping.values())
    return len(mapping), sorted(k for k in source if k not in used)


def _load_senet(model: nn.Module, spec: str) -> PretrainedReport:
    if spec == HUB:
        raise WeightsError(f"--pretrained hub: the VGGFace2 SENet-50 weights of the senet50 backbone "
                           f"are on no hub; bring the release file {VGGFACE2_FILE} (docs/backbones.md, "
                           "'Backbone weights') and pass --pretrained FILE, or choose a timm backbone")
    report = load_vggface2_weights(model.backbone, spec)
    return PretrainedReport(source=str(spec), format=weight_file_format(spec), backbone=SENET50,
                            tensors=len(report["loaded"]), unexpected=list(report["skipped"]),
                            input_transform=VGGFACE2.as_dict())


def _load_timm(model: nn.Module, spec: str) -> PretrainedReport:
    backbone: TimmBackbone = model.backbone
    transform = backbone.default_transform
    if spec == HUB:
        state, source = fetch_hub_state_dict(backbone)
        kind = HUB
    else:
        kind, state = read_raw_weights(spec)
        source = str(spec)
        if kind == "vggface2-pickle":  # release names -> timm legacy_seresnet50 names
            state, transform = to_timm_legacy_names(state), VGGFACE2
    loaded, unused = load_state_into(backbone.body, state, source)
    return PretrainedReport(source=source, format=kind, backbone=f"timm:{backbone.model_name}",
                            tensors=loaded, unexpected=unused, input_transform=transform.as_dict())


def _record_identity(report: PretrainedReport, path: str | None) -> None:
    """Put the sha256 and size of the file that was read into ``report`` (config.json and every
    checkpoint carry the report; the model card reads them there)."""
    if path and Path(path).is_file():
        identity = identify_weights(path)
        report.sha256, report.size_bytes, report.known = (identity.sha256, identity.size_bytes,
                                                          identity.known)


def load_pretrained(model: nn.Module, spec: str | Path) -> PretrainedReport:
    """Load ``spec`` (a weight file or ``hub``) into ``model.backbone`` (a TRANet); see module doc."""
    spec = str(spec)
    kind, _ = parse_backbone(model.config.backbone)
    report = _load_senet(model, spec) if kind == SENET50 else _load_timm(model, spec)
    _record_identity(report, hub_cached_file(model.backbone) if spec == HUB else spec)
    log.info("pretrained weights: %s", report.summary())
    return report

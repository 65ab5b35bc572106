"""A small stand-in for the part of timm the backbone adapter uses, so its tests run without timm.

It keeps timm's contract as timm 1.0 has it: ``create_model(name, pretrained=False,
features_only=False)``; a features model returns a list of maps and has ``feature_info``
(``channels()``, ``reduction()``, ``module_name()``), ``pretrained_cfg`` (``hf_hub_id``, ``url``,
``mean``, ``std``) and ``output_fmt``; like timm's ``FeatureListNet`` it flattens the full model's
Sequentials, so ``stages.0`` of the full model is ``stages_0`` in the features model. The real
timm is checked against the same expectations in test_backbones.py when it is installed.
"""
from __future__ import annotations

import sys
import types

import torch
from torch import nn

__version__ = "0.0-fake"
MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
#: Calls of create_model(pretrained=True), so tests can tell whether a download was attempted.
PRETRAINED_CALLS: list[str] = []


class FeatureInfo:
    def __init__(self, entries: list[dict]) -> None:
        self.entries = entries

    def channels(self) -> list[int]:
        return [e["num_chs"] for e in self.entries]

    def reduction(self) -> list[int]:
        return [e["reduction"] for e in self.entries]

    def module_name(self) -> list[str]:
        return [e["module"] for e in self.entries]


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class FakeNet(nn.Module):
    """stem (stride 2) -> four stages (strides 4, 8, 16, 32) -> pooled linear head."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU())
        chans = [width, width * 2, width * 4, width * 8, width * 16]
        self.stages = nn.Sequential(*[_stage(a, b) for a, b in zip(chans[:-1], chans[1:])])
        self.head = nn.Linear(chans[-1], 10)
        self.feature_info = [dict(num_chs=width, reduction=2, module="stem.2")] + [
            dict(num_chs=c, reduction=2 ** (i + 2), module=f"stages.{i}")
            for i, c in enumerate(chans[1:])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


class FakeFeatures(nn.Module):
    """FeatureListNet-like: the full model's Sequentials flattened into ``stem_0``, ``stages_0``..."""

    def __init__(self, model: FakeNet, entries: list[dict], output_fmt: str = "NCHW") -> None:
        super().__init__()
        for top, module in model.named_children():
            if top == "head":
                continue
            for child, sub in module.named_children():
                self.add_module(f"{top}_{child}", sub)
        self.feature_info = FeatureInfo(entries)
        self._returns = {e["module"].replace(".", "_") for e in entries}
        self.output_fmt = output_fmt

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for name, module in self.named_children():
            x = module(x)
            if name in self._returns:
                maps.append(x.permute(0, 2, 3, 1) if self.output_fmt == "NHWC" else x)
        return maps


def _cfg(name: str) -> dict:
    return {"architecture": name, "hf_hub_id": f"timm/{name}.fake_in1k", "url": "",
            "mean": MEAN, "std": STD}


def create_model(model_name: str, pretrained: bool = False, features_only: bool = False,
                 **kwargs) -> nn.Module:
    name = model_name.split(".")[0]
    if name not in ("fake_convnet", "fake_nhwc", "fake_vit"):
        raise RuntimeError(f"Unknown model ({model_name})")
    if pretrained:
        PRETRAINED_CALLS.append(model_name)
        torch.manual_seed(1234)  # "the published weights": the same every time
    model = FakeNet()
    model.pretrained_cfg = _cfg(name)
    if not features_only:
        return model
    entries = model.feature_info
    if name == "fake_vit":  # every map at stride 16, like a plain ViT
        entries = [dict(e, reduction=16) for e in entries]
    features = FakeFeatures(model, entries, "NHWC" if name == "fake_nhwc" else "NCHW")
    features.pretrained_cfg = _cfg(name)
    return features


def install(monkeypatch) -> types.ModuleType:
    """Make ``import timm`` return this module for one test."""
    module = sys.modules[__name__]
    PRETRAINED_CALLS.clear()
    monkeypatch.setitem(sys.modules, "timm", module)
    return module

"""The backbone adapter on real timm models (``pretrained=False``; skipped where timm does not
import: on a CPU-only torch wheel, PyPI's torchvision, which timm imports, does not load; with
``TRANET_REQUIRE_TIMM=1``, as in CI's timm venv (.ci/run), that fails instead of skipping).

Exactness: ``timm:legacy_seresnet50`` loaded from a timm state_dict and our ``senet50`` loaded with
the same tensors under the release's names give the same stride-8/16/32 maps. A short run on two
other backbones learns, and its checkpoint predicts through ``model.predict`` with ImageNet input.
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from model.nets.transforms import IMAGENET, VGGFACE2, to_model_input
from model.nets.tranet import TRANetConfig, build_model
from model.weights import hub
from model.weights.pretrained import load_pretrained
from model.weights.vggface2 import remap_timm_legacy_names

try:
    import timm
except Exception as err:  # ImportError, or torchvision failing to load beside this torch
    _why = f"timm does not import here ({type(err).__name__}: {err})"
    if os.environ.get("TRANET_REQUIRE_TIMM") == "1":  # CI's timm venv: a skip would pass silently
        pytest.fail(f"{_why}; TRANET_REQUIRE_TIMM=1 asks for these tests to run", pytrace=False)
    pytest.skip(_why, allow_module_level=True)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


def _tranet(backbone: str, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TRANetConfig(backbone=backbone, preset="small", image_size=64, **kw))


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _randomise_bn(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)


def test_legacy_seresnet50_from_timm_equals_our_senet50(tmp_path) -> None:
    torch.manual_seed(3)
    reference = timm.create_model("legacy_seresnet50", pretrained=False)
    _randomise_bn(reference)
    torch.save(reference.state_dict(), tmp_path / "legacy.pth")
    release_names = remap_timm_legacy_names(reference.state_dict())
    torch.save(release_names, tmp_path / "release.pth")

    ours = build_model(TRANetConfig(backbone="senet50", image_size=64)).eval()
    theirs = build_model(TRANetConfig(backbone="timm:legacy_seresnet50", image_size=64)).eval()
    mine, report = load_pretrained(ours, tmp_path / "release.pth"), load_pretrained(
        theirs, tmp_path / "legacy.pth")
    assert report.missing == [] and report.unexpected == ["last_linear.bias", "last_linear.weight"]
    assert report.tensors == len(theirs.backbone.body.state_dict())
    assert mine.input_transform == VGGFACE2.as_dict()
    assert report.input_transform == IMAGENET.as_dict()  # timm's weights of that name are ImageNet's
    assert theirs.backbone.feature_channels == ours.backbone.feature_channels == (512, 1024, 2048)
    x = torch.randn(2, 3, 96, 96) * 50
    with torch.no_grad():
        for a, b in zip(theirs.backbone.feature_maps(x), ours.backbone.feature_maps(x)):
            assert _relative_error(a, b) <= 1e-5


def test_vggface2_pickle_loads_into_timm_legacy_seresnet50(tmp_path) -> None:
    """The release pickle (release names, numpy arrays) also feeds the timm twin of SENet-50,
    and then brings its BGR/VGGFace2-mean transform along."""
    ours = build_model(TRANetConfig(backbone="senet50", image_size=64)).eval()
    _randomise_bn(ours)
    arrays = {k: v.numpy() for k, v in ours.backbone.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    with open(tmp_path / "senet50_ft_weight.pkl", "wb") as f:
        pickle.dump(arrays, f, protocol=2)
    theirs = build_model(TRANetConfig(backbone="timm:legacy_seresnet50", image_size=64)).eval()
    report = load_pretrained(theirs, tmp_path / "senet50_ft_weight.pkl")
    assert report.format == "vggface2-pickle" and report.input_transform == VGGFACE2.as_dict()
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.no_grad():
        for a, b in zip(theirs.backbone.feature_maps(x), ours.backbone.feature_maps(x)):
            assert _relative_error(a, b) <= 1e-5


def _frozen_names(model: torch.nn.Module) -> list[str]:
    names = {id(m): k for k, m in model.backbone.body.named_modules()}
    return [names[id(m)] for m in model.frozen_modules()]


@pytest.mark.parametrize("name, stem, stride4", [
    ("resnet18", ["conv1", "bn1", "act1"], ["maxpool", "layer1"]),
    ("efficientnet_b0", ["conv_stem", "bn1", "blocks.0"], ["blocks.1"]),
    ("convnext_atto", ["stem_0", "stem_1"], ["stages_0"]),
])
def test_frozen_blocks_on_real_timm_models(name, stem, stride4) -> None:
    """Block 1 = the stem, block 2 = + the stride-4 stage, on three families' real layouts."""
    assert _frozen_names(_tranet(f"timm:{name}", frozen_blocks=1)) == stem
    model = _tranet(f"timm:{name}")  # the timm default: 2
    assert _frozen_names(model) == stem + stride4
    frozen = tuple(f"{s}." for s in stem + stride4)
    for param_name, param in model.backbone.body.named_parameters():
        assert param.requires_grad != param_name.startswith(frozen), param_name


@pytest.mark.parametrize("name, where, host", [
    ("resnet18", "hf-hub:timm/resnet18.a1_in1k", "huggingface.co"),
    ("legacy_seresnet50", "se_resnet50-ce0d4300.pth", "github.com"),  # URL-only weights
])
def test_hub_offline_with_real_timm_names_the_file(name, where, host, monkeypatch) -> None:
    model = _tranet(f"timm:{name}")

    def no_network(*_a, **_k):
        raise AssertionError("no download may be attempted")

    monkeypatch.setattr(timm, "create_model", no_network)
    monkeypatch.setattr(hub, "cached_weights", lambda *a, **k: None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "host_reachable", no_network)
    with pytest.raises(hub.HubUnavailableError, match=f"HF_HUB_OFFLINE.*--pretrained {name}.pth"):
        load_pretrained(model, "hub")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    probed = []
    monkeypatch.setattr(hub, "host_reachable", lambda h, *a, **k: probed.append(h) or False)
    with pytest.raises(hub.HubUnavailableError) as err:
        load_pretrained(model, "hub")
    assert probed == [host] and where in str(err.value) and f"cannot reach {host}" in str(err.value)


@pytest.fixture(scope="module")
def shards64(tmp_path_factory):
    from trainer_fixtures import make_dataset

    return make_dataset(tmp_path_factory.mktemp("timm"), frames=64, size=64)


@pytest.mark.parametrize("backbone", ["timm:resnet18", "timm:efficientnet_b0"])
def test_short_run_on_a_timm_backbone_learns_and_predicts(backbone, shards64, tmp_path) -> None:
    from model.predict import main as predict
    from model.train import TrainConfig, train

    shards, manifest = shards64
    torch.manual_seed(0)
    weights = tmp_path / "weights.pth"
    torch.save(timm.create_model(backbone[5:], pretrained=False).state_dict(), weights)
    out = tmp_path / "run"
    train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(out),
                      preset="small", backbone=backbone, pretrained=str(weights), frozen_blocks=0,
                      epochs=5, batches_per_epoch=6, batch_size=16, workers=0, quiet=True,
                      lr=0.1, lr_schedule="cosine", select_on="test"))
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    losses = [e["train_loss"] for e in history]
    assert losses[-1] < 0.75 * losses[0], losses
    config = json.loads((out / "config.json").read_text())
    assert config["model_config"]["input_transform"] == IMAGENET.as_dict()
    assert config["pretrained"]["format"] == "state_dict"
    _predict_matches_imagenet_input(out / "best.pt", tmp_path, predict)


def _predict_matches_imagenet_input(checkpoint, tmp_path, predict) -> None:
    import cv2
    import pandas as pd

    from model.engine.checkpoint import load_for_inference
    from model.benchmarks.synthetic import astronaut_head
    from pipeline.alignment import AlignmentConfig, align_face
    from model.inference.face_search import DEFAULT_MIN_FACE, still_landmarker
    from pipeline.face_landmarks import DEFAULT_MIN_SCORE

    model, meta = load_for_inference(checkpoint)
    assert model.input_transform == IMAGENET
    image = np.full((320, 400, 3), 110, np.uint8)
    image[20:300, 60:340] = astronaut_head()
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert predict(["--checkpoint", str(checkpoint), "--images", str(tmp_path / "face.png"),
                    "--out", str(tmp_path / "pred"), "--no-progress"]) == 0
    row = pd.read_csv(tmp_path / "pred" / "face.csv", skipinitialspace=True).iloc[0]
    probs = row[[f"AU{a:02d}_p" for a in meta["au_ids"]]].to_numpy(float)
    size = int(meta["image_size"])
    # the landmarks model.predict finds in a still image (searched down to --min-face)
    face = still_landmarker(DEFAULT_MIN_FACE, None, DEFAULT_MIN_SCORE).detect(image)
    aligned, _, _ = align_face(image, face.landmarks66, AlignmentConfig(
        size=size, nose_target=tuple(meta["nose_target"]), chin_target=tuple(meta["chin_target"])))
    with torch.inference_mode():
        expected = torch.sigmoid(model(to_model_input(aligned[None], IMAGENET)))[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=2e-4)

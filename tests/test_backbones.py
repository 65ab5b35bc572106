"""TRA-Net on other backbones: the timm adapter, --pretrained FILE|hub, the input transform.

The adapter's contract with timm is tested on ``fake_timm`` (always) and, where timm imports, on
real timm models built with ``pretrained=False`` (test_backbones_timm.py). No test touches the
network: the hub is reached only through a monkeypatched probe.
"""
from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
import torch

import fake_timm
from model.engine.checkpoint import load_checkpoint, load_for_inference
from model.nets.backbones import BackboneError, parse_backbone
from model.nets.transforms import (IMAGENET, VGGFACE2, from_model_input, resolve_transform,
                                   to_model_input, transform_from_mean_std)
from model.nets.tranet import TRANetConfig, build_model
from model.weights import hub
from model.weights.pretrained import load_pretrained
from model.weights.vggface2 import WeightsError
from trainer_fixtures import make_dataset

FAKE = "timm:fake_convnet"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest: tiny models, one thread


@pytest.fixture
def timm(monkeypatch):
    return fake_timm.install(monkeypatch)


def _model(backbone: str = FAKE, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(TRANetConfig(backbone=backbone, preset="small", image_size=64, **kw))


# -- names and the optional timm -----------------------------------------------------------------

def test_backbone_names() -> None:
    assert parse_backbone("senet50") == ("senet50", None)
    assert parse_backbone("timm:resnet50.tv_in1k") == ("timm", "resnet50.tv_in1k")
    for bad in ("resnet50", "timm:", "senet"):
        with pytest.raises(BackboneError, match="senet50.*timm:<model name>"):
            parse_backbone(bad)


def test_without_timm_the_error_says_how_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # "import timm" raises ImportError
    with pytest.raises(BackboneError, match=r'pip install -e "\.\[timm\]"'):
        build_model(TRANetConfig(backbone="timm:resnet50"))
    _model("senet50")  # the default backbone never needs timm


def test_unknown_timm_model_and_missing_strides_are_clear_errors(timm) -> None:
    with pytest.raises(BackboneError, match="no_such_net"):
        _model("timm:no_such_net")
    with pytest.raises(BackboneError, match=r"strides \[16, 16, 16, 16, 16\].*missing \[8, 32\]"):
        _model("timm:fake_vit")


# -- the adapter ---------------------------------------------------------------------------------

def test_timm_backbone_feeds_the_same_tranet(timm) -> None:
    model = _model()
    backbone = model.backbone
    assert backbone.feature_channels == (32, 64, 128)  # the last maps at strides 8, 16, 32
    x = torch.randn(2, 3, 64, 64)
    maps = backbone.feature_maps(x)
    assert [tuple(m.shape[1:]) for m in maps] == [(32, 8, 8), (64, 4, 4), (128, 2, 2)]
    # The decoder mirrors those maps, so the head works on the stride-8 map as on SENet's layer2.
    assert tuple(model.features(x).shape) == (2, 32, 8, 8)
    assert tuple(model(x).shape) == (2, 8)
    assert model.branch_names == _model("senet50").branch_names


def test_nhwc_feature_maps_are_turned_channels_first(timm) -> None:
    nchw, nhwc = _model(), _model("timm:fake_nhwc")  # same seed, same weights
    nhwc.load_state_dict(nchw.state_dict())
    x = torch.randn(2, 3, 64, 64)
    for a, b in zip(nchw.backbone.feature_maps(x), nhwc.backbone.feature_maps(x)):
        torch.testing.assert_close(a, b)


def test_frozen_blocks_follow_the_stage_strides(timm) -> None:
    names = {}
    for n in range(5):
        model = _model(frozen_blocks=n)
        body = dict((id(m), k) for k, m in model.backbone.body.named_modules())
        names[n] = [body[id(m)] for m in model.frozen_modules()]
    assert names[0] == []
    assert names[1] == ["stem_0", "stem_1", "stem_2"]              # the stem (stride 2)
    assert names[2] == names[1] + ["stages_0"]                      # + the stride-4 stage
    assert names[4] == names[1] + ["stages_0", "stages_1", "stages_2"]
    assert TRANetConfig(backbone=FAKE, preset="small").resolved_frozen_blocks == 2  # timm default

    model = _model(frozen_blocks=2)
    model.train()
    frozen = {id(p) for m in model.frozen_modules() for p in m.parameters()}
    assert frozen and all(not p.requires_grad for p in model.parameters() if id(p) in frozen)
    assert not model.backbone.body.stem_1.training and model.backbone.body.stages_1[1].training
    before = {k: v.clone() for k, v in model.backbone.body.stages_0.state_dict().items()}
    model(torch.randn(4, 3, 64, 64))  # a training-mode pass: frozen BN statistics stay put
    for k, v in model.backbone.body.stages_0.state_dict().items():
        assert torch.equal(v, before[k]), k


# -- --pretrained FILE ---------------------------------------------------------------------------

def _saved_full_model(timm, path, seed: int = 7) -> tuple[torch.nn.Module, str]:
    torch.manual_seed(seed)
    full = timm.create_model("fake_convnet")
    for m in full.modules():  # non-trivial BN statistics, so a missed buffer would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    torch.save(full.state_dict(), path)
    return full.eval(), str(path)


def test_state_dict_file_loads_under_flattened_names_and_is_reported(timm, tmp_path) -> None:
    full, path = _saved_full_model(timm, tmp_path / "fake.pth")
    model = _model().eval()
    report = load_pretrained(model, path)
    body = model.backbone.body
    assert report.format == "state_dict" and report.source == path
    assert report.tensors == len(body.state_dict())
    assert report.missing == [] and report.unexpected == ["head.bias", "head.weight"]
    assert report.input_transform == transform_from_mean_std(fake_timm.MEAN, fake_timm.STD).as_dict()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = full.stages[:2](full.stem(x))  # the full model's stride-8 map
        torch.testing.assert_close(model.backbone.feature_maps(x)[0], expected)


def test_state_dict_that_does_not_fit_names_what_is_missing(timm, tmp_path) -> None:
    full, _ = _saved_full_model(timm, tmp_path / "fake.pth")
    state = full.state_dict()
    del state["stages.1.0.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match=r"partial\.pth.*missing: stages_1\.0\.weight"):
        load_pretrained(_model(), tmp_path / "partial.pth")
    state = full.state_dict()
    state["stages.0.0.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="mis-shaped: stages_0.0.weight"):
        load_pretrained(_model(), tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match="no such weight file"):
        load_pretrained(_model(), tmp_path / "absent.pth")


# -- --pretrained hub ----------------------------------------------------------------------------

def _no_probe(*_args, **_kw):
    raise AssertionError("the network must not be probed")


def test_hub_with_hf_hub_offline_fails_at_once_naming_the_file(timm, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr(hub, "host_reachable", _no_probe)
    with pytest.raises(hub.HubUnavailableError) as err:
        load_pretrained(_model(), "hub")
    message = str(err.value)
    assert "HF_HUB_OFFLINE" in message and "timm/fake_convnet.fake_in1k" in message
    assert "create_model('fake_convnet', pretrained=True)" in message
    assert "--pretrained fake_convnet.pth" in message
    assert fake_timm.PRETRAINED_CALLS == []  # timm was never asked to download


def test_hub_unreachable_fails_with_the_file_to_bring(timm, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    probed = []
    monkeypatch.setattr(hub, "host_reachable", lambda host, *a, **k: probed.append(host) or False)
    with pytest.raises(hub.HubUnavailableError, match=r"cannot reach huggingface\.co.*"
                       r"--pretrained fake_convnet\.pth"):
        load_pretrained(_model(), "hub")
    assert probed == ["huggingface.co"] and fake_timm.PRETRAINED_CALLS == []


def test_hub_reachable_loads_timms_weights_and_reports_them(timm, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hub, "host_reachable", lambda *a, **k: True)
    model = _model()
    report = load_pretrained(model, "hub")
    assert fake_timm.PRETRAINED_CALLS == ["fake_convnet"]
    assert report.format == "hub" and report.source == "hf-hub:timm/fake_convnet.fake_in1k"
    assert report.tensors == len(model.backbone.body.state_dict())
    published = timm.create_model("fake_convnet", pretrained=True).state_dict()
    torch.testing.assert_close(model.backbone.body.stages_2[0].weight, published["stages.2.0.weight"])


def test_hub_for_senet50_names_the_vggface2_file() -> None:
    with pytest.raises(WeightsError, match="senet50_ft_weight.pkl"):
        load_pretrained(_model("senet50"), "hub")


def test_host_probe_on_loopback() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        assert hub.host_reachable("127.0.0.1", port, timeout=2.0)
    finally:
        server.close()
    assert not hub.host_reachable("127.0.0.1", port, timeout=2.0)  # nothing listens now


# -- the input transform -------------------------------------------------------------------------

def test_imagenet_transform_is_rgb_unit_scale_mean_std() -> None:
    rgb = torch.randint(0, 256, (2, 5, 6, 3), dtype=torch.uint8)
    x = to_model_input(rgb, IMAGENET)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    expected = (rgb.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(x, expected)
    assert torch.equal(from_model_input(x, IMAGENET), rgb)
    assert torch.equal(from_model_input(to_model_input(rgb), VGGFACE2), rgb)
    assert resolve_transform(IMAGENET.as_dict()) == IMAGENET == resolve_transform("imagenet")
    assert resolve_transform(None) == VGGFACE2
    assert transform_from_mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) == IMAGENET
    with pytest.raises(ValueError, match="unknown input transform"):
        resolve_transform("caffe")


def test_model_transform_defaults_to_its_backbone_and_follows_the_config(timm) -> None:
    assert _model("senet50").input_transform == VGGFACE2
    assert _model().input_transform.mean == fake_timm.MEAN  # the timm model's pretrained_cfg
    assert _model(input_transform="imagenet").input_transform == IMAGENET


# -- a run on a timm backbone, end to end (fake timm: runs everywhere) -----------------------------

@pytest.fixture(scope="module")
def shards64(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("bb"), frames=48, size=64)


def test_training_records_weights_and_transform_and_evaluation_uses_them(
        timm, shards64, tmp_path, monkeypatch) -> None:
    from model.engine.evaluator import evaluate_checkpoint
    from model.train import TrainConfig, train

    _, weights = _saved_full_model(timm, tmp_path / "fake.pth")
    shards, manifest = shards64
    out = tmp_path / "run"
    train(TrainConfig(shards=str(shards), manifest=str(manifest), fold=1, out=str(out),
                      preset="small", backbone=FAKE, pretrained=weights, frozen_blocks=0,
                      epochs=4, batches_per_epoch=6, batch_size=16, workers=0, quiet=True,
                      lr=0.1, lr_schedule="cosine"))
    losses = [e["train_loss"] for e in json.loads((out / "metrics.json").read_text())["epochs"]]
    # it learns: seeds 0-4 (2-core EPYC, torch 2.13) end at 0.65-0.69 of epoch 1; lr 1e-9 at 1.00
    assert losses[-1] < 0.8 * losses[0], losses
    expected = transform_from_mean_std(fake_timm.MEAN, fake_timm.STD).as_dict()
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained"]["source"] == weights and config["pretrained"]["tensors"] > 0
    assert config["pretrained"]["unexpected"] == ["head.bias", "head.weight"]
    assert config["model_config"]["input_transform"] == expected
    assert config["model_config"]["backbone"] == FAKE
    best = load_checkpoint(out / "best.pt")
    assert best["pretrained"] == config["pretrained"]
    model, meta = load_for_inference(out / "best.pt")
    assert model.input_transform.as_dict() == expected and meta["pretrained"]["format"] == "state_dict"

    import model.engine.forward as trainer

    used = []

    def spy(images, transform):
        used.append(transform)
        return to_model_input(images, transform)

    monkeypatch.setattr(trainer, "to_model_input", spy)
    result = evaluate_checkpoint(out / "best.pt", shards, manifest)  # no transform given
    assert used and all(t.as_dict() == expected for t in used)
    summary = json.loads((out / "results.json").read_text())
    assert result["metrics"]["f1"] == pytest.approx(summary["test"]["f1"])


def test_predict_applies_the_checkpoints_transform(timm, tmp_path, monkeypatch) -> None:
    """model.predict on a face photo, no transform flag: the CSV's probabilities are those of
    the checkpoint's own transform (and differ from VGGFace2's)."""
    import cv2
    import pandas as pd

    from model.engine.checkpoint import save_checkpoint
    from model.predict import main as predict
    from model.benchmarks.synthetic import astronaut_head
    from pipeline.alignment import AlignmentConfig, align_face
    from model.inference.face_search import DEFAULT_MIN_FACE, still_landmarker
    from pipeline.face_landmarks import DEFAULT_MIN_SCORE

    size, nose, chin = 64, (32.0, 28.8), (32.0, 54.4)
    model = _model(au_ids=(1, 2, 4, 6, 9, 12, 25, 26), center=(0.5, 0.45))
    _, weights = _saved_full_model(timm, tmp_path / "fake.pth")
    load_pretrained(model, weights)
    with torch.no_grad():  # a head that answers strongly, so that the input's scale shows
        for branch in model.branches.values():
            branch.fc2.weight.mul_(200.0)
    model.eval()
    checkpoint = save_checkpoint(tmp_path / "fake.pt", {
        "model": model.state_dict(), "model_config": vars(model.config).copy(),
        "data": {"au_ids": list(model.config.au_ids), "threshold": 3, "image_size": size,
                 "nose_target": list(nose), "chin_target": list(chin),
                 "alignment": {"config": {"encoding": "raw"}, "source_image_size": size}}})
    image = astronaut_head()
    cv2.imwrite(str(tmp_path / "face.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    import model.inference.backends as backends

    used = []
    monkeypatch.setattr(backends, "to_model_input",
                        lambda images, transform: used.append(transform) or to_model_input(images, transform))
    assert predict(["--checkpoint", str(checkpoint), "--images", str(tmp_path / "face.png"),
                    "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert used == [model.input_transform] and model.input_transform.name == "rgb01"
    row = pd.read_csv(tmp_path / "out" / "face.csv", skipinitialspace=True).iloc[0]
    probs = row[[f"AU{a:02d}_p" for a in model.config.au_ids]].to_numpy(float)

    # the landmarks model.predict finds in a still image (searched down to --min-face)
    face = still_landmarker(DEFAULT_MIN_FACE, None, DEFAULT_MIN_SCORE).detect(image)
    aligned, _, _ = align_face(image, face.landmarks66, AlignmentConfig(size=size, nose_target=nose,
                                                                        chin_target=chin))
    with torch.inference_mode():
        right = torch.sigmoid(model(to_model_input(aligned[None], model.input_transform)))[0]
        wrong = torch.sigmoid(model(to_model_input(aligned[None], VGGFACE2)))[0]
    np.testing.assert_allclose(probs, right.numpy(), atol=2e-4)
    assert np.abs(probs - wrong.numpy()).max() > 1e-3  # the CSV keeps 4 decimals


def test_imagenet_transform_option_and_bad_options(timm, shards64, tmp_path, caplog,
                                                  capsys) -> None:
    from model.train import main

    shards, manifest = shards64
    base = ["--shards", str(shards), "--manifest", str(manifest), "--fold", "1", "--preset",
            "small", "--epochs", "1", "--batches-per-epoch", "1", "--batch-size", "4",
            "--workers", "0", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--backbone", FAKE,
                        "--input-transform", "imagenet", "--frozen-blocks", "1"]) == 0
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_config"]["input_transform"] == IMAGENET.as_dict()
    assert config["model_config"]["frozen_blocks"] == 1 and config["pretrained"] is None
    assert main(base + ["--out", str(tmp_path / "b"), "--backbone", "resnet50"]) == 1
    assert "unknown backbone 'resnet50'" in caplog.text
    assert main(base + ["--out", str(tmp_path / "c"), "--backbone", FAKE, "--pretrained",
                        str(tmp_path / "nothing.pth")]) == 2  # a file the user named: bad input
    assert "nothing.pth: no such weight file" in capsys.readouterr().err  # the shared handler


def test_old_checkpoints_without_a_transform_keep_vggface2(tmp_path) -> None:
    from model.engine.checkpoint import save_checkpoint

    config = TRANetConfig(preset="small", image_size=32)
    model = build_model(config)
    recorded = {k: v for k, v in vars(config).items() if k not in ("backbone", "input_transform")}
    save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "model_config": recorded,
                                          "data": {"au_ids": list(config.au_ids)}})
    loaded, _ = load_for_inference(tmp_path / "old.pt")
    assert loaded.input_transform == VGGFACE2 and loaded.config.backbone == "senet50"
    x = to_model_input(np.zeros((1, 32, 32, 3), np.uint8))
    torch.testing.assert_close(loaded(x), model.eval()(x))


def test_timm_that_does_not_import_is_explained(monkeypatch) -> None:
    import importlib

    real = importlib.import_module

    def broken(name, *args):
        if name == "timm":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", broken)
    with pytest.raises(BackboneError, match="does not import.*torchvision::nms.*torchvision"):
        build_model(TRANetConfig(backbone="timm:resnet50"))


def test_bench_compares_backbones_beside_senet50(timm, tmp_path, capsys) -> None:
    from model.bench import main as bench

    results = bench(["--backbone", FAKE, "senet50", "--full-batch", "2", "--full-size", "64",
                     "--flops-size", "64", "--steps", "1", "--warmup", "0", "--device", "cpu",
                     "--out", str(tmp_path / "bench.json")])
    rows = results["backbones"]
    assert [r["backbone"] for r in rows] == ["senet50", FAKE]  # SENet-50 first, once
    senet, fake = rows
    assert senet["train_vs_senet50"] == 1.0 and senet["frozen_blocks"] == 2
    assert 25 < senet["params_M"] < 40 and senet["trainable_params_M"] < senet["params_M"]
    assert fake["params_M"] < senet["params_M"] and 0 < fake["gflops"] < senet["gflops"]
    assert all(r["train_img_s"] > 0 and r["infer_img_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "bench.json").read_text())["backbones"] == rows
    assert "timm:fake_convnet" in capsys.readouterr().out


def test_timm_checkpoint_without_timm_is_a_checkpoint_error(timm, tmp_path, monkeypatch) -> None:
    from model.engine.checkpoint import CheckpointError, save_checkpoint

    model = _model()
    save_checkpoint(tmp_path / "t.pt", {"model": model.state_dict(),
                                        "model_config": vars(model.config).copy(),
                                        "data": {"au_ids": list(model.config.au_ids)}})
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(CheckpointError, match=r"t\.pt: its backbone cannot be built here.*pip install"):
        load_for_inference(tmp_path / "t.pt")


def test_recipe_line_names_the_backbone_its_weights_and_the_input_transform() -> None:
    from model.evaluation.provenance import recipe_line

    timm_run = {"train_config": {"backbone": FAKE, "pretrained": "/w/resnet.pth", "preset": "full"},
                "model_config": {"backbone": FAKE, "preset": "full",
                                 "input_transform": IMAGENET.as_dict()},
                "pretrained": {"source": "/w/resnet.pth", "format": "state_dict"}}
    line = recipe_line(timm_run)
    assert f"backbone {FAKE}, weights resnet.pth (state_dict); input imagenet;" in line
    hub_run = {"train_config": {"backbone": FAKE, "pretrained": "hub"},
               "model_config": {"backbone": FAKE, "preset": "full"},
               "pretrained": {"source": "hf-hub:timm/x", "format": "hub"}}
    assert f"backbone {FAKE}, weights timm hub (hf-hub:timm/x);" in recipe_line(hub_run)
    senet_small = {"train_config": {"backbone": "senet50"},
                   "model_config": {"backbone": "senet50", "preset": "small",
                                    "input_transform": VGGFACE2.as_dict()}}
    assert ("backbone reduced SENet (small preset), from scratch; input vggface2;"
            in recipe_line(senet_small))
    assert "backbone SENet-50, from scratch; image" in recipe_line({"model_config": {"preset": "full"}})


def test_both_transforms_build_their_mean_and_std_once_per_device(monkeypatch) -> None:
    from model.nets import transforms

    transforms._cached_per_channel.cache_clear()
    made = []
    real = torch.tensor
    monkeypatch.setattr(transforms.torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    rgb = torch.randint(0, 256, (2, 8, 8, 3), dtype=torch.uint8)
    for _ in range(3):
        for transform in (VGGFACE2, IMAGENET):
            transforms.to_model_input(rgb, transform)
    assert len(made) == 3  # VGGFace2 mean; ImageNet mean and std: each once, not once a batch

"""SENet-50 layout of the VGGFace2 release and the safe weight loader."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from model.nets.senet import SENet, senet50
from model.nets.tranet import TRANetConfig, build_model
from model.weights.vggface2 import (UnsafePickleError, WeightsError, load_backbone_weights,
                                    load_vggface2_weights, read_weight_file)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _release_state(module: torch.nn.Module) -> dict[str, np.ndarray]:
    """The release's pickle content: name -> numpy array, no num_batches_tracked."""
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _randomise_bn(module: torch.nn.Module, seed: int) -> None:
    # Fresh BN layers have mean 0 / var 1; give them values so a skipped copy would show.
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _small_senet(include_top: bool = True) -> SENet:
    return SENet((1, 1, 1, 1), num_classes=5, include_top=include_top, base_width=16)


@pytest.fixture(scope="module")
def release_pickle(tmp_path_factory) -> tuple[str, SENet]:
    torch.manual_seed(0)
    model = senet50().eval()
    _randomise_bn(model, 0)
    path = tmp_path_factory.mktemp("weights") / "senet50_ft_weight.pkl"
    with open(path, "wb") as f:
        pickle.dump(_release_state(model), f, protocol=2)
    return str(path), model


def test_state_dict_matches_release_layout() -> None:
    state = {k: tuple(v.shape) for k, v in senet50().state_dict().items()
             if not k.endswith("num_batches_tracked")}
    assert len(state) == 331
    expected = {
        "conv1.weight": (64, 3, 7, 7), "bn1.running_var": (64,),
        "layer1.0.conv1.weight": (64, 64, 1, 1), "layer1.0.bn1.weight": (64,),
        "layer1.0.conv2.weight": (64, 64, 3, 3), "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer1.0.conv4.weight": (16, 256, 1, 1), "layer1.0.conv4.bias": (16,),
        "layer1.0.conv5.weight": (256, 16, 1, 1), "layer1.0.conv5.bias": (256,),
        "layer1.0.downsample.0.weight": (256, 64, 1, 1), "layer1.0.downsample.1.running_mean": (256,),
        "layer4.0.conv4.weight": (128, 2048, 1, 1), "layer4.2.conv5.weight": (2048, 128, 1, 1),
        "fc.weight": (8631, 2048), "fc.bias": (8631,),
    }
    for key, shape in expected.items():
        assert state[key] == shape, key
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in state if k.startswith("layer")}
    assert sorted(blocks) == sorted(f"layer{i}.{j}" for i, n in zip(range(1, 5), (3, 4, 6, 3)) for j in range(n))
    assert not any(k.startswith(f"layer{i}.1.downsample") for i in range(1, 5) for k in state)


def test_strides_sit_on_first_1x1_conv_and_stem_pools_with_ceil() -> None:
    model = senet50()
    for name in ("layer2", "layer3", "layer4"):
        block = getattr(model, name)[0]
        assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
        assert block.downsample[0].stride == (2, 2)
    assert model.layer1[0].conv1.stride == (1, 1)
    pool = model.maxpool
    assert (pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode) == (3, 2, 0, True)
    # 64 input: conv -> 32, ceil-mode pool -> 16 (floor would give 15), then /2 per stage.
    with torch.no_grad():
        shapes = [tuple(s.shape[1:]) for s in model.stages(torch.zeros(1, 3, 64, 64))]
    assert shapes == [(256, 16, 16), (512, 8, 8), (1024, 4, 4), (2048, 2, 2)]


def test_release_pickle_round_trip_gives_identical_logits(release_pickle) -> None:
    path, source = release_pickle
    target = senet50().eval()
    report = load_vggface2_weights(target, path)
    assert len(report["loaded"]) == 331 and report["skipped"] == []
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected, got = source(x), target(x)
    assert got.shape == (1, 8631)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_tranet_backbone_skips_fc_and_takes_everything_else(release_pickle) -> None:
    path, source = release_pickle
    model = build_model(TRANetConfig(preset="full"))
    report = load_backbone_weights(model, path)
    assert report["skipped"] == ["fc.bias", "fc.weight"]
    src = source.state_dict()
    for key, value in model.backbone.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, src[key], rtol=0, atol=0)


def test_small_preset_backbone_reports_mis_shaped_keys(release_pickle) -> None:
    path, _ = release_pickle
    with pytest.raises(WeightsError, match="mis-shaped: .*conv1.weight: file \\(64, 3, 7, 7\\) vs model \\(16, 3, 7, 7\\)"):
        load_backbone_weights(build_model(TRANetConfig(preset="small", image_size=112)), path)


def test_malicious_pickle_is_refused_without_running_it(tmp_path) -> None:
    sentinel = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": np.zeros((1,), np.float32), "x": Exploit()}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl: refusing to load global (posix|os)\.system"):
        load_vggface2_weights(_small_senet(), path)
    assert not sentinel.exists()


def test_pickle_that_is_not_a_dict_of_arrays_is_refused(tmp_path) -> None:
    path = tmp_path / "list.pkl"
    with open(path, "wb") as f:
        pickle.dump([np.zeros(3)], f, protocol=2)
    with pytest.raises(WeightsError, match="holds a list"):
        read_weight_file(path)
    with open(path, "wb") as f:
        pickle.dump({"a": 3}, f, protocol=2)
    with pytest.raises(WeightsError, match="not name -> numpy array"):
        read_weight_file(path)
    with open(path, "wb") as f:  # an object-dtype array unpickles but holds no weights
        pickle.dump({"conv1.weight": np.array([1.0, "x", None], dtype=object)}, f, protocol=2)
    with pytest.raises(WeightsError, match=r"list\.pkl: arrays that are not numeric weights: "
                                           r"conv1\.weight \(object\)"):
        read_weight_file(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path) -> None:
    state = _release_state(_small_senet())
    del state["layer2.0.conv4.bias"]
    state["layer9.extra"] = np.zeros(2, np.float32)
    path = tmp_path / "broken.pkl"
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=2)
    with pytest.raises(WeightsError) as err:
        load_vggface2_weights(_small_senet(), path)
    assert "missing: layer2.0.conv4.bias" in str(err.value)
    assert "unexpected: layer9.extra" in str(err.value)


def test_torch_state_dict_under_timm_legacy_names_loads(tmp_path) -> None:
    torch.manual_seed(1)
    source = _small_senet().eval()
    _randomise_bn(source, 1)
    renamed = {}
    for key, value in source.state_dict().items():
        key = key.replace("conv4.", "se_module.fc1.").replace("conv5.", "se_module.fc2.")
        if key.startswith(("conv1.", "bn1.")):
            key = "layer0." + key
        renamed[key.replace("fc.", "last_linear.") if key.startswith("fc.") else key] = value
    assert "layer0.conv1.weight" in renamed and "layer1.0.se_module.fc1.weight" in renamed
    path = tmp_path / "timm_legacy_seresnet.pth"
    torch.save(renamed, path)
    target = _small_senet().eval()
    load_vggface2_weights(target, path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        # 64x64 input leaves a 2x2 map, too small for the release's 7x7 pool: compare features.
        torch.testing.assert_close(target.stages(x)[-1], source.stages(x)[-1], rtol=0, atol=0)
    torch.testing.assert_close(target.fc.weight, source.fc.weight, rtol=0, atol=0)


def test_unreadable_files_name_themselves(tmp_path) -> None:
    with pytest.raises(WeightsError, match="no such weight file"):
        read_weight_file(tmp_path / "absent.pkl")
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(WeightsError, match=r"junk\.pkl: not a readable weight pickle"):
        read_weight_file(junk)

"""The region branches as one set of grouped ops (model.nets.grouped_branches) give what the
per-region modules give: logits, intensity, gradients, BatchNorm running statistics, checkpoints."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from model.benchmarks.op_count import count_ops
from model.nets.grouped_branches import RegionBranches
from model.nets.regions import ALL_AUS
from model.nets.tranet import TRANetConfig, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64
GROUPED = ["tranet", "tranet_residual", "hm_cbam_no_channel", "hm_cbam_no_spatial", "senet50_hm"]


def _pair(variant: str, **kw) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(grouped model, per-region copy with the same weights)."""
    torch.manual_seed(0)
    model = build_model(TRANetConfig(variant=variant, preset="small", image_size=SIZE,
                                     intensity_aus=ALL_AUS, **kw))
    model.grouped_branches = True  # the default (None) groups off the CPU only
    reference = copy.deepcopy(model)
    reference.grouped_branches = False
    return model, reference


def _step(model, optimizer, x, y, r) -> tuple[torch.Tensor, torch.Tensor]:
    logits, intensity = model(x, with_intensity=True)
    loss = F.binary_cross_entropy_with_logits(logits, y) + F.mse_loss(intensity, r)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), intensity.detach()


@pytest.mark.parametrize("variant", GROUPED)
def test_grouped_branches_train_like_the_per_region_modules(variant: str) -> None:
    model, reference = _pair(variant)
    assert isinstance(model.branches, RegionBranches) and model.branches.can_group()
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
            for m in (model, reference)]
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(3, 3, SIZE, SIZE, generator=g)
        y = (torch.rand(3, 8, generator=g) > 0.5).float()
        r = torch.rand(3, len(ALL_AUS), generator=g) * 5
        got, want = _step(model.train(), opts[0], x, y, r), _step(reference.train(), opts[1], x, y, r)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        # This tiny net (3 frames of 64 px; BatchNorm over a few values) turns 1e-8 of rounding
        # into 1e-4 within three steps whichever path runs, so each step starts from the same
        # weights; the BatchNorm statistics are left to run on their own.
        with torch.no_grad():
            for p, q in zip(reference.parameters(), model.parameters()):
                p.copy_(q)
    # parameters after the steps and every region's BatchNorm statistics (and batch counts)
    want_state = reference.state_dict()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, want_state[key], atol=1e-5, rtol=1e-5, msg=key)
    assert int(model.state_dict()["branches.lower.convs.2.bn2.num_batches_tracked"]) == 3
    x = torch.randn(2, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        for a, b in zip(model.eval()(x, with_intensity=True), reference.eval()(x, with_intensity=True)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_grouped_path_runs_each_branch_layer_once() -> None:
    model, reference = _pair("tranet")
    with torch.no_grad():
        features = model.eval().features(torch.randn(2, 3, SIZE, SIZE))
        model.classify(features)  # the first call stacks the BatchNorm statistics
        grouped = count_ops(lambda: model.classify(features))
        per_region = count_ops(lambda: reference.eval().classify(features))
    ops = grouped.by_op
    # every BatchNorm, convolution and linear layer of the three branches runs once for all three
    assert 3 * ops["native_batch_norm"] == per_region.by_op["native_batch_norm"]
    assert 3 * (ops["convolution"] + ops["addmm"]) <= \
        per_region.by_op["convolution"] + per_region.by_op["addmm"]
    # the rest (weights stacked, one cat each) still leaves well under the per-region head's ops
    assert grouped.total - ops["cat"] < per_region.total / 2, (grouped.top(), per_region.top())
    assert grouped.total < per_region.total


def test_checkpoint_keys_and_old_state_dicts_load() -> None:
    model, reference = _pair("tranet")
    old = reference.state_dict()  # the per-region layout every checkpoint so far has
    assert tuple(old["branches.upper.convs.0.conv1.weight"].shape) == (16, 128, 3, 3)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        model.train()(x)  # train mode: the grouped path has linked its statistics
        reference.train()(x)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    # the optimiser sees the same parameters, each once (the stacked statistics are buffers)
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in reference.named_parameters()] and len(set(names)) == len(names)
    assert len({id(p) for p in model.parameters()}) == len(names)
    for assign in (False, True):
        fresh, _ = _pair("tranet")
        with torch.no_grad():
            fresh.train()(torch.randn(2, 3, SIZE, SIZE))  # its own statistics linked first
        fresh.load_state_dict(reference.state_dict(), assign=assign)
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x), reference.eval()(x), atol=1e-5, rtol=1e-5)
        fresh.train()(x)  # a train step after loading updates the loaded statistics
        reference.train()(x)
        torch.testing.assert_close(fresh.state_dict()["branches.middle.convs.1.bn1.running_mean"],
                                   reference.state_dict()["branches.middle.convs.1.bn1.running_mean"])
        reference.load_state_dict(old)


def test_cpu_default_runs_the_branches_one_by_one() -> None:
    # On a CPU oneDNN's grouped convolutions are slower than three plain ones (training step of
    # the small preset +12 % measured), so the default keeps the per-region ops there.
    model, reference = _pair("tranet")
    model.grouped_branches = None
    with torch.no_grad():
        features = model.eval().features(torch.randn(2, 3, SIZE, SIZE))
        default = count_ops(lambda: model.classify(features))
        one_by_one = count_ops(lambda: reference.eval().classify(features))
    assert default.by_op == one_by_one.by_op


@pytest.mark.parametrize("variant", ["senet50", "senet50_cbam"])
def test_variants_without_region_branches_keep_their_path(variant: str) -> None:
    model, reference = _pair(variant)
    x = torch.randn(2, 3, SIZE, SIZE)
    assert model.branches is None or not model.branches.can_group()
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), reference.eval()(x), atol=0, rtol=0)


def test_statistics_stay_linked_after_conversions_and_copies() -> None:
    model, reference = _pair("tranet")
    model, reference = model.double(), reference.double()  # _apply: new per-region buffers
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, SIZE, SIZE, dtype=torch.float64)
    with torch.no_grad():
        for m in (model, reference, twin):
            m.train()(x)
    key = "branches.upper.attention.0.spatial_gate.bn.running_var"
    for m in (model, twin):
        torch.testing.assert_close(m.state_dict()[key], reference.state_dict()[key])
        assert not torch.equal(m.state_dict()[key], torch.ones_like(m.state_dict()[key]))


def test_grouped_forward_traces_as_one_graph() -> None:
    model, _ = _pair("tranet")
    explained = torch._dynamo.explain(model.train())(torch.randn(2, 3, SIZE, SIZE))
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]


def test_grouped_model_exports_to_onnx_with_a_free_batch_size(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model, reference = _pair("tranet")
    model.eval(), reference.eval()
    path = tmp_path / "grouped.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.randn(2, 3, SIZE, SIZE),), str(path), input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "b"}, "logits": {0: "b"}},
                          opset_version=17, dynamo=False)
    x = torch.randn(3, 3, SIZE, SIZE)  # another batch size than the traced one
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), reference(x), atol=1e-5, rtol=1e-4)

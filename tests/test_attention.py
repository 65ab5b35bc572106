"""SE and CBAM against their definitions on tensors small enough to check by hand."""
from __future__ import annotations

import math

import pytest
import torch

from model.nets.attention import CBAM, ChannelGate, SpatialGate, SqueezeExcite


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sig(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _set(linear: torch.nn.Linear, weight, bias) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.tensor(weight, dtype=torch.float32))
        linear.bias.copy_(torch.tensor(bias, dtype=torch.float32))


def _two_channel_input() -> torch.Tensor:
    # channel 0: mean 1, max 2; channel 1: mean 3, max 5
    return torch.tensor([[[[0.0, 2.0], [0.0, 2.0]], [[1.0, 5.0], [3.0, 3.0]]]])


def test_squeeze_excite_matches_hand_computation() -> None:
    se = SqueezeExcite(2, reduction=2)
    _set(se.fc1, [[1.0, 1.0]], [-2.0])        # relu(1 + 3 - 2) = 2
    _set(se.fc2, [[1.0], [-1.0]], [0.0, 0.5])  # [2, -1.5]
    x = _two_channel_input()
    expected = x * torch.tensor([_sig(2.0), _sig(-1.5)])[None, :, None, None]
    torch.testing.assert_close(se(x), expected)
    se.residual = True
    torch.testing.assert_close(se(x), expected + x)


def test_channel_gate_sums_shared_mlp_over_avg_and_max() -> None:
    gate = ChannelGate(2, reduction=2)
    assert sum(isinstance(m, torch.nn.Linear) for m in gate.modules()) == 2  # one shared MLP
    _set(gate.mlp[0], [[1.0, 0.0]], [0.0])       # hidden = relu(d0)
    _set(gate.mlp[2], [[1.0], [2.0]], [0.0, -1.0])  # out = [h, 2h - 1]
    x = _two_channel_input()
    # avg descriptor d0 = 1 -> [1, 1]; max descriptor d0 = 2 -> [2, 3]; summed [3, 4]
    expected = x * torch.tensor([_sig(3.0), _sig(4.0)])[None, :, None, None]
    torch.testing.assert_close(gate(x), expected)


@pytest.mark.parametrize("pick, reduce", [(0, lambda x: x.amax(1, keepdim=True)),
                                          (1, lambda x: x.mean(1, keepdim=True))])
def test_spatial_gate_uses_max_then_mean_through_7x7_conv_and_bn(pick, reduce) -> None:
    gate = SpatialGate(7).eval()  # BN with running stats 0/1 divides by sqrt(1 + eps)
    assert gate.conv.bias is None and gate.conv.padding == (3, 3)
    with torch.no_grad():
        gate.conv.weight.zero_()
        gate.conv.weight[0, pick, 3, 3] = 1.0  # centre tap of the chosen pooled map
    x = _two_channel_input()
    expected = x * torch.sigmoid(reduce(x) / math.sqrt(1.0 + gate.bn.eps))
    torch.testing.assert_close(gate(x), expected)


def test_cbam_applies_channel_then_spatial_and_switches() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 32, 5, 6)
    cbam = CBAM(32).eval()
    with torch.no_grad():
        cbam.spatial_gate.bn.running_mean.fill_(0.3)
        channel_first = cbam.spatial_gate(cbam.channel_gate(x))
        spatial_first = cbam.channel_gate(cbam.spatial_gate(x))
        torch.testing.assert_close(cbam(x), channel_first)
        assert not torch.allclose(channel_first, spatial_first)

        residual = CBAM(32, residual=True).eval()
        residual.load_state_dict(cbam.state_dict())
        torch.testing.assert_close(residual(x), channel_first + x)

        no_channel = CBAM(32, channel=False).eval()
        assert no_channel.channel_gate is None
        no_channel.spatial_gate.load_state_dict(cbam.spatial_gate.state_dict())
        torch.testing.assert_close(no_channel(x), cbam.spatial_gate(x))

        no_spatial = CBAM(32, spatial=False).eval()
        assert no_spatial.spatial_gate is None
        no_spatial.channel_gate.load_state_dict(cbam.channel_gate.state_dict())
        torch.testing.assert_close(no_spatial(x), cbam.channel_gate(x))
    assert {k.split(".")[0] for k in no_channel.state_dict()} == {"spatial_gate"}
    with pytest.raises(ValueError, match="both gates off"):
        CBAM(32, channel=False, spatial=False)

"""Operations a training step dispatches, held under a budget (issue 25): the full-preset step is
bound by the host launching kernels, so its op count is what CI watches. Counted on CPU with a
dispatch mode (views and aliases excluded), one step as the trainer runs it."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from model.benchmarks.op_count import count_ops, count_train_step_ops
from model.engine.cast_once import autocast_forward
from model.engine.precision import Precision
from model.nets.tranet import TRANetConfig, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Non-view ATen ops of one full-preset fp32 training step (forward, loss, backward, SGD).
FP32_BUDGET = 1000
#: What autocast may add on top (casts hoisted: the weights cast once a step).
AUTOCAST_EXTRA = 0.10


@pytest.fixture(scope="module")
def fp32_count():
    return count_train_step_ops("tranet", "full")


def test_full_training_step_stays_within_the_op_budget(fp32_count) -> None:
    assert 0 < fp32_count.total <= FP32_BUDGET, fp32_count.top(20)
    # the budget does bind: the same step with the branches one by one is well over it
    assert count_train_step_ops("tranet", "full", grouped=False).total > FP32_BUDGET


def test_autocast_adds_at_most_ten_percent(fp32_count) -> None:
    bf16 = count_train_step_ops("tranet", "full", amp=True)
    assert bf16.total <= (1 + AUTOCAST_EXTRA) * fp32_count.total, bf16.top(20)
    assert bf16.by_op["_to_copy"] < 20  # the input and a few activations; no weight casts


def test_counter_skips_views_and_counts_kernels() -> None:
    x = torch.randn(4, 4)
    count = count_ops(lambda: (x.view(16), x.t(), x.detach(), x + 1, x.sum()))
    assert count.total == 2 and set(count.by_op) == {"add", "sum"}


def test_weights_cast_once_give_autocasts_values_and_gradients() -> None:
    torch.manual_seed(0)
    model = build_model(TRANetConfig(preset="small", image_size=64, frozen_blocks=2)).train()
    reference = copy.deepcopy(model)
    precision = Precision("cpu", torch.bfloat16)
    with torch.inference_mode():  # an evaluation first: the reused buffers stay trainable
        autocast_forward(model.eval(), precision, torch.randn(1, 3, 64, 64))
    model.train()
    x, y = torch.randn(3, 3, 64, 64), (torch.rand(3, 8) > 0.5).float()
    for accumulate in (False, True):  # the second pass adds to the first's .grad
        got = autocast_forward(model, precision, x)
        with precision.autocast():
            want = reference(x)
        assert got.dtype == want.dtype == torch.bfloat16
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        for out in (got, want):
            F.binary_cross_entropy_with_logits(out.float(), y).backward()
        mine, theirs = dict(model.named_parameters()), dict(reference.named_parameters())
        for name, p in theirs.items():
            if p.grad is None:  # frozen blocks
                assert mine[name].grad is None, name
            else:
                torch.testing.assert_close(mine[name].grad, p.grad, atol=0, rtol=0, msg=name)
                assert mine[name].grad.stride() == p.stride(), name  # layout kept

"""Mixed precision with the weights cast once a step, in one op, instead of once per use.

Plain autocast casts every convolution's and linear layer's float32 weight (and bias) to the
low-precision dtype where it is used, and casts each gradient back in the backward pass: two ops
a parameter, about 300 a TRA-Net step, which on a GPU bound by kernel launches made bfloat16
slower than float32. :func:`autocast_forward` instead copies all those parameters into one
low-precision buffer with ONE ``_foreach_copy_`` (torch's CUDA kernel for it converts dtypes in
its fused path), runs the model on the copies under the same autocast (which leaves
low-precision tensors alone), and in the backward pass copies their gradients into float32
with one more. The values are autocast's own: the same round-to-nearest cast of the same
tensors, the same low-precision gradients cast back. Other parameters (BatchNorm's) stay float32
as autocast leaves them.
"""
from __future__ import annotations

import weakref
from typing import Any, Sequence

import torch
from torch import nn

from .precision import Precision

#: Modules whose parameters autocast casts (convolutions and linear layers run in low precision).
CAST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def cast_parameters(model: nn.Module) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """(module, name, parameter) of every parameter autocast would cast, each once."""
    found, seen = [], set()
    for module in model.modules():
        if isinstance(module, CAST_MODULES):
            for name, p in module.named_parameters(recurse=False):
                if id(p) not in seen and p.is_floating_point():
                    seen.add(id(p))
                    found.append((module, name, p))
    return found


class _Plan:
    """A model's parameters to cast (found once: walking the modules costs ~2 ms a step) and the
    buffers the copies and their float32 gradients live in, reused every step (a fresh 100 MB
    buffer a step costs ~50 ms of page faults on a CPU). Reuse is safe: a graph still holding
    last step's copies sees them overwritten through the version counter and raises, as for any
    in-place change; and the gradient buffer is used only when every parameter's ``.grad`` is
    None (the trainer's ``zero_grad(set_to_none=True)``), so accumulated gradients never alias
    it. Code that keeps a step's ``.grad`` tensors past ``zero_grad`` sees them overwritten."""

    def __init__(self, model: nn.Module) -> None:
        self.found = cast_parameters(model)
        self.buffers: dict[str, torch.Tensor] = {}

    def valid(self) -> bool:
        # A module or parameter replaced since (a new head, a loaded model) means finding again.
        return all(m._parameters.get(n) is p for m, n, p in self.found)

    def buffer(self, role: str, dtype: torch.dtype, n: int) -> torch.Tensor:
        """The ``role`` ("copies" or "grads") buffer of ``n`` elements, made once."""
        flat, device = self.buffers.get(role), self.found[0][2].device
        if flat is None or flat.dtype != dtype or flat.device != device or flat.numel() != n:
            with torch.inference_mode(False):  # written to by later training steps too
                flat = self.buffers[role] = torch.empty(n, dtype=dtype, device=device)
        return flat


_PLANS: "weakref.WeakKeyDictionary[nn.Module, _Plan]" = weakref.WeakKeyDictionary()


def _plan(model: nn.Module) -> _Plan:
    plan = _PLANS.get(model)
    if plan is None or not plan.valid():
        plan = _PLANS[model] = _Plan(model)
    return plan


def _layout(t: torch.Tensor) -> tuple[torch.Size, tuple[int, ...] | None]:
    """Shape and strides to copy ``t`` into (None: contiguous), keeping a channels_last weight so."""
    dense = t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))
    return t.shape, (t.stride() if dense else None)


def _views(flat: torch.Tensor, layouts: Sequence[tuple[torch.Size, tuple[int, ...] | None]]
           ) -> list[torch.Tensor]:
    """Views of ``flat`` with the given shapes and strides, end to end."""
    views, offset = [], 0
    for shape, stride in layouts:
        n = shape.numel()
        views.append(flat[offset:offset + n].view(shape) if stride is None
                     else flat.as_strided(shape, stride, offset))
        offset += n
    return views


class _CastOnce(torch.autograd.Function):
    """Tensors -> their copies in ``flat``'s dtype (views of it), one op each way; gradients
    come back in the tensors' own dtype."""

    @staticmethod
    def forward(ctx, plan: _Plan, dtype: torch.dtype, *params: torch.Tensor):  # type: ignore[override]
        flat = plan.buffer("copies", dtype, sum(p.numel() for p in params))
        ctx.plan, ctx.params = plan, params
        ctx.layouts = [_layout(p) for p in params]
        copies = _views(flat, ctx.layouts)
        torch._foreach_copy_(copies, list(params))
        ctx.set_materialize_grads(False)  # an unused weight gets no gradient, not zeros
        ctx.mark_non_differentiable(*[c for c, p in zip(copies, params) if not p.requires_grad])
        ctx.dtype = params[0].dtype
        return tuple(copies)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        wanted = [i for i, g in enumerate(grads) if g is not None and ctx.needs_input_grad[i + 2]]
        out: list[torch.Tensor | None] = [None] * len(grads)
        if wanted:
            layouts = [ctx.layouts[i] for i in wanted]
            n = sum(shape.numel() for shape, _ in layouts)
            fresh = any(ctx.params[i].grad is not None for i in wanted)  # accumulating: no alias
            flat = (torch.empty(n, dtype=ctx.dtype, device=grads[wanted[0]].device) if fresh
                    else ctx.plan.buffer("grads", ctx.dtype, n))
            views = _views(flat, layouts)
            torch._foreach_copy_(views, [grads[i] for i in wanted])
            for i, v in zip(wanted, views):
                out[i] = v
        return (None, None, *out)


def uses_cast_once(model: nn.Module, precision: Precision) -> bool:
    """Low precision on a plain module (DDP and torch.compile wrappers keep plain autocast)."""
    return precision.dtype is not None and not hasattr(model, "module") \
        and not hasattr(model, "_orig_mod")


def autocast_forward(model: nn.Module, precision: Precision, *args: Any, **kwargs: Any) -> Any:
    """``model(*args, **kwargs)`` under ``precision``'s autocast, its cast weights cast once.

    The copies stand in for the parameters (``module._parameters``, as ``torch.func``'s
    ``functional_call`` swaps them, without its generic per-name work) for this call only."""
    with precision.autocast():
        plan = _plan(model) if uses_cast_once(model, precision) else None
        found = plan.found if plan is not None else []
        if len({(p.dtype, p.device) for _, _, p in found}) != 1:  # none, or mixed
            return model(*args, **kwargs)
        copies = _CastOnce.apply(plan, precision.dtype, *(p for _, _, p in found))
        try:
            for (module, name, _), copy in zip(found, copies):
                module._parameters[name] = copy
            return model(*args, **kwargs)
        finally:
            for module, name, p in found:
                module._parameters[name] = p

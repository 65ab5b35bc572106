"""One training step as one CUDA graph (``--cuda-graphs``): forward, loss, backward and the
fused SGD update captured once and replayed every step, so the host launches one graph instead
of ~1,500 kernels a step (issue #25: the step at batch 64 was bound by kernel launches).

The step reads static input buffers (the batch's uint8 images, its targets and, with an
intensity loss, its intensity targets) that each batch is copied into; its loss is written to a
static device tensor (the loop's StepLog copies it on the device; nothing waits). The update is
fused SGD on the optimiser's own parameters and momentum buffers
(so checkpoints hold them as before) with the learning rate a device tensor that the host
refreshes with ``fill_`` from the scheduler's float before each replay: no value comes back to
the host. The update is SGD(fused=True)'s kernel (``torch._fused_sgd_``) called directly:
``Optimizer.step`` breaks torch.compile graphs on purpose (torch/optim/optimizer.py,
``_use_grad``) and torch.optim.sgd's fused path is ``torch.compiler.disable``'d.

Capture follows torch's "whole network capture" recipe: warm-up steps on a side stream (cuDNN
picks its kernels, the momentum buffers exist), then capture. The warm-up's updates are undone
(weights, BatchNorm statistics and momentum copied back), so a graphed run trains the same
steps as an eager one. A batch of another size runs the eager step. On a CPU the same body runs
eagerly (``capture=False``): the tests trace it with torch._dynamo and count its host syncs.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import replace
from typing import Any, Callable

import torch
from pipeline.cli import CommandError

from .config import TrainConfig
from .distributed import DistInfo
from .forward import forward_loss, prepare, unwrap, uses_intensity
from .precision import Precision
from ..nets.regions import ALL_AUS

log = logging.getLogger("model.train")

class GraphOptionError(CommandError, ValueError):
    """``--cuda-graphs on`` where no graph can run: a usage error (one line, exit 2)."""


#: Eager steps on a side stream before capture (torch's docs use 3; DDP would need 11).
WARMUP_STEPS = 3


def graphs_wanted(cfg: TrainConfig, device: torch.device, info: DistInfo,
                  precision: Precision) -> tuple[bool, str]:
    """(capture the step, why): ``--cuda-graphs auto`` is on for one CUDA process in fp32 or
    bf16 without --compile; ``on`` refuses (GraphOptionError) where the graph cannot run."""
    why_not = ("not a CUDA device" if device.type != "cuda" else
               "under torchrun (DDP's gradient hooks are not captured here)" if info.enabled else
               "fp16 needs a GradScaler, whose inf checks read back to the host"
               if precision.needs_scaler else "")
    if cfg.cuda_graphs == "off":
        return False, "--cuda-graphs off"
    if why_not:
        if cfg.cuda_graphs == "on":
            raise GraphOptionError(f"--cuda-graphs on: {why_not}; use --cuda-graphs auto or off")
        return False, why_not
    if cfg.compile and cfg.cuda_graphs == "auto":
        return False, "--compile (give --cuda-graphs on to capture the compiled step too)"
    return True, f"one CUDA graph a step ({precision.name})"


class _StaticIntensities:
    """Stands in for the batch's ShardFrames in ``forward_loss``: the intensity targets are
    already in a static device buffer."""

    def __init__(self, step: "GraphStep") -> None:
        self.step = step

    def intensities(self, index: Any, au_ids: Any) -> torch.Tensor:
        return self.step.intensity


class GraphStep:
    """The run's training step over static buffers, captured as a CUDA graph (``capture``) or
    run eagerly (CPU, tests). Call it with a batch; None means "not this shape: step eagerly"."""

    def __init__(self, model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.SGD,
                 device: torch.device, cfg: TrainConfig, precision: Precision,
                 frames: Any = None, capture: bool = True) -> None:
        if len(optimizer.param_groups) != 1:
            raise ValueError("the graphed step updates one parameter group")
        self.model, self.criterion, self.optimizer = model, criterion, optimizer
        self.device, self.capture, self.frames = device, capture, frames
        self.channels_last = cfg.channels_last
        self.precision = replace(precision, cache_enabled=False) if capture else precision
        self.transform = unwrap(model).input_transform
        group = optimizer.param_groups[0]
        group["fused"], group["foreach"] = True, False  # the eager fallback steps fused too
        self.params = [p for p in group["params"] if p.requires_grad]
        if len({(p.device, p.dtype) for p in self.params}) > 1:
            raise ValueError("the graphed step's fused update needs every parameter on one "
                             "device in one dtype")
        self.lr = torch.tensor(float(group["lr"]), device=device)
        self.loss = torch.zeros((), device=device)
        self.images = self.targets = self.index = self.intensity = None
        self.graph: Any = None

    def __call__(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor,
                 scheduler: Any) -> torch.Tensor | None:
        """One step on this batch (the scheduler stepped after it); its loss on the device, or
        None for a batch whose shapes differ from the captured ones."""
        if not self._fill(images, targets, index):
            return None
        # The scheduler's float into the device tensor the update reads: a launch, no wait.
        self.lr.fill_(self.optimizer.param_groups[0]["lr"])
        if not self.capture:
            self.step_fn()
        else:
            if self.graph is None:
                self._capture()
            self.graph.replay()
        with warnings.catch_warnings():  # "scheduler before optimizer.step()": the graph stepped
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step",
                                    category=UserWarning)
            scheduler.step()
        return self.loss

    def step_fn(self) -> None:
        """The captured body: forward, loss, gradients and the fused update, on the buffers.

        The gradients are ``autograd.grad``'s outputs (in the graph's memory pool when
        captured), not ``.grad`` attributes: nothing to zero, nothing an eager step may free."""
        x = prepare(self.images, self.device, self.channels_last, self.transform)
        loss = forward_loss(self.model, self.criterion, x, self.targets, self.device,
                            self.precision, self.index,
                            _StaticIntensities(self) if self.intensity is not None else None)[0]
        self.loss.copy_(loss.detach())
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        group, state = self.optimizer.param_groups[0], self.optimizer.state
        live = [(p, g) for p, g in zip(self.params, grads) if g is not None]
        # SGD(fused=True)'s own kernel, called directly: torch.optim.sgd's wrapper of it is
        # torch.compiler.disable'd (a graph break); momentum buffers exist (_allocate).
        torch._fused_sgd_([p for p, _ in live], [g for _, g in live],
                          [state[p]["momentum_buffer"] for p, _ in live],
                          weight_decay=group["weight_decay"], momentum=group["momentum"],
                          lr=self.lr, dampening=group["dampening"], nesterov=group["nesterov"],
                          maximize=group["maximize"], is_first_step=False)

    def _fill(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> bool:
        """Copy the batch into the static buffers (made by the first batch); False when its
        shapes are not theirs."""
        if self.images is None:
            self._allocate(images, targets, index)
        if images.shape != self.images.shape or targets.shape != self.targets.shape:
            return False
        self.images.copy_(images, non_blocking=True)
        self.targets.copy_(targets, non_blocking=True)
        self.index.copy_(index)
        if self.intensity is not None:
            self.intensity.copy_(self.frames.intensities(index, ALL_AUS), non_blocking=True)
        return True

    def _allocate(self, images: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> None:
        self.images = torch.empty(images.shape, dtype=images.dtype, device=self.device)
        self.targets = torch.empty(targets.shape, dtype=targets.dtype, device=self.device)
        self.index = index.clone()  # host: only the intensity lookup reads it, outside the graph
        if uses_intensity(self.criterion):
            if self.frames is None:
                raise ValueError("intensity targets need the batch's frame index and its "
                                 "ShardFrames")
            sample = self.frames.intensities(index, ALL_AUS)
            self.intensity = torch.empty(sample.shape, dtype=sample.dtype, device=self.device)
        # A zero momentum buffer steps exactly as a first step (buf = 0.9 * 0 + grad = grad):
        # made now, the update never takes the first-step branch a graph would freeze.
        for p in self.params:
            state = self.optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _capture(self) -> None:
        """Warm up on a side stream, capture one step, undo the warm-up's updates."""
        saved = _snapshot(self.model, self.optimizer, self.params)
        rng = torch.cuda.get_rng_state(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self.step_fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: the loader's pin-memory thread may allocate while this thread captures
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.step_fn()
        with torch.no_grad():
            for tensor, copy in saved:
                tensor.copy_(copy)
        torch.cuda.set_rng_state(rng, self.device)
        log.info("captured the training step as one CUDA graph (%d warm-up steps undone)",
                 WARMUP_STEPS)


def _snapshot(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
              params: list[torch.nn.Parameter]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tensor, copy) of everything a step changes: weights, buffers (BatchNorm), momentum."""
    tensors = [*model.parameters(), *model.buffers(),
               *(optimizer.state[p]["momentum_buffer"] for p in params)]
    return [(t, t.detach().clone()) for t in tensors]


def make_graph_step(model: torch.nn.Module, criterion: Callable, optimizer: torch.optim.SGD,
                    device: torch.device, cfg: TrainConfig, info: DistInfo,
                    precision: Precision, frames: Any = None) -> GraphStep | None:
    """The run's graphed step, or None where ``graphs_wanted`` says no (logged)."""
    wanted, why = graphs_wanted(cfg, device, info, precision)
    if info.is_main:  # said on CUDA, where it matters; a CPU run has only the eager step
        log.log(logging.INFO if device.type == "cuda" else logging.DEBUG, "training step: %s",
                why if wanted else f"eager ({why})")
    if not wanted:
        return None
    return GraphStep(model, criterion, optimizer, device, cfg, precision, frames)

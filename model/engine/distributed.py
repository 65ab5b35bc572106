"""Multi-process training helpers: torchrun's environment, devices, and the collectives we use.

Launched by ``torchrun`` (single- or multi-node), every process reads RANK / WORLD_SIZE /
LOCAL_RANK from the environment and joins one process group: NCCL when it trains on CUDA,
gloo on CPU. Without those variables everything degrades to a single process and the helpers
are no-ops.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    """This process's place among the training processes (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group torchrun describes in the environment (if any)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """The device of ``--device``. Under torchrun each process uses the GPU of its local rank:
    "cuda" maps to it, and "cuda:N" naming another GPU is an error (every rank would share it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device {name!r}: not a device ({err})") from None
    if device.type == "cuda" and info.enabled:
        if device.index is not None and device.index != info.local_rank:
            raise ValueError(f"--device {name} under torchrun: each process uses the GPU of its "
                             f"local rank (this one: cuda:{info.local_rank}); pass --device cuda "
                             "and choose GPUs with CUDA_VISIBLE_DEVICES")
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but torch sees no CUDA device")
    if device.type == "cuda" and device.index is None:
        # torch.cuda.set_device and DDP's device_ids need an index: "cuda" is the current GPU.
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def all_reduce_sum(values: torch.Tensor, info: DistInfo, device: torch.device) -> torch.Tensor:
    if not info.enabled:
        return values
    buf = values.to(device if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.cpu()


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out

"""Count the host-device synchronisations a piece of training code makes.

On CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` makes every synchronising operation emit a
warning; :func:`count_host_syncs` records those. On a CPU-only machine there is no device to
wait for, so the same code paths are counted where they would synchronise: every call of the
tensor methods that copy a value to the host (``item``, ``cpu``, ``tolist``, ``numpy``) or
turn a tensor into a Python number or truth value (``__bool__``, ``__float__``, ``__int__``).
"""
from __future__ import annotations

import collections
import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch

HOST_METHODS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


@dataclass
class SyncCount:
    total: int = 0
    by_kind: collections.Counter = field(default_factory=collections.Counter)
    method: str = ""

    def add(self, kind: str) -> None:
        self.total += 1
        self.by_kind[kind] += 1


@contextlib.contextmanager
def _count_cuda(count: SyncCount) -> Iterator[SyncCount]:
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield count
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    for w in caught:
        text = str(w.message)
        if "synchronizing" in text.lower():
            count.add(text.split("\n")[0][:80])


@contextlib.contextmanager
def _count_methods(count: SyncCount) -> Iterator[SyncCount]:
    originals = {name: getattr(torch.Tensor, name) for name in HOST_METHODS}
    depth = [0]  # item() may call __float__ internally: count the outermost call only

    def wrap(name, original):
        def counted(self, *args, **kwargs):
            if depth[0] == 0:
                count.add(name)
            depth[0] += 1
            try:
                return original(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    for name, original in originals.items():
        setattr(torch.Tensor, name, wrap(name, original))
    try:
        yield count
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


@contextlib.contextmanager
def count_host_syncs(device: torch.device) -> Iterator[SyncCount]:
    """Count synchronisations inside the block: CUDA's sync debug mode on a CUDA device, calls
    of host-copying tensor methods elsewhere (``SyncCount.method`` says which)."""
    if device.type == "cuda":
        with _count_cuda(SyncCount(method="cuda sync debug mode")) as count:
            yield count
    else:
        with _count_methods(SyncCount(method="host-copying tensor method calls")) as count:
            yield count

"""The epoch's running sums, and its per-step losses kept on the device between the training
loop's sync points."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class EpochAccumulator:
    """Running sums of the current epoch (saved mid-epoch so a resumed epoch logs whole)."""

    loss_sum: float = 0.0
    batches: int = 0
    frames: int = 0
    # per AU: positives, then frames coded ("not coded" labels are NaN and count in neither)
    positives: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def state_dict(self) -> dict:
        return asdict(self)


class StepLog:
    """The epoch's per-step losses, kept on the device until a sync point copies them over.

    Adding them on the host in step order at each sync keeps ``acc.loss_sum`` exactly what a
    per-step ``float(loss)`` would give, so resumed and uninterrupted runs log the same loss.
    """

    def __init__(self, acc: EpochAccumulator, total: int, device: torch.device) -> None:
        self.acc, self.flushed = acc, acc.batches
        self.losses = torch.zeros(max(total, 1), device=device)
        self.positives = torch.zeros(0, dtype=torch.float64)

    def record(self, batch: int, loss: torch.Tensor, targets: torch.Tensor) -> None:
        self.losses[batch - 1] = loss.detach()  # a device-side copy, no wait
        coded = ~torch.isnan(targets)
        counts = torch.cat([torch.where(coded, targets, 0).sum(0, dtype=torch.float64),
                            coded.sum(0, dtype=torch.float64)])
        self.positives = counts + (self.positives if len(self.positives) else 0)
        self.acc.batches = batch
        self.acc.frames += len(targets)

    def flush(self) -> tuple[int, int] | None:
        """Move the new losses into ``acc``; the first non-finite one's batch range, if any."""
        first, last = self.flushed, self.acc.batches
        if last == first:
            return None
        values = self.losses[first:last].tolist()  # the one synchronisation
        bad = next((first + 1 + i for i, v in enumerate(values) if not math.isfinite(v)), None)
        for v in values:
            self.acc.loss_sum += v
        if len(self.positives):
            pos = self.positives.tolist()
            # (an epoch saved mid-way by an older version counted positives only: start anew)
            self.acc.positives = ([a + b for a, b in zip(self.acc.positives, pos)]
                                  if len(self.acc.positives) == len(pos) else pos)
            self.positives = torch.zeros(0, dtype=torch.float64)
        self.flushed = last
        return (bad, last) if bad is not None else None

"""What the next measurement will cost, estimated from the one before it, so that the report
keeps its ``--deadline``: a measurement that would not fit is skipped (and recorded as such)
instead of started."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    seconds: float
    basis: str   # where the figure comes from, for the skip record

    def record(self) -> dict[str, object]:
        return {"estimate_s": round(self.seconds, 2), "estimate_basis": self.basis}


class CostModel:
    """The last measured cost of each family of measurements (a stage's settings that differ
    only in size: batch, workers) and the training step's seconds at each batch.

    A family's next cost is its last cost scaled by the size ratio (a step's work grows with the
    batch; warm-up and build do not shrink, so scaling down is not trusted below the last cost's
    half). The first of a family has only its prior (the stage's own guess)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}
        self.step_s: dict[int, float] = {}
        self.step_precision: str | None = None   # the pilot step's

    def record(self, family: str, size: float, seconds: float) -> None:
        self._last[family] = (size, seconds)

    def estimate(self, family: str, size: float, prior: float) -> Estimate:
        if family not in self._last:
            return Estimate(prior, "prior guess (first of its kind)")
        last_size, last_s = self._last[family]
        ratio = max(size / last_size, 0.5) if last_size > 0 else 1.0
        return Estimate(last_s * ratio, f"{last_s:.1f} s at size {last_size:g}, x{ratio:.2f}")

    def note_step(self, batch: int, step_s: float) -> None:
        """A training step's seconds at ``batch`` (the fastest seen), for the trainer stages."""
        self.step_s[batch] = min(step_s, self.step_s.get(batch, step_s))

    def steps_estimate(self, batch: int, steps: float, overhead: float, prior: float,
                       precision: str | None = None, cuda: bool = False) -> Estimate:
        """``steps`` training steps at ``batch`` plus ``overhead`` seconds, from the step time
        measured nearest that batch (scaled; and by UNLIKE_PRECISION when ``precision`` is not
        the one it was measured in), else ``prior``."""
        if not self.step_s:
            return Estimate(prior, "prior guess (no step measured yet)")
        near = min(self.step_s, key=lambda b: abs(b - batch))
        per = self.step_s[near] * max(batch / near, 1.0)
        if precision is not None and self.step_precision not in (None, precision):
            per *= UNLIKE_PRECISION[cuda]
        return Estimate(steps * per + overhead,
                        f"{steps:g} steps x {per:.3f} s (batch {near}) + {overhead:g} s")


#: How much slower a precision unlike the measured step's may be (index: on CUDA): bf16
#: autocast ran 3-5x slower than fp32 on the 2-core CPU this was written on; on a GPU the two
#: are within 2x of each other.
UNLIKE_PRECISION = (5.0, 2.0)

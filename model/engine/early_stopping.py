"""Early stopping on a metric that should rise (mean F1), with resumable state."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Stop once ``patience`` epochs in a row have not improved on the best score.

    An epoch improves when ``score > best + min_delta``. ``step`` returns True when the epoch
    just recorded is a new best (save best.pt); ``should_stop`` turns True after ``patience``
    non-improving epochs. With patience 10 and a best at epoch 5, training stops after epoch 15.
    """

    patience: int = 10
    min_delta: float = 0.0
    best_score: float = -math.inf
    best_epoch: int = 0
    bad_epochs: int = 0

    def __post_init__(self) -> None:
        if self.patience < 1:
            raise ValueError(f"patience must be >= 1, got {self.patience}")

    def step(self, score: float, epoch: int) -> bool:
        if math.isnan(score):
            raise ValueError(f"epoch {epoch}: selection score is NaN")
        if score > self.best_score + self.min_delta:
            self.best_score, self.best_epoch, self.bad_epochs = float(score), int(epoch), 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)

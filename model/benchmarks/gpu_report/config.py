"""What a GPU report measures: its stages in priority order and the sizes of each mode."""
from __future__ import annotations

from dataclasses import dataclass, field

#: In priority order: the pilot step every later cost is estimated from, then what the issue-25
#: targets are judged on (a whole epoch with its evaluation, the step in fp32 and bf16);
#: torch.compile last (its compile time is the least bounded).
STAGES = ("environment", "pilot", "end_to_end", "ceiling_train", "trainer_epoch", "graphs",
          "loader", "ceiling_infer", "predict", "compile")


@dataclass
class ReportConfig:
    out: str
    deadline: float = 420.0
    device: str = "auto"
    small: bool = False
    stages: list[str] = field(default_factory=lambda: list(STAGES))
    measure_seconds: float | None = None   # timed seconds per measurement (default by mode)

    @property
    def preset(self) -> str:
        return "small" if self.small else "full"

    @property
    def size(self) -> int:
        return 32 if self.small else 224

    @property
    def batches(self) -> tuple[int, int]:
        return (2, 4) if self.small else (64, 128)

    @property
    def warmup(self) -> int:
        return 1 if self.small else 3

    @property
    def min_steps(self) -> int:
        return 1 if self.small else 3

    @property
    def seconds(self) -> float:
        return self.measure_seconds or (0.2 if self.small else 2.0)

"""One stage timer for every role: the driver's epoch, a rollout worker's sample call, a learner step.

    timer = StageTimer()
    with timer("sample"):
        ...
    timer.metrics(prefix="time/")   # {"time/sample_s": 1.2, "time/total_s": 1.3}

A stage entered several times (decoding each micro-batch) adds up. Bottom layer: imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class StageTimer:
    """Wall seconds of each named stage, summed over its entries, and of everything since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def elapsed(self) -> float:
        """Seconds since the timer was created."""
        return time.perf_counter() - self.start

    def metrics(self, prefix: str = "", total: str = "total") -> dict[str, float]:
        """`{prefix}{stage}_s` for every stage, and `{prefix}{total}_s` from creation to now."""
        return {
            **{f"{prefix}{stage}_s": s for stage, s in self.seconds.items()},
            f"{prefix}{total}_s": self.elapsed(),
        }

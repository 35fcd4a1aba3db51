"""Valid ranges of config fields, declared next to each field with `typing.Annotated`:

    epochs: Annotated[int, Range(ge=1)] = 100
    lr: Annotated[float, Range(gt=0)] = 3e-4
    ring_weight: Annotated[float, Range(ge=0, le=1)] = 0.2

The config loader (cluster/config.py) checks every field against its Range when a config is loaded,
before anything starts; a float is never valid when it is NaN or infinite unless the Range says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric field: ge/gt (lower, inclusive/exclusive), le/lt (upper). None = unbounded."""

    ge: Optional[float] = None
    gt: Optional[float] = None
    le: Optional[float] = None
    lt: Optional[float] = None
    finite: bool = True  # NaN and +-inf are out of range

    def describe(self) -> str:
        """The range as a reader writes it: `>= 1`, `> 0`, `in [0, 1]`, `in (0, 1]`."""
        low = f"[{self.ge:g}" if self.ge is not None else (f"({self.gt:g}" if self.gt is not None else None)
        high = f"{self.le:g}]" if self.le is not None else (f"{self.lt:g})" if self.lt is not None else None)
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if low[0] == "[" else "> ") + low[1:]
        if high:
            return ("<= " if high[-1] == "]" else "< ") + high[:-1]
        return "finite" if self.finite else "any number"

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return not self.finite and not math.isnan(value)
        return not (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )

"""Valid ranges of config fields, declared next to each field with `typing.Annotated`:

    epochs: Annotated[int, Range(ge=1)] = 100
    lr: Annotated[float, Range(gt=0)] = 3e-4
    ring_weight: Annotated[float, Range(ge=0, le=1)] = 0.2

The config loader (cluster/config.py) checks every field against its Range when a config is loaded,
before anything starts; a float is never valid when it is NaN or infinite unless the Range says so.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Optional, Union


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


def unwrap(tp: Any) -> tuple[Any, Optional[Range], bool]:
    """(inner type, its Range or None, whether None is allowed) of a field annotation.

    Unwraps `Annotated[T, Range(...)]`, `Optional[Annotated[T, Range(...)]]` and `Annotated[Optional[T], ...]`.
    """
    optional = False
    rng: Optional[Range] = None
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            rng = next((m for m in tp.__metadata__ if isinstance(m, Range)), rng)
            tp = typing.get_args(tp)[0]
        elif origin in (Union, types.UnionType) and type(None) in typing.get_args(tp):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp, rng, True
            optional, tp = True, rest[0]
        else:
            return tp, rng, optional


def check(key: str, value: Any, rng: Range) -> None:
    """Raise ValueError naming `key`, `value` and the valid range when `value` is outside `rng`."""
    if value is not None and not rng.contains(value):
        raise ValueError(f"{key}={value!r} is out of range: valid values are {rng.describe()}")


def check_fields(obj: Any, prefix: str) -> None:
    """Check every Range-annotated field of dataclass `obj` (and of nested dataclasses, dict values and
    tuple items), naming keys from `prefix` (e.g. "rewards.mllm"). For components built outside the
    config loader, which checks the same ranges when a config is loaded."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for f in dataclasses.fields(obj):
        _check_value(f"{prefix}.{f.name}" if prefix else f.name, getattr(obj, f.name), hints[f.name])


def _check_value(key: str, value: Any, tp: Any) -> None:
    inner, rng, _ = unwrap(tp)
    if value is None:
        return
    if rng is not None:
        check(key, value, rng)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if dataclasses.is_dataclass(value):
        check_fields(value, key)
    elif origin is dict:
        for k, v in value.items():
            _check_value(f"{key}.{k}", v, args[1])
    elif origin is tuple:
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        for i, (v, a) in enumerate(zip(value, items, strict=False)):
            _check_value(f"{key}[{i}]", v, a)

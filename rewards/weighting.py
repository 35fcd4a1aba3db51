"""R = sum_k w_k S_k over the reward services' outcomes (docs/algorithm.md section 3).

    rewards = combine({"mllm": mllm_outcomes, "pixel": pixel_outcomes}, {"mllm": 0.9, "pixel": 0.1})
    rewards.total, rewards.scored, rewards.metrics()

One bad edit never fails an epoch, and is never given a made-up score: an edit a weighted service
could not score (a per-edit error, or no finite score) is dropped from the batch (`scored` False, R
NaN; its group shrinks), and an edit a service scored with its neutral fallback (the judge's
unparseable text answers: component `fallback` = 1) is counted. Either kind past its bound
(`max_dropped_fraction`, `max_fallback_fraction` of the epoch's edits) raises RewardError, so a broken
service still stops the run. Missing services and misaligned edit ids raise too.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cocoedit.rewards.base import FALLBACK, EditOutcome

log = logging.getLogger(__name__)


class RewardError(ValueError):
    """An outcome set that cannot give the epoch its rewards."""


@dataclass
class Rewards:
    """One batch's rewards. N edits, in the order of the outcomes."""

    total: np.ndarray  # [N] float64 R; NaN where not scored
    scored: np.ndarray  # [N] bool: every weighted service scored the edit (it stays in the batch)
    # {name: S [N]} and {"name/component": [N]} for components every scored edit has; NaN where missing
    parts: dict[str, np.ndarray]
    errors: dict[str, list[str]]  # service -> "edit_id: error" of every edit it could not score
    fallbacks: dict[str, int]  # service -> edits it scored with its neutral fallback

    def metrics(self) -> dict[str, float]:
        """Means over the scored edits, and how many edits were dropped or got a fallback score."""
        n = len(self.total)
        return {
            "reward/mean": _mean(self.total[self.scored]),
            **{f"reward/{k}": _mean(v[self.scored]) for k, v in self.parts.items()},
            "reward/dropped_edits": float(n - int(self.scored.sum())),
            "reward/dropped_fraction": (n - int(self.scored.sum())) / n if n else 0.0,
            "reward/fallback_fraction": sum(self.fallbacks.values()) / n if n else 0.0,
        }


def combine(
    outcomes: dict[str, Sequence[EditOutcome]],
    weights: dict[str, float],
    max_dropped_fraction: float = 0.1,
    max_fallback_fraction: float = 0.1,
) -> Rewards:
    """Weighted reward per edit and the per-score arrays.

    outcomes: score name -> one EditOutcome per edit, all lists in the same edit order.
    weights: score name -> w_k; every weighted name must be in `outcomes`. Scores without a weight (or
    with weight 0) are returned, their errors counted, but they neither enter R nor drop an edit.
    Raises RewardError when more than max_dropped_fraction of the edits could not be scored by the
    weighted services, or one service gave its fallback score to more than max_fallback_fraction.
    """
    missing = sorted(set(weights) - set(outcomes))
    if missing:
        raise RewardError(
            f"no outcomes for weighted score(s) {missing} (have {sorted(outcomes)}); "
            "start those services or drop them from rewards.weights"
        )
    if not outcomes:
        raise RewardError("no reward outcomes to combine")
    for name, w in weights.items():
        if not math.isfinite(w):
            raise RewardError(f"rewards.weights[{name!r}]={w} must be finite")
    names = list(outcomes)
    ref_ids = [o.edit_id for o in outcomes[names[0]]]
    n = len(ref_ids)
    parts: dict[str, np.ndarray] = {}
    errors: dict[str, list[str]] = {}
    fallbacks: dict[str, int] = {}
    scored = np.ones(n, dtype=bool)
    for name in names:
        _check_aligned(name, outcomes[name], names[0], ref_ids)
        values = np.full(n, math.nan)
        for i, o in enumerate(outcomes[name]):
            if o.error is not None:
                errors.setdefault(name, []).append(f"{o.edit_id}: {o.error}")
            elif o.score is None or not math.isfinite(o.score):
                errors.setdefault(name, []).append(f"{o.edit_id}: no finite score ({o.score})")
            else:
                values[i] = o.score
        ok = ~np.isnan(values)
        if weights.get(name, 0.0) != 0.0:  # a score that enters R: without it the edit has no reward
            scored &= ok
        parts[name] = values
        good = [o for o, keep in zip(outcomes[name], ok, strict=True) if keep]
        for comp in sorted(set.intersection(*(set(o.components) for o in good)) if good else ()):
            parts[f"{name}/{comp}"] = np.array(
                [
                    o.components.get(comp, math.nan) if keep else math.nan
                    for o, keep in zip(outcomes[name], ok, strict=True)
                ]
            )
        fallbacks[name] = sum(1 for o in good if o.components.get(FALLBACK, 0.0) > 0)
    for name, errs in errors.items():
        log.warning(
            "reward service %s could not score %d of %d edits%s: %s",
            name,
            len(errs),
            n,
            " (dropped from the batch)" if weights.get(name, 0.0) != 0.0 else "",
            "; ".join(errs[:3]) + (" ..." if len(errs) > 3 else ""),
        )
    dropped = n - int(scored.sum())
    if n and dropped / n > max_dropped_fraction:
        raise RewardError(
            f"{dropped} of {n} edits ({dropped / n:.0%}) could not be scored by the weighted services, more than "
            f"rewards.max_dropped_fraction={max_dropped_fraction:g}: "
            + "; ".join(
                f"{k}: {v[0]}" + (f" (+{len(v) - 1} more)" if len(v) > 1 else "") for k, v in errors.items()
            )
        )
    for name, count in fallbacks.items():
        if n and count / n > max_fallback_fraction:
            raise RewardError(
                f"service {name!r} gave its neutral fallback score to {count} of {n} edits ({count / n:.0%}), more "
                f"than rewards.max_fallback_fraction={max_fallback_fraction:g}: its answers do not parse (see its "
                "warnings); check the judge model and prompt"
            )
    total = np.zeros(n, dtype=np.float64)
    for name, w in weights.items():
        if w != 0.0:
            total += w * parts[name]  # NaN where that service has no score: those edits are not scored
    return Rewards(total=total, scored=scored, parts=parts, errors=errors, fallbacks=fallbacks)


def _mean(values: np.ndarray) -> float:
    """Mean of the finite entries; NaN when there are none."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


def _check_aligned(name: str, outs: Sequence[EditOutcome], ref_name: str, ref_ids: list[str]) -> None:
    ids = [o.edit_id for o in outs]
    if ids != ref_ids:
        diff = next(
            (i for i, (a, b) in enumerate(zip(ids, ref_ids, strict=False)) if a != b),
            min(len(ids), len(ref_ids)),
        )
        raise RewardError(
            f"outcomes of {name!r} ({len(ids)} edits) are not aligned with {ref_name!r} "
            f"({len(ref_ids)} edits): first difference at position {diff}"
        )

"""R = sum_k w_k S_k over the reward services' outcomes (ALGORITHM.md section 3).

    rewards, scores = combine({"mllm": mllm_outcomes, "pixel": pixel_outcomes}, {"mllm": 0.9, "pixel": 0.1})

A missing score, a per-edit error or misaligned edit ids raise (naming the service and edit_id):
never a default value.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cocoedit.rewards.base import EditOutcome


class RewardError(ValueError):
    """An outcome set that cannot give a reward for every edit."""


def combine(
    outcomes: dict[str, Sequence[EditOutcome]], weights: dict[str, float]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Weighted reward per edit and the per-score arrays.

    outcomes: score name -> one EditOutcome per edit, all lists in the same edit order.
    weights: score name -> w_k; every weighted name must be in `outcomes`.
    Returns (R [N] float64, {name: S [N]} plus {"name/component": [N]} for components every edit has).
    Scores without a weight are checked and returned but do not enter R.
    """
    missing = sorted(set(weights) - set(outcomes))
    if missing:
        raise RewardError(
            f"no outcomes for weighted score(s) {missing} (have {sorted(outcomes)}); "
            "start those services or drop them from rewards.weights"
        )
    if not outcomes:
        raise RewardError("no reward outcomes to combine")
    names = list(outcomes)
    ref_name = names[0]
    ref_ids = [o.edit_id for o in outcomes[ref_name]]
    arrays: dict[str, np.ndarray] = {}
    for name in names:
        ids = [o.edit_id for o in outcomes[name]]
        if ids != ref_ids:
            diff = next(
                (i for i, (a, b) in enumerate(zip(ids, ref_ids, strict=False)) if a != b),
                min(len(ids), len(ref_ids)),
            )
            raise RewardError(
                f"outcomes of {name!r} ({len(ids)} edits) are not aligned with {ref_name!r} "
                f"({len(ref_ids)} edits): first difference at position {diff}"
            )
        values = np.empty(len(ids), dtype=np.float64)
        for i, o in enumerate(outcomes[name]):
            if o.error is not None:
                raise RewardError(f"service {name!r} could not score edit {o.edit_id!r}: {o.error}")
            if o.score is None or not math.isfinite(o.score):
                raise RewardError(
                    f"service {name!r} returned no finite score for edit {o.edit_id!r} ({o.score})"
                )
            values[i] = o.score
        arrays[name] = values
        common = set.intersection(*(set(o.components) for o in outcomes[name])) if ids else set()
        for comp in sorted(common):
            arrays[f"{name}/{comp}"] = np.array(
                [o.components[comp] for o in outcomes[name]], dtype=np.float64
            )
    rewards = np.zeros(len(ref_ids), dtype=np.float64)
    for name, w in weights.items():
        if not math.isfinite(w):
            raise RewardError(f"rewards.weights[{name!r}]={w} must be finite")
        rewards += w * arrays[name]
    return rewards, arrays

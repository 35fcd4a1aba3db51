"""R = sum_k w_k S_k, and what one bad edit does: dropped and counted (never a made-up score), or a
counted neutral fallback; past the configured fraction the epoch fails, so a broken service still stops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cocoedit.rewards.base import FALLBACK, EditOutcome
from cocoedit.rewards.weighting import RewardError, combine


def outcomes(scores: list[float], prefix: str = "e") -> list[EditOutcome]:
    return [EditOutcome(f"{prefix}{i}", score=s, components={"c": 2 * s}) for i, s in enumerate(scores)]


def test_combine_weights_scores() -> None:
    r = combine(
        {"mllm": outcomes([1.0, 0.5, 0.0]), "pixel": outcomes([0.2, 0.4, 1.0])}, {"mllm": 0.9, "pixel": 0.1}
    )
    assert r.total.tolist() == pytest.approx([0.92, 0.49, 0.1])
    assert r.scored.tolist() == [True, True, True] and r.errors == {}
    assert r.parts["pixel"].tolist() == [0.2, 0.4, 1.0]
    assert r.parts["mllm/c"].tolist() == [2.0, 1.0, 0.0]
    m = r.metrics()
    assert m["reward/mean"] == pytest.approx(1.51 / 3) and m["reward/dropped_fraction"] == 0.0


def test_combine_refuses_missing_or_misaligned_services() -> None:
    with pytest.raises(RewardError, match=r"no outcomes for weighted score\(s\) \['pixel'\]"):
        combine({"mllm": outcomes([1.0])}, {"mllm": 0.9, "pixel": 0.1})
    with pytest.raises(RewardError, match="not aligned"):
        combine({"mllm": outcomes([1.0, 0.5]), "pixel": outcomes([1.0, 0.5], prefix="x")}, {"mllm": 1.0})


def test_an_edit_a_weighted_service_could_not_score_is_dropped_and_counted() -> None:
    """1 of 10 edits has a per-edit error and 1 no finite score: both leave the batch (R NaN, scored
    False), the rest keep their exact rewards; an unweighted service's error drops nothing."""
    pixel = outcomes([0.1 * i for i in range(10)])
    pixel[3] = EditOutcome("e3", error="edit_mask: missing")
    mllm = outcomes([0.5] * 10)
    mllm[7] = EditOutcome("e7", score=math.nan)
    extra = outcomes([1.0] * 10)
    extra[0] = EditOutcome("e0", error="decode failed")
    r = combine(
        {"mllm": mllm, "pixel": pixel, "extra": extra}, {"mllm": 0.5, "pixel": 0.5}, max_dropped_fraction=0.2
    )
    assert r.scored.tolist() == [i not in (3, 7) for i in range(10)]
    assert np.isnan(r.total[[3, 7]]).all()
    assert r.total[r.scored].tolist() == pytest.approx([0.25 + 0.05 * i for i in (0, 1, 2, 4, 5, 6, 8, 9)])
    assert r.errors == {
        "pixel": ["e3: edit_mask: missing"],
        "mllm": ["e7: no finite score (nan)"],
        "extra": ["e0: decode failed"],
    }
    m = r.metrics()
    assert m["reward/dropped_edits"] == 2.0 and m["reward/dropped_fraction"] == pytest.approx(0.2)
    assert m["reward/pixel/c"] == pytest.approx(np.mean([0.2 * i for i in (0, 1, 2, 4, 5, 6, 8, 9)]))


def test_too_many_dropped_edits_fail_the_epoch() -> None:
    pixel = outcomes([0.5] * 10)
    pixel[1] = EditOutcome("e1", error="edit_mask: missing")
    pixel[2] = EditOutcome("e2", error="edit_mask: missing")
    with pytest.raises(
        RewardError,
        match=r"2 of 10 edits \(20%\) could not be scored .*rewards.max_dropped_fraction=0.1: pixel: e1",
    ):
        combine({"pixel": pixel}, {"pixel": 1.0})  # default bound 10%


def _judged(n: int, failed: int) -> list[EditOutcome]:
    """Text-mode judge outcomes: `failed` of them the neutral fallback 0.5 (as rewards/mllm.py marks it)."""
    return [
        EditOutcome(f"e{i}", score=0.5, components={"expected_score": 2.5, FALLBACK: 1.0})
        if i < failed
        else EditOutcome(f"e{i}", score=0.8, components={"expected_score": 4.0, FALLBACK: 0.0})
        for i in range(n)
    ]


def test_a_neutral_fallback_is_counted_and_bounded() -> None:
    r = combine({"mllm": _judged(20, 2)}, {"mllm": 1.0})  # 10%: within the default bound
    assert r.scored.all() and r.fallbacks == {"mllm": 2}
    assert r.total[:2].tolist() == [0.5, 0.5]
    assert r.metrics()["reward/fallback_fraction"] == pytest.approx(0.1)
    assert r.metrics()["reward/mllm/fallback"] == pytest.approx(0.1)
    with pytest.raises(RewardError, match=r"'mllm' gave its neutral fallback score to 3 of 20 edits \(15%\)"):
        combine({"mllm": _judged(20, 3)}, {"mllm": 1.0})
    assert combine({"mllm": _judged(20, 3)}, {"mllm": 1.0}, max_fallback_fraction=0.2).fallbacks == {
        "mllm": 3
    }

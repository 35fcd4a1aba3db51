"""Advantages, validity, bans and r on hand-computed reward tables (docs/algorithm.md section 4)."""

from __future__ import annotations

import pytest
import torch

from cocoedit.learner.advantages import (
    banned_items,
    group_advantages,
    group_stats,
    optimality_probability,
    score_groups,
    valid_edits,
)
from cocoedit.learner.config import LearnerConfig

# three groups of two edits; group c is solved (std 0, mean 0.95), group b is low-variance
REWARDS = torch.tensor([0.2, 0.6, 0.5, 0.51, 0.95, 0.95], dtype=torch.float64)
GROUPS = ["e:a", "e:b", "e:a", "e:b", "e:c", "e:c"]  # interleaved on purpose: grouping is by id, not order
ITEMS = ["a", "b", "a", "b", "c", "c"]


def test_group_stats_and_advantages_by_hand() -> None:
    mean, std, count = group_stats(REWARDS, GROUPS)
    assert count.tolist() == [2, 2, 2, 2, 2, 2]
    torch.testing.assert_close(
        mean, torch.tensor([0.35, 0.555, 0.35, 0.555, 0.95, 0.95], dtype=torch.float64)
    )
    torch.testing.assert_close(std, torch.tensor([0.15, 0.045, 0.15, 0.045, 0.0, 0.0], dtype=torch.float64))
    std_all = REWARDS.numpy().std()  # population std over the whole epoch
    adv = group_advantages(REWARDS, GROUPS, std_eps=1e-4)
    expected = (REWARDS - mean) / (std_all + 1e-4)
    torch.testing.assert_close(adv, expected)
    assert adv[0].item() == pytest.approx(-0.15 / (std_all + 1e-4))
    assert adv[4].item() == 0.0


def test_validity_and_bans() -> None:
    valid = valid_edits(REWARDS, GROUPS, min_std=0.02, max_mean=0.9)
    assert valid.tolist() == [True, True, True, True, False, False]
    assert valid_edits(REWARDS, GROUPS, min_std=0.05).tolist() == [True, False, True, False, False, False]
    assert banned_items(REWARDS, GROUPS, ITEMS, max_std=0.02, min_mean=0.9) == ["c"]
    # a low-variance group with a low mean is invalid but not banned
    low = torch.tensor([0.1, 0.1, 0.5, 0.9])
    assert banned_items(low, ["x", "x", "y", "y"], ["x", "x", "y", "y"]) == []
    assert valid_edits(low, ["x", "x", "y", "y"]).tolist() == [False, False, True, True]
    # min_std = 0 turns the spread filter off: a uniform group is valid (with zero advantages)
    assert valid_edits(low, ["x", "x", "y", "y"], min_std=0.0).tolist() == [True, True, True, True]


def test_optimality_probability() -> None:
    adv = torch.tensor([-10.0, -5.0, -1.0, 0.0, 2.5, 5.0, 7.0])
    r = optimality_probability(adv, adv_clip=5.0)
    torch.testing.assert_close(r, torch.tensor([0.0, 0.0, 0.4, 0.5, 0.75, 1.0, 1.0]))


def test_score_groups_uses_config_thresholds() -> None:
    cfg = LearnerConfig()
    s = score_groups(REWARDS, GROUPS, ITEMS, cfg)
    assert s.banned_items == ["c"]
    assert s.valid.tolist() == [True, True, True, True, False, False]
    torch.testing.assert_close(s.r, optimality_probability(s.advantages, 5.0))
    assert s.metrics()["adv/valid_fraction"] == pytest.approx(4 / 6)


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="group_ids"):
        group_advantages(torch.zeros(3), ["a", "b"])
    with pytest.raises(ValueError, match="not finite"):
        group_advantages(torch.tensor([0.1, float("nan")]), ["a", "a"])
    with pytest.raises(ValueError, match="positions \\[1\\] are not finite"):  # NaN where scored=True
        group_advantages(torch.tensor([0.1, float("nan")]), ["a", "a"], scored=torch.tensor([True, True]))


def test_unscored_edits_count_nowhere_and_their_groups_shrink() -> None:
    """Edits a reward service could not score (NaN, scored=False): group a keeps 1 edit (invalid), group
    b keeps 2 of 3, std_all is over the scored edits only; by hand."""
    nan = float("nan")
    rewards = torch.tensor([0.2, nan, 0.3, 0.7, nan, 0.9, 0.1], dtype=torch.float64)
    groups = ["a", "a", "b", "b", "b", "c", "c"]
    scored = ~torch.isnan(rewards)
    mean, std, count = group_stats(rewards, groups, scored)
    assert count.tolist() == [1, 1, 2, 2, 2, 2, 2]
    torch.testing.assert_close(mean[[2, 5]], torch.tensor([0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(std[[2, 5]], torch.tensor([0.2, 0.4], dtype=torch.float64))
    valid = valid_edits(rewards, groups, scored=scored)
    assert valid.tolist() == [False, False, True, True, False, True, True]  # a: 1 scored edit, invalid
    std_all = torch.tensor([0.2, 0.3, 0.7, 0.9, 0.1], dtype=torch.float64).std(unbiased=False)
    adv = group_advantages(rewards, groups, 1e-4, scored)
    assert adv[[1, 4]].tolist() == [0.0, 0.0]
    torch.testing.assert_close(adv[2], (0.3 - 0.5) / (std_all + 1e-4))
    s = score_groups(rewards, groups, list(groups), LearnerConfig(), scored)
    assert s.valid.tolist() == valid.tolist()
    torch.testing.assert_close(s.advantages, adv)
    # a solved group that lost an edit to an error is still banned; one left with a single edit is not
    solved = torch.tensor([0.95, 0.95, nan, 0.95, nan], dtype=torch.float64)
    ids = ["x", "x", "x", "y", "y"]
    assert banned_items(solved, ids, ids, scored=~torch.isnan(solved)) == ["x"]


def test_score_groups_is_valid_edits_with_the_config_thresholds() -> None:
    cfg = LearnerConfig(valid_min_std=0.05, valid_max_mean=0.6)
    s = score_groups(REWARDS, GROUPS, ITEMS, cfg)
    assert (
        s.valid.tolist()
        == valid_edits(REWARDS, GROUPS, 0.05, 0.6).tolist()
        == [True, False, True, False, False, False]
    )

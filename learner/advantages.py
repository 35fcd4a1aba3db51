"""Group advantages, validity filtering, item bans and the NFT optimality probability (ALGORITHM.md s4).

Pure torch. Shapes: N edits of one epoch; groups are keyed by explicit `group_id` strings (never by
instruction text). Standard deviations are population ones (ddof = 0), as numpy's `std` in the
released stat tracker.

    scores = score_groups(rewards, group_ids, item_ids, cfg)    # cfg: LearnerConfig
    learner.update(batch, scores.advantages, scores.valid)
    sampler.ban(scores.banned_items)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cocoedit.learner.config import LearnerConfig


def group_index(group_ids: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Map group_id strings to dense indices. Returns (index [N] long, names [G] in first-seen order)."""
    names: dict[str, int] = {}
    index = [names.setdefault(g, len(names)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long), list(names)


def group_stats(rewards: torch.Tensor, group_ids: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """rewards: [N]. Returns (mean, std) of each edit's group, both [N] (population std)."""
    _check(rewards, group_ids)
    index, names = group_index(group_ids)
    r = rewards.double()
    count = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, torch.ones_like(r))
    mean = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, r) / count
    sq = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, (r - mean[index]) ** 2)
    std = (sq / count).sqrt()
    return mean[index].to(rewards.dtype), std[index].to(rewards.dtype)


def group_advantages(rewards: torch.Tensor, group_ids: Sequence[str], std_eps: float = 1e-4) -> torch.Tensor:
    """A_i = (R_i - mean_{group(i)} R) / (std_all R + std_eps); std_all over every edit. [N] -> [N]."""
    mean, _ = group_stats(rewards, group_ids)
    return (rewards - mean) / (rewards.std(unbiased=False) + std_eps)


def valid_edits(
    rewards: torch.Tensor, group_ids: Sequence[str], min_std: float = 0.02, max_mean: float = 0.9
) -> torch.Tensor:
    """[N] bool: the edit's group has reward std > min_std and mean < max_mean (else it is not trained on)."""
    mean, std = group_stats(rewards, group_ids)
    return (std > min_std) & (mean < max_mean)


def banned_items(
    rewards: torch.Tensor,
    group_ids: Sequence[str],
    item_ids: Sequence[str],
    max_std: float = 0.02,
    min_mean: float = 0.9,
) -> list[str]:
    """Item ids whose group has reward std < max_std and mean > min_mean (solved: ban from sampling).
    Sorted, without duplicates."""
    if len(item_ids) != len(group_ids):
        raise ValueError(
            f"item_ids has {len(item_ids)} entries but group_ids has {len(group_ids)}; pass one per edit"
        )
    mean, std = group_stats(rewards, group_ids)
    ban = (std < max_std) & (mean > min_mean)
    return sorted({item_ids[i] for i in torch.nonzero(ban).flatten().tolist()})


def optimality_probability(advantages: torch.Tensor, adv_clip: float = 5.0) -> torch.Tensor:
    """r = clip(0.5 + clip(A, -adv_clip, adv_clip) / (2 adv_clip), 0, 1). [N] -> [N].
    With the default adv_clip = 5 this is ALGORITHM.md's 0.5 + clip(A, -5, 5) / 10."""
    return (0.5 + advantages.clamp(-adv_clip, adv_clip) / (2.0 * adv_clip)).clamp(0.0, 1.0)


@dataclass
class GroupScores:
    """Everything the learner and the sampler need from one epoch's rewards."""

    advantages: torch.Tensor  # [N] float
    valid: torch.Tensor  # [N] bool
    r: torch.Tensor  # [N] float in [0, 1]
    group_mean: torch.Tensor  # [N]
    group_std: torch.Tensor  # [N]
    banned_items: list[str]

    def metrics(self) -> dict[str, float]:
        return {
            "adv/abs_mean": self.advantages.abs().mean().item(),
            "adv/valid_fraction": self.valid.float().mean().item(),
            "adv/r_mean": self.r.mean().item(),
            "adv/group_std_mean": self.group_std.mean().item(),
            "adv/banned": float(len(self.banned_items)),
        }


def score_groups(
    rewards: torch.Tensor, group_ids: Sequence[str], item_ids: Sequence[str], cfg: LearnerConfig
) -> GroupScores:
    """Advantages, validity, r and bans for one epoch, thresholds from `cfg`. rewards: [N]."""
    mean, std = group_stats(rewards, group_ids)
    adv = group_advantages(rewards, group_ids, cfg.adv_std_eps)
    return GroupScores(
        advantages=adv,
        valid=(std > cfg.valid_min_std) & (mean < cfg.valid_max_mean),
        r=optimality_probability(adv, cfg.adv_clip),
        group_mean=mean,
        group_std=std,
        banned_items=banned_items(rewards, group_ids, item_ids, cfg.ban_max_std, cfg.ban_min_mean),
    )


def _check(rewards: torch.Tensor, group_ids: Sequence[str]) -> None:
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    if len(group_ids) != rewards.shape[0]:
        raise ValueError(
            f"{rewards.shape[0]} rewards but {len(group_ids)} group_ids; pass one group_id per edit"
        )
    if not torch.isfinite(rewards).all():
        bad = torch.nonzero(~torch.isfinite(rewards)).flatten().tolist()
        raise ValueError(
            f"rewards at positions {bad} are not finite; the reward services must not return NaN/inf"
        )

"""Group advantages, validity filtering, item bans and the NFT optimality probability (docs/algorithm.md section 4).

Pure torch. Shapes: N edits of one epoch; groups are keyed by explicit `group_id` strings (never by
instruction text). Standard deviations are population ones (ddof = 0), as numpy's `std` in the
released stat tracker. Edits without a reward (a reward service could not score them: `scored` False)
count nowhere: their groups shrink, and a group left with fewer than 2 scored edits is invalid.

    scores = score_groups(rewards, group_ids, item_ids, cfg, scored)   # cfg: LearnerConfig; scored: [N] bool
    learner.update(batch, scores.advantages, scores.valid)
    sampler.ban(scores.banned_items)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from cocoedit.learner.config import LearnerConfig


def group_index(group_ids: Sequence[str]) -> tuple[torch.Tensor, list[str]]:
    """Map group_id strings to dense indices. Returns (index [N] long, names [G] in first-seen order)."""
    names: dict[str, int] = {}
    index = [names.setdefault(g, len(names)) for g in group_ids]
    return torch.tensor(index, dtype=torch.long), list(names)


def group_stats(
    rewards: torch.Tensor, group_ids: Sequence[str], scored: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """rewards: [N]; scored: [N] bool, the edits that have a reward (default: all; the others may hold
    NaN and do not count). Returns (mean, std, count) of each edit's group over its scored edits, all
    [N] (population std; mean and std NaN for a group with no scored edit)."""
    scored = _check(rewards, group_ids, scored)
    index, names = group_index(group_ids)
    w = scored.double()
    r = torch.where(scored, rewards.double(), 0.0)
    count = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, w)
    mean = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, r) / count
    sq = torch.zeros(len(names), dtype=torch.float64).index_add_(0, index, w * (r - mean[index]) ** 2)
    std = (sq / count).sqrt()
    return mean[index].to(rewards.dtype), std[index].to(rewards.dtype), count[index].long()


def group_advantages(
    rewards: torch.Tensor,
    group_ids: Sequence[str],
    std_eps: float = 1e-4,
    scored: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """A_i = (R_i - mean_{group(i)} R) / (std_all R + std_eps); std_all over every scored edit of the
    epoch. [N] -> [N]; 0 for an edit that is not scored."""
    mean, _, _ = group_stats(rewards, group_ids, scored)
    scored = _check(rewards, group_ids, scored)
    std_all = rewards[scored].std(unbiased=False) if scored.any() else rewards.new_tensor(0.0)
    return torch.where(scored, (rewards - mean) / (std_all + std_eps), 0.0)


def valid_edits(
    rewards: torch.Tensor,
    group_ids: Sequence[str],
    min_std: float = 0.02,
    max_mean: float = 0.9,
    scored: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[N] bool: the edit is scored and its group has >= 2 scored edits, reward std > min_std (min_std = 0:
    no spread filter, a uniform group is trained on with zero advantages) and mean < max_mean (else it is
    not trained on)."""
    mean, std, count = group_stats(rewards, group_ids, scored)
    spread = std > min_std if min_std > 0 else torch.ones_like(count, dtype=torch.bool)
    return _check(rewards, group_ids, scored) & (count >= 2) & spread & (mean < max_mean)


def banned_items(
    rewards: torch.Tensor,
    group_ids: Sequence[str],
    item_ids: Sequence[str],
    max_std: float = 0.02,
    min_mean: float = 0.9,
    scored: Optional[torch.Tensor] = None,
) -> list[str]:
    """Item ids whose group has >= 2 scored edits, reward std < max_std and mean > min_mean (solved: ban
    from sampling). Sorted, without duplicates."""
    if len(item_ids) != len(group_ids):
        raise ValueError(
            f"item_ids has {len(item_ids)} entries but group_ids has {len(group_ids)}; pass one per edit"
        )
    mean, std, count = group_stats(rewards, group_ids, scored)
    ban = (count >= 2) & (std < max_std) & (mean > min_mean)
    return sorted({item_ids[i] for i in torch.nonzero(ban).flatten().tolist()})


def optimality_probability(advantages: torch.Tensor, adv_clip: float = 5.0) -> torch.Tensor:
    """r = clip(0.5 + clip(A, -adv_clip, adv_clip) / (2 adv_clip), 0, 1). [N] -> [N].
    With the default adv_clip = 5 this is docs/algorithm.md's 0.5 + clip(A, -5, 5) / 10."""
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
    rewards: torch.Tensor,
    group_ids: Sequence[str],
    item_ids: Sequence[str],
    cfg: LearnerConfig,
    scored: Optional[torch.Tensor] = None,
) -> GroupScores:
    """Advantages, validity, r and bans for one epoch, thresholds from `cfg`. rewards: [N]; scored: [N]
    bool, the edits with a reward (default: all); the others are invalid and their groups shrink."""
    mean, std, _ = group_stats(rewards, group_ids, scored)
    adv = group_advantages(rewards, group_ids, cfg.adv_std_eps, scored)
    return GroupScores(
        advantages=adv,
        valid=valid_edits(rewards, group_ids, cfg.valid_min_std, cfg.valid_max_mean, scored),
        r=optimality_probability(adv, cfg.adv_clip),
        group_mean=mean,
        group_std=std,
        banned_items=banned_items(rewards, group_ids, item_ids, cfg.ban_max_std, cfg.ban_min_mean, scored),
    )


def _check(rewards: torch.Tensor, group_ids: Sequence[str], scored: Optional[torch.Tensor]) -> torch.Tensor:
    """The `scored` mask ([N] bool, all True when None) after checking shapes and that every scored
    reward is finite."""
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be [N], got shape {tuple(rewards.shape)}")
    if len(group_ids) != rewards.shape[0]:
        raise ValueError(
            f"{rewards.shape[0]} rewards but {len(group_ids)} group_ids; pass one group_id per edit"
        )
    if scored is None:
        scored = torch.ones(rewards.shape[0], dtype=torch.bool)
    elif scored.shape != rewards.shape or scored.dtype != torch.bool:
        raise ValueError(
            f"scored must be a bool mask like rewards {tuple(rewards.shape)}, got {scored.dtype} {tuple(scored.shape)}"
        )
    bad = torch.nonzero(scored & ~torch.isfinite(rewards)).flatten().tolist()
    if bad:
        raise ValueError(
            f"rewards at positions {bad} are not finite; the reward services must not return NaN/inf "
            "(an edit without a reward is passed as scored=False)"
        )
    return scored

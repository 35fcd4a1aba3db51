"""One rollout batch scored by the reward services: the proto edits, the weighted reward, the metrics.

scores = score_batch(services, batch, cfg.rewards.weights)
scores.rewards          # [N] float64, R = sum_k w_k S_k
scores.metrics("reward")  # {"reward/mean", "reward/<score>", "<service>/<component>", ...}
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cocoedit.actors.types import RolloutBatch
from cocoedit.rewards.base import EditOutcome
from cocoedit.rewards.client import make_edit
from cocoedit.rewards.weighting import combine


@dataclass
class Scores:
    """The reward of every edit of a batch and what each service said about it."""

    rewards: np.ndarray  # [N] float64, the weighted reward R
    parts: dict[str, np.ndarray]  # score name -> [N] S_k, and "name/component" -> [N]
    outcomes: dict[str, list[EditOutcome]]  # service -> one outcome per edit, batch order

    def component_means(self) -> dict[str, float]:
        """`<service>/<component>` -> mean over the edits that report it (psnr, ssim, ...)."""
        values: dict[str, list[float]] = collections.defaultdict(list)
        for service, outs in self.outcomes.items():
            for o in outs:
                for k, v in o.components.items():
                    values[f"{service}/{k}"].append(v)
        return {k: float(np.mean(v)) for k, v in values.items()}

    def metrics(self) -> dict[str, float]:
        """The training epoch's reward metrics: reward/mean, reward/<score>, <service>/<component>."""
        return {
            "reward/mean": float(np.mean(self.rewards)),
            **{f"reward/{k}": float(np.mean(v)) for k, v in self.parts.items()},
            **self.component_means(),
        }

    def eval_metrics(self) -> dict[str, float]:
        """The fixed evaluation set's metrics: eval/reward, eval/<score>, eval/<service>/psnr|ssim."""
        means = self.component_means()
        return {
            "eval/reward": float(np.mean(self.rewards)),
            **{f"eval/{k}": float(np.mean(v)) for k, v in self.parts.items() if "/" not in k},
            **{f"eval/{k}": v for k, v in means.items() if k.endswith(("psnr", "ssim"))},
        }


def score_batch(services: Any, batch: RolloutBatch, weights: dict[str, float]) -> Scores:
    """Score every edit of `batch` with every service (`services`: cluster.services.RewardServices)."""
    outcomes = services.score(to_edits(batch))
    rewards, parts = combine(outcomes, weights)
    return Scores(rewards, parts, outcomes)


def to_edits(batch: RolloutBatch) -> list[Any]:
    """The batch as reward-proto Edits (PNG-encoded images, the mask, the target when known)."""
    masks = (batch.edit_masks[:, 0] * 255).round().to(torch.uint8)
    return [
        make_edit(
            edit_id=batch.edit_ids[i],
            group_id=batch.group_ids[i],
            policy_version=batch.policy_version,
            instruction=batch.instructions[i],
            source_image=batch.source_images[i].permute(1, 2, 0).numpy(),
            edited_image=batch.edited_images[i].permute(1, 2, 0).numpy(),
            edit_mask=masks[i].numpy(),
            target_image=None
            if batch.target_images is None
            else batch.target_images[i].permute(1, 2, 0).numpy(),
        )
        for i in range(len(batch))
    ]

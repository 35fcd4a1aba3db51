"""One rollout batch scored by the reward services: the proto edits, the weighted reward, the metrics.

scores = score_batch(services, batch, cfg.rewards)
scores.rewards.total    # [N] float64, R = sum_k w_k S_k; NaN where an edit could not be scored
scores.rewards.scored   # [N] bool: the edits that stay in the batch (rewards/weighting.py)
scores.metrics()        # {"reward/mean", "reward/<score>", "reward/dropped_edits", "<service>/<component>", ...}
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

import numpy as np

from cocoedit.actors.types import RolloutBatch
from cocoedit.cluster.config import RewardsConfig
from cocoedit.protos import reward_pb2
from cocoedit.rewards.base import EditOutcome
from cocoedit.rewards.client import wire_image, wire_mask
from cocoedit.rewards.weighting import Rewards, combine


@dataclass
class Scores:
    """The reward of every edit of a batch and what each service said about it."""

    rewards: Rewards  # R per edit (NaN where dropped), which edits are scored, the per-score arrays
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
        """The training epoch's reward metrics: reward/mean, reward/<score> (over the scored edits),
        reward/dropped_edits, reward/dropped_fraction, reward/fallback_fraction, <service>/<component>.

        A component is logged once, as <service>/<component>: Rewards.metrics() also names the components
        every scored edit has as reward/<service>/<component>, the same mean under a second name (which
        made 7-8 duplicate series in every tracker)."""
        means = self.component_means()
        rewards = {k: v for k, v in self.rewards.metrics().items() if k.removeprefix("reward/") not in means}
        return {**rewards, **means}


def score_batch(services: Any, batch: RolloutBatch, cfg: RewardsConfig) -> Scores:
    """Score every edit of `batch` with every service (`services`: cluster.services.RewardServices) and
    weight the scores; an edit a weighted service could not score is dropped (bounded: RewardError)."""
    outcomes = services.score(to_edits(batch))
    rewards = combine(outcomes, cfg.weights, cfg.max_dropped_fraction, cfg.max_fallback_fraction)
    return Scores(rewards, outcomes)


def to_edits(batch: RolloutBatch) -> list[reward_pb2.Edit]:
    """The batch as reward-proto Edits. The source, mask and target PNGs are encoded once per group
    and the same bytes go in every edit of the group (and, as the same protos, to every service)."""
    hwc = lambda image: image.permute(1, 2, 0).numpy()  # noqa: E731 - [3, H, W] -> [H, W, 3]
    targets = batch.target_images
    rows = [
        (
            wire_image(hwc(batch.source_images[r]), "source_image"),
            wire_mask(batch.edit_masks[r, 0].numpy()),
            b"" if targets is None else wire_image(hwc(targets[r]), "target_image"),
        )
        for r in range(len(batch.condition))
    ]
    edits = []
    for i in range(len(batch)):
        source, mask, target = rows[int(batch.group_index[i])]
        edits.append(
            reward_pb2.Edit(
                edit_id=batch.edit_ids[i],
                group_id=batch.group_ids[i],
                policy_version=int(batch.policy_version),
                instruction=batch.instructions[i],
                source_image=source,
                edited_image=wire_image(hwc(batch.edited_images[i]), "edited_image"),
                edit_mask=mask,
                target_image=target,
            )
        )
    return edits

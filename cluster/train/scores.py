"""A rollout batch's reward protos (to_groups: what the rollout workers send; to_edits: every image in
every edit), and its scores: the weighted reward and the metrics (cluster/train/scored.py makes them).

scores = batch_scores(batch, cfg.rewards)   # cluster/train/scored.py
scores.rewards.total    # [N] float64, R = sum_k w_k S_k; NaN where an edit could not be scored
scores.rewards.scored   # [N] bool: the edits that stay in the batch (rewards/weighting.py)
scores.metrics()        # {"reward/mean", "reward/<score>", "reward/dropped_edits", "<service>/<component>", ...}
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
import torch

from cocoedit.actors.types import RolloutBatch
from cocoedit.protos import reward_pb2
from cocoedit.rewards.base import EditOutcome
from cocoedit.rewards.client import wire_image, wire_mask
from cocoedit.rewards.weighting import Rewards


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


def to_edits(batch: RolloutBatch) -> list[reward_pb2.Edit]:
    """The batch as reward-proto Edits, each with every image. The source, mask and target PNGs are
    encoded once per group and the same bytes go in every edit of the group."""
    rows = _shared_pngs(batch)
    return [_edit(batch, i, *rows[int(batch.group_index[i])]) for i in range(len(batch))]


def to_groups(batch: RolloutBatch) -> tuple[list[reward_pb2.Edit], list[reward_pb2.Group]]:
    """The batch as Edits carrying their own edited image only, and one Group per group with what its
    edits share (source, mask and target PNG, encoded once): each image once on the wire. A server
    decodes a group's images once for all its edits (rewards/edits.RequestEdits); expanded
    (rewards/edits.expand_groups) they are the same protos as to_edits."""
    rows = _shared_pngs(batch)
    groups: dict[str, reward_pb2.Group] = {}
    for i, group_id in enumerate(batch.group_ids):
        if group_id not in groups:
            source, mask, target = rows[int(batch.group_index[i])]
            groups[group_id] = reward_pb2.Group(
                group_id=group_id, source_image=source, edit_mask=mask, target_image=target
            )
    return [_edit(batch, i, b"", b"", b"") for i in range(len(batch))], list(groups.values())


def _shared_pngs(batch: RolloutBatch) -> list[tuple[bytes, bytes, bytes]]:
    """(source, mask, target) PNG bytes of each row (group) of the batch; target b"" when none."""
    targets = batch.target_images
    return [
        (
            wire_image(_hwc(batch.source_images[r]), "source_image"),
            wire_mask(batch.edit_masks[r, 0].numpy()),
            b"" if targets is None else wire_image(_hwc(targets[r]), "target_image"),
        )
        for r in range(len(batch.condition))
    ]


def _edit(batch: RolloutBatch, i: int, source: bytes, mask: bytes, target: bytes) -> reward_pb2.Edit:
    return reward_pb2.Edit(
        edit_id=batch.edit_ids[i],
        group_id=batch.group_ids[i],
        policy_version=int(batch.policy_version),
        instruction=batch.instructions[i],
        source_image=source,
        edited_image=wire_image(_hwc(batch.edited_images[i]), "edited_image"),
        edit_mask=mask,
        target_image=target,
    )


def _hwc(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] -> [H, W, 3]."""
    return image.permute(1, 2, 0).numpy()

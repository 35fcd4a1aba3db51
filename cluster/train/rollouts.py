"""Rollout batches drawn ahead of the learner, with bounded staleness.

While epoch k is scored and trained on, the rollout workers may already sample epochs k+1 ..
k+rollout.max_staleness with the weights they hold (0 = strictly on-policy: the next batch is drawn
only after the workers received the new weights). Each batch keeps the sampler state from before it
was drawn, so a checkpoint taken while batches are in flight resumes by drawing them again. The
workers score their own shards (cluster/train/scored.py): a batch comes back as ids, outcomes and
references, scored.
"""

from __future__ import annotations

import collections
import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cocoedit.actors.epochs import EpochSampler, epoch_items
from cocoedit.actors.types import IndexItem
from cocoedit.cluster.train.groups import RolloutGroup
from cocoedit.cluster.train.scored import ScoredBatch, recover, scoring_of


@dataclass
class Pending:
    """A rollout batch in flight and the sampler state from before it was drawn."""

    refs: Any  # what RolloutGroup.sample_async returned
    sampler_state: dict
    epoch: int


class RolloutQueue:
    """Batches in flight for epochs `start` .. `epochs - 1`, oldest first."""

    def __init__(
        self,
        rollout: RolloutGroup,
        services: Any,  # cluster.runtime.services.RewardServices: where the workers send their edits
        sampler: EpochSampler,
        items: Mapping[str, IndexItem],
        start: int,
        epochs: int,
    ) -> None:
        self.rollout = rollout
        self.services = services
        self.sampler = sampler
        self.items = items
        self.epochs = epochs
        self.next_epoch = start  # the next epoch to draw
        self.pending: collections.deque[Pending] = collections.deque()
        self.sampled = 0  # edits taken for training by this process

    def fill(self, depth: int, version: int) -> None:
        """Start sampling until `depth` batches are in flight (or every epoch is drawn)."""
        while len(self.pending) < depth and self.next_epoch < self.epochs:
            state = copy.deepcopy(self.sampler.state_dict())
            batch_items, upcoming = epoch_items(self.sampler, self.items)  # workers prefetch `upcoming`
            refs = self.rollout.sample_async(batch_items, version, scoring_of(self.services), upcoming)
            self.pending.append(Pending(refs, state, self.next_epoch))
            self.next_epoch += 1

    def next(self) -> ScoredBatch:
        """The oldest batch in flight, once sampled and scored (re-sampled if its worker died; a service
        that failed in a worker re-scored there once the driver restarted it)."""
        batch = self.rollout.gather(self.pending.popleft().refs)
        recover(self.services, self.rollout, batch)
        self.sampled += len(batch)
        return batch

    def sampler_state(self) -> dict:
        """The sampler state to checkpoint: from before the oldest batch still in flight."""
        return self.pending[0].sampler_state if self.pending else self.sampler.state_dict()

    @property
    def depth(self) -> int:
        return len(self.pending)

"""The epoch sampler: which items an epoch draws, grouped, each edit with its own noise seed.

sampler = EpochSampler(list(index), n_items, group_size, seed)
items = grouped_items(sampler.next_epoch(), index)   # GroupedItems for the rollout workers
upcoming = grouped_items(sampler.peek_epoch(), index)  # the next epoch as it stands (to prefetch)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from cocoedit.actors.types import GroupedItem, IndexItem


@dataclass(frozen=True)
class Draw:
    """One edit of an epoch, before the item is attached (see `grouped_items`)."""

    item_id: str
    group_id: str  # f"{epoch}:{item_id}"
    edit_id: str  # f"{epoch}:{item_id}:{k}", k < group_size
    seed: int  # initial-noise seed, distinct for every edit of a run


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1)[0])


class EpochSampler:
    """Draws n_items distinct items per epoch, each repeated group_size times (one group per item).

    Items are walked in shuffled passes: every active item comes once per pass before any repeats; an
    epoch that straddles two passes defers to the end of the new pass the items it already holds, so
    items inside an epoch stay distinct. Everything is deterministic from `seed`; `state_dict` /
    `load_state_dict` resume exactly. Banned items are never drawn again."""

    def __init__(self, item_ids: Sequence[str], n_items: int, group_size: int, seed: int = 0) -> None:
        ids = list(item_ids)
        duplicates = sorted(i for i, c in Counter(ids).items() if c > 1)
        if duplicates:
            raise ValueError(f"item ids must be unique; repeated: {duplicates[:5]}")
        if group_size < 1:
            raise ValueError(f"data.group_size={group_size} must be >= 1")
        if not 1 <= n_items <= len(ids):
            raise ValueError(f"data.n_items={n_items} must be between 1 and the {len(ids)} items in the data")
        self.item_ids = ids
        self.n_items = n_items
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0
        self.edits_drawn = 0
        self.passes = 0
        self.banned: set[str] = set()
        self._order: list[str] = []  # rest of the current pass, next item first
        self._seed_base = _mix(seed, 1) % 2**31

    def _new_pass(self) -> list[str]:
        active = [i for i in self.item_ids if i not in self.banned]
        gen = torch.Generator().manual_seed(_mix(self.seed, 2, self.passes))
        self.passes += 1
        return [active[j] for j in torch.randperm(len(active), generator=gen).tolist()]

    def next_epoch(self) -> list[Draw]:
        """The next epoch: n_items groups of group_size edits, groups contiguous."""
        chosen: list[str] = []
        while len(chosen) < self.n_items:
            if not self._order:
                fresh = self._new_pass()
                # items already in this epoch wait until the end of the new pass
                self._order = [i for i in fresh if i not in chosen] + [i for i in fresh if i in chosen]
            chosen.append(self._order.pop(0))
        draws = []
        for item_id in chosen:
            group_id = f"{self.epoch}:{item_id}"
            for k in range(self.group_size):
                seed = (self._seed_base + self.edits_drawn) % 2**31
                draws.append(Draw(item_id, group_id, f"{group_id}:{k}", seed))
                self.edits_drawn += 1
        self.epoch += 1
        return draws

    def peek_epoch(self) -> list[Draw]:
        """What next_epoch() would return now, without drawing it (a ban before then can change it)."""
        saved = (self.epoch, self.edits_drawn, self.passes, list(self._order))
        try:
            return self.next_epoch()
        finally:
            self.epoch, self.edits_drawn, self.passes, self._order = saved

    def ban(self, item_ids: Sequence[str]) -> None:
        """Never draw these items again (e.g. groups that are already solved)."""
        known = set(self.item_ids)
        unknown = sorted(set(item_ids) - known)
        if unknown:
            raise ValueError(f"cannot ban unknown item ids {unknown[:5]}")
        banned = self.banned | set(item_ids)
        remaining = len(known) - len(banned)
        if remaining < self.n_items:
            raise ValueError(
                f"banning {len(set(item_ids) - self.banned)} more item(s) leaves {remaining} of {len(known)} "
                f"items but data.n_items={self.n_items} are needed per epoch; lower data.n_items, add data, "
                f"or relax the ban thresholds (learner.ban_*)"
            )
        self.banned = banned
        self._order = [i for i in self._order if i not in banned]

    def state_dict(self) -> dict:
        return {
            "item_ids": list(self.item_ids),
            "n_items": self.n_items,
            "group_size": self.group_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "edits_drawn": self.edits_drawn,
            "passes": self.passes,
            "banned": sorted(self.banned),
            "order": list(self._order),
        }

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("item_ids", "n_items", "group_size", "seed"):
            if state[key] != getattr(self, key):
                what = "the item ids" if key == "item_ids" else f"{key}={state[key]!r}"
                raise ValueError(
                    f"sampler state was saved with {what}, but this sampler has a different {key}; "
                    f"resume with the same data and data.* config, or start a new run"
                )
        self.epoch = int(state["epoch"])
        self.edits_drawn = int(state["edits_drawn"])
        self.passes = int(state["passes"])
        self.banned = set(state["banned"])
        self._order = list(state["order"])


def grouped_items(draws: Sequence[Draw], index: Mapping[str, IndexItem]) -> list[GroupedItem]:
    """Attach the index's items (EditItems, ItemRefs or SynthRefs, by id) to an epoch's draws."""
    missing = sorted({d.item_id for d in draws} - index.keys())
    if missing:
        raise KeyError(f"draws name items that are not in the index: {missing[:5]}")
    return [GroupedItem(index[d.item_id], d.group_id, d.edit_id, d.seed) for d in draws]


def epoch_items(
    sampler: EpochSampler, index: Mapping[str, IndexItem]
) -> tuple[list[GroupedItem], list[GroupedItem]]:
    """The next epoch's grouped items, and the epoch after it as it stands now (for the rollout
    workers to prefetch while they sample this one; a ban before then only costs a wasted read)."""
    items = grouped_items(sampler.next_epoch(), index)
    return items, grouped_items(sampler.peek_epoch(), index)

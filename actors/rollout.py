"""The rollout worker: samples groups of edits with theta_old (the `old` LoRA adapter).

A plain class; `cluster/` makes it a Ray actor (`ray.remote(RolloutWorker)`), tests build it directly:

    worker = RolloutWorker(policy_cfg, rollout_cfg)            # loads policy_cfg.model_path
    worker.prefetch(next_grouped_items)                        # read their files in the background
    batch = worker.sample(grouped_items, policy_version=0)     # RolloutBatch
    worker.load_weights(learner_sampling_state, version=1)     # new theta_old

Each edit's initial noise comes from its own `GroupedItem.seed` (`samplers.initial_noise`: a CPU
generator, drawn as the diffusers pipelines draw it for batch size 1), so an edit's result does not
depend on which worker samples it or on its batch-mates. The batch holds each group's condition once.
Items given as ItemRefs are read by the worker that samples them (actors.items), ahead of time when it
was told to `prefetch` them.
"""

from __future__ import annotations

from typing import Optional

import torch

from cocoedit.actors.config import PolicyConfig, RolloutConfig
from cocoedit.actors.items import ItemPrefetcher
from cocoedit.actors.policies.base import EditPolicy
from cocoedit.actors.samplers import SAMPLERS, initial_noise, sample, shifted_sigmas
from cocoedit.actors.types import Condition, GroupedItem, RolloutBatch
from cocoedit.telemetry import record_sample
from cocoedit.timing import StageTimer


class RolloutWorker:
    """Samples RolloutBatches with the policy's `old` adapter; CPU or one GPU (dtype from PolicyConfig)."""

    def __init__(
        self,
        policy_cfg: PolicyConfig,
        rollout_cfg: RolloutConfig,
        policy: Optional[EditPolicy] = None,
    ) -> None:
        if rollout_cfg.sampler not in SAMPLERS:
            raise ValueError(
                f"rollout.sampler={rollout_cfg.sampler!r} is unknown; expected one of {SAMPLERS}"
            )
        if rollout_cfg.batch_size < 1:
            raise ValueError(f"rollout.batch_size={rollout_cfg.batch_size} must be >= 1")
        if policy is None:
            from cocoedit.actors.policies import load_policy

            policy = load_policy(policy_cfg, seed=rollout_cfg.seed)
        self.policy = policy
        self.policy_cfg = policy_cfg
        self.rollout_cfg = rollout_cfg
        self._version = 0
        self._items = ItemPrefetcher()

    @property
    def version(self) -> int:
        """Policy version of the `old` adapter this worker samples with."""
        return self._version

    def load_weights(self, state: dict[str, torch.Tensor], version: int, allow_older: bool = False) -> None:
        """Swap the sampling (`old`) LoRA for `state` (keys as EditPolicy.lora_state_dict gives them).

        Versions only go forward unless `allow_older` (re-sampling a shard with the version it was
        first drawn with, after the worker was restarted)."""
        if version < self._version and not allow_older:
            raise ValueError(
                f"load_weights(version={version}) is older than the loaded version {self._version}"
            )
        self.policy.load_lora_state_dict(state, "old")
        self._version = version

    def sigmas(self, height: int, width: int) -> torch.Tensor:
        """The sampler's sigma schedule [T + 1] for height x width images."""
        length, _ = self.policy.latent_shape(height, width)
        return shifted_sigmas(self.rollout_cfg.num_steps, length, self.policy.scheduler_config())

    def prefetch(self, items: list[GroupedItem]) -> None:
        """Start reading the files of items this worker will sample next; returns at once."""
        self._items.prefetch(items)

    def reads(self) -> dict[str, int]:
        """Items this worker took from a prefetch and items it had to read when asked to sample them."""
        return {"prefetched": self._items.hits, "read_on_the_spot": self._items.misses}

    @torch.no_grad()
    def sample(self, items: list[GroupedItem], policy_version: int) -> RolloutBatch:
        """Sample one edit per GroupedItem with theta_old, in micro-batches of rollout.batch_size."""
        if not items:
            raise ValueError("RolloutWorker.sample got no items")
        if policy_version != self._version:
            raise ValueError(
                f"asked to sample with policy version {policy_version} but this worker holds version "
                f"{self._version}; call load_weights(state, {policy_version}) first"
            )
        timer = StageTimer()
        with timer("read"):
            items = self._items.resolve(items)  # ItemRefs -> EditItems (prefetched, or read now)
        policy, cfg = self.policy, self.rollout_cfg
        sizes = {tuple(gi.loaded.source_image.shape) for gi in items}
        if len(sizes) != 1:
            raise ValueError(f"all items of one sample() call must share one image size, got {sorted(sizes)}")
        _, height, width = sizes.pop()

        with timer("encode"):
            # One condition per group (all edits of a group share source and instruction), one item at a
            # time so the encoding of an item does not depend on the other items of the call.
            group_index: dict[str, int] = {}
            per_group: list[Condition] = []
            first_of_group: list[int] = []  # the index in `items` of each group's first edit
            for i, gi in enumerate(items):
                if gi.group_id not in group_index:
                    group_index[gi.group_id] = len(per_group)
                    first_of_group.append(i)
                    per_group.append(
                        policy.encode_condition([gi.loaded.instruction], gi.loaded.source_image[None])
                    )
            groups = policy.merge_conditions(per_group)
            rows = torch.tensor([group_index[gi.group_id] for gi in items], dtype=torch.long)

        with timer("sample"):
            sigmas = self.sigmas(height, width)
            # One generator per edit: the initial noise, then (sde) the noise of every step, continue its stream.
            generators = [torch.Generator().manual_seed(gi.seed) for gi in items]
            noise = torch.stack([initial_noise(policy, g, height, width) for g in generators])
            on_device = groups.to(policy.device)
        x0, edited, trajectory, log_probs = [], [], [], []
        for lo in range(0, len(items), cfg.batch_size):
            idx = list(range(lo, min(lo + cfg.batch_size, len(items))))
            with timer("sample"), policy.adapter("old"):
                result = sample(
                    policy,
                    on_device.select(rows[idx]),
                    noise[idx].to(policy.device),
                    sigmas,
                    cfg.sampler,
                    noise_level=cfg.sde_noise_level,
                    generators=[generators[i] for i in idx] if cfg.sampler == "sde" else None,
                )
            x0.append(result.x0.float().cpu())
            if result.trajectory is not None:
                trajectory.append(result.trajectory.float().cpu())
                assert result.log_probs is not None  # sde: set with the trajectory
                log_probs.append(result.log_probs.float().cpu())
            with timer("decode"):
                edited.append(policy.decode(result.x0, height, width))
        timings = {f"{stage}_s": s for stage, s in timer.seconds.items()}
        busy = timings["encode_s"] + timings["sample_s"] + timings["decode_s"]
        timings["edits_per_s"] = len(items) / busy
        record_sample(len(items), busy)  # no-op outside Ray

        firsts = [items[i].loaded for i in first_of_group]  # what a group's edits share: its item
        targets = [item.target_image for item in firsts]
        known = [t for t in targets if t is not None]
        return RolloutBatch(
            edit_ids=[gi.edit_id for gi in items],
            item_ids=[gi.item.item_id for gi in items],
            group_ids=[gi.group_id for gi in items],
            instructions=[gi.loaded.instruction for gi in items],
            policy_version=self._version,
            x0=torch.cat(x0),
            source_latents=policy.source_latents(groups).float().cpu(),
            condition=groups.to("cpu"),
            group_index=rows,
            edited_images=torch.cat(edited),
            source_images=torch.stack([item.source_image for item in firsts]),
            edit_masks=torch.stack([(item.edit_mask * 255).round().to(torch.uint8) for item in firsts]),
            sigmas=sigmas,
            sampler=cfg.sampler,
            height=height,
            width=width,
            seeds=[gi.seed for gi in items],
            target_images=torch.stack(known) if len(known) == len(targets) else None,
            trajectory=torch.cat(trajectory) if trajectory else None,
            log_probs=torch.cat(log_probs) if log_probs else None,
            timings=timings,
        )

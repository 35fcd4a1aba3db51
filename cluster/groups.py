"""Ray actor groups for the two GPU roles: rollout workers and learner ranks.

The components are plain classes (actors.rollout.RolloutWorker, learner.learner.Learner); only this
module makes them Ray actors, and calls their methods by name.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Any, Optional

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError

from actors.config import PolicyConfig, RolloutConfig
from actors.types import GroupedItem, RolloutBatch
from cluster.metrics import record_learner
from learner.config import LearnerConfig

log = logging.getLogger(__name__)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting n items into `shards` nearly equal parts."""
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


class RolloutGroup:
    """`num_workers` RolloutWorker actors; an epoch's items are split into contiguous shards.

    A worker that dies is restarted by Ray (max_restarts); its shard is sampled again after the
    current sampling weights are reloaded into it, so every item of the epoch is sampled exactly once.
    """

    def __init__(self, policy_cfg: PolicyConfig, rollout_cfg: RolloutConfig) -> None:
        from actors.rollout import RolloutWorker

        self.cfg = rollout_cfg
        actor = ray.remote(RolloutWorker).options(
            num_cpus=rollout_cfg.cpus_per_worker,
            num_gpus=rollout_cfg.gpus_per_worker,
            max_restarts=rollout_cfg.max_restarts,
        )
        self.workers = [actor.remote(policy_cfg, rollout_cfg) for _ in range(rollout_cfg.num_workers)]
        self._weights: Optional[ray.ObjectRef] = None
        self._version = 0
        self.resampled_shards = 0

    def sample_async(
        self, items: list[GroupedItem], version: int
    ) -> list[tuple[int, list[GroupedItem], Any]]:
        """Start sampling; returns (worker index, shard, ObjectRef) for `gather`."""
        if version != self._version:
            raise ValueError(f"sampling version {version} but the workers hold version {self._version}")
        bounds = shard_bounds(len(items), len(self.workers))
        return [
            (i, items[a:b], self.workers[i].sample.remote(items[a:b], version))
            for i, (a, b) in enumerate(bounds)
            if b > a  # more workers than edits: the idle ones get no shard
        ]

    def gather(self, pending: list[tuple[int, list[GroupedItem], Any]]) -> RolloutBatch:
        shards = []
        for i, items, ref in pending:
            for attempt in range(self.cfg.max_restarts + 1):
                try:
                    shards.append(ray.get(ref))
                    break
                except RayActorError as e:
                    if attempt == self.cfg.max_restarts:
                        raise RuntimeError(
                            f"rollout worker {i} died {attempt + 1} times sampling a shard of {len(items)} edits; "
                            f"giving up (rollout.max_restarts={self.cfg.max_restarts})"
                        ) from e
                    log.warning("rollout worker %d died (%s); re-sampling its shard after restart", i, e)
                    self.resampled_shards += 1
                    self._reload(self.workers[i])
                    ref = self.workers[i].sample.remote(items, self._version)
        return RolloutBatch.cat(shards)

    def sample(self, items: list[GroupedItem], version: int) -> RolloutBatch:
        return self.gather(self.sample_async(items, version))

    def load(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Send the sampling LoRA to every worker: one ray.put, every worker gets the reference."""
        self._weights = ray.put(state)
        self._version = version
        ray.get([w.load_weights.remote(self._weights, version) for w in self.workers])

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)

    def _reload(self, worker: Any, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:  # the restarted actor answers once its constructor has run again
            try:
                if self._weights is not None:
                    ray.get(worker.load_weights.remote(self._weights, self._version))
                else:
                    ray.get(worker.__ray_ready__.remote())
                return
            except RayActorError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


class LearnerRank:
    """One data-parallel rank: sets the torch.distributed environment, then builds the Learner."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.learner: Any = None

    def endpoint(self) -> tuple[str, int]:
        """This node's address and a free port (used by rank 0 as the rendezvous)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def setup(self, policy_cfg: PolicyConfig, cfg: LearnerConfig, master_addr: str, master_port: int) -> None:
        from learner.learner import Learner

        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            LOCAL_RANK="0",  # one visible device per actor
            WORLD_SIZE=str(self.world_size),
        )
        self.learner = Learner(policy_cfg, cfg, rank=self.rank, world_size=self.world_size)

    def update(self, batch: RolloutBatch, advantages: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
        metrics = self.learner.update(batch, advantages, valid)
        if self.rank == 0:  # already reduced over ranks
            record_learner(metrics)
        return metrics

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        return self.learner.sampling_weights()

    def save(self, run_dir: str, extra_state: dict, keep_last: int) -> str:
        return str(self.learner.save(run_dir, extra_state, keep_last))

    def load(self, path: str) -> dict:
        return self.learner.load(path)


class LearnerGroup:
    """`world_size` LearnerRank actors; each update splits the epoch's edits into per-rank shards."""

    def __init__(self, policy_cfg: PolicyConfig, cfg: LearnerConfig) -> None:
        actor = ray.remote(LearnerRank).options(num_cpus=cfg.cpus_per_rank, num_gpus=cfg.gpus_per_rank)
        self.ranks = [actor.remote(r, cfg.world_size) for r in range(cfg.world_size)]
        master_addr, master_port = ray.get(self.ranks[0].endpoint.remote())
        ray.get([r.setup.remote(policy_cfg, cfg, master_addr, master_port) for r in self.ranks])

    def update(self, batch: RolloutBatch, advantages: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
        bounds = shard_bounds(len(batch), len(self.ranks))
        refs = [
            r.update.remote(batch.select(list(range(a, b))), advantages[a:b], valid[a:b])
            for r, (a, b) in zip(self.ranks, bounds, strict=True)
        ]
        return ray.get(refs)[0]  # the Learner already reduces its metrics over ranks

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        return ray.get(self.ranks[0].sampling_weights.remote())

    def save(self, run_dir: str, extra_state: dict, keep_last: int) -> str:
        """Collective checkpoint under run_dir/checkpoints; returns its directory."""
        return ray.get([r.save.remote(run_dir, extra_state, keep_last) for r in self.ranks])[0]

    def load(self, path: str) -> dict:
        return ray.get([r.load.remote(path) for r in self.ranks])[0]

    def close(self) -> None:
        for r in self.ranks:
            ray.kill(r)

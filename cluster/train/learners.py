"""The learner's Ray actors: one LearnerRank per data-parallel rank (learner.learner.Learner in an actor
that sets the torch.distributed environment), driven together by LearnerGroup.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Optional

import ray
import torch
from ray.exceptions import ObjectLostError

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.types import RolloutBatch
from cocoedit.cluster.runtime.deadlines import Deadlines, NotStarted
from cocoedit.cluster.runtime.placement import Placement, use_cpus
from cocoedit.cluster.train.groups import shard_bounds
from cocoedit.cluster.train.scored import ScoredBatch, read_edits
from cocoedit.learner.config import LearnerConfig
from cocoedit.telemetry import record_learner

log = logging.getLogger(__name__)


class LearnerRank:
    """One data-parallel rank: sets the torch.distributed environment, then builds the Learner.

    Counts, for this process: edits handed to it (`handed_ids`: an edit handed twice is an error), the
    valid ones, and those trained on (the valid edits of updates that took an optimizer step).
    """

    def __init__(
        self, rank: int, world_size: int, cpus: float = 1.0, cores: Optional[list[int]] = None
    ) -> None:
        use_cpus(cpus, cores)
        self.rank = rank
        self.world_size = world_size
        self.learner: Any = None
        self.fetched: Optional[RolloutBatch] = None  # the edits of the next update (fetch)
        self.handed_ids: set[str] = set()
        self.counts = {"valid": 0, "trained": 0}

    def endpoint(self) -> tuple[str, int]:
        """This node's address and a free port (used by rank 0 as the rendezvous)."""
        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind((ip, 0))
            return ip, s.getsockname()[1]

    def setup(self, policy_cfg: PolicyConfig, cfg: LearnerConfig, master_addr: str, master_port: int) -> None:
        from cocoedit.learner.learner import Learner

        os.environ.update(
            MASTER_ADDR=master_addr,
            MASTER_PORT=str(master_port),
            RANK=str(self.rank),
            LOCAL_RANK="0",  # one visible device per actor
            WORLD_SIZE=str(self.world_size),
        )
        self.learner = Learner(policy_cfg, cfg, rank=self.rank, world_size=self.world_size)

    def update(
        self, batch: RolloutBatch, advantages: torch.Tensor, valid: torch.Tensor, progress: Optional[float]
    ) -> dict[str, float]:
        again = self.handed_ids.intersection(batch.edit_ids)
        if again:
            raise ValueError(f"learner rank {self.rank}: edits {sorted(again)[:4]} were already handed to it")
        metrics = self.learner.update(batch, advantages, valid, progress)
        self.handed_ids.update(batch.edit_ids)
        n_valid = int(torch.as_tensor(valid).bool().sum())
        self.counts["valid"] += n_valid
        if not metrics.get("learner/skipped"):
            self.counts["trained"] += n_valid
        if self.rank == 0:  # already reduced over ranks
            record_learner(metrics)
        return metrics

    def fetch(self, pieces: list[tuple[list[Any], int, int]]) -> list[str]:
        """Fetch this rank's edits of the next update from the rollout workers' shards (ScoredBatch.pieces);
        returns the ids (hex) of the shards lost with their node (then nothing is kept)."""
        parts, lost = [], []
        for refs, _, _ in pieces:
            try:
                parts.append(ray.get(refs[0]))
            except ObjectLostError:  # its node is gone: the driver samples it again (RolloutGroup.resample)
                lost.append(refs[0].hex())
        self.fetched = None if lost else read_edits(parts, pieces)
        return lost

    def update_fetched(
        self, advantages: torch.Tensor, valid: torch.Tensor, progress: Optional[float]
    ) -> dict[str, float]:
        """update() on the edits the last `fetch` brought."""
        batch, self.fetched = self.fetched, None
        if batch is None:
            raise RuntimeError(f"learner rank {self.rank}: update_fetched without a complete fetch")
        return self.update(batch, advantages, valid, progress)

    def sampling_weights(self) -> list[ray.ObjectRef]:
        """theta_old's LoRA, put in this rank's object store: [reference] (in a list, so Ray passes the
        reference on without fetching the tensors); rollout workers fetch it from here."""
        return [ray.put(self.learner.sampling_weights())]

    def edit_counts(self) -> dict[str, int]:
        """{"handed", "valid", "trained"}: edits of this process's updates."""
        return {"handed": len(self.handed_ids), **self.counts}

    def save(self, run_dir: str, extra_state: dict, keep_last: int) -> str:
        return str(self.learner.save(run_dir, extra_state, keep_last))

    def load(self, path: str) -> dict:
        return self.learner.load(path)


class LearnerGroup:
    """`world_size` LearnerRank actors; each update splits the epoch's edits into per-rank shards.
    A rank that does not answer an update, a checkpoint or a weight transfer within its deadline
    (`deadlines`) raises Hung: the ranks share collectives, so the run stops (LearnerGuard, loop.py)."""

    def __init__(
        self,
        policy_cfg: PolicyConfig,
        cfg: LearnerConfig,
        placement: Placement,
        deadlines: Optional[Deadlines] = None,
    ) -> None:
        self.deadlines = deadlines or Deadlines()
        actor: Any = ray.remote(LearnerRank)  # Ray's stubs type actor methods without .remote
        started = time.monotonic()  # constructors, DeepSpeed set-up and rendezvous: run.deadline_start_s
        self.ranks = [
            actor.options(**placement.learner(r)).remote(
                r, cfg.world_size, cfg.cpus_per_rank, placement.cores_of("learner ranks", r)
            )
            for r in range(cfg.world_size)
        ]
        names = self._names()
        try:
            self.deadlines.started([r.__ray_ready__.remote() for r in self.ranks], names, "start", started)
            endpoint = [self.ranks[0].endpoint.remote()]
            master_addr, master_port = self.deadlines.started(endpoint, names[:1], "start", started)[0]
            self.deadlines.started(
                [r.setup.remote(policy_cfg, cfg, master_addr, master_port) for r in self.ranks],
                names,
                "set up (load the editor, DeepSpeed's init and the rendezvous of all ranks)",
                started,
                "a rank that does not join holds up the others; check policy.model_path and learner.deepspeed",
            )
        except NotStarted:
            self.close()
            raise
        self.cfg = cfg
        self.skipped_updates = 0

    def update(
        self,
        batch: ScoredBatch,
        advantages: torch.Tensor,
        valid: torch.Tensor,
        resample: Optional[Callable[[ScoredBatch, list[int]], None]] = None,
        progress: Optional[float] = None,
    ) -> dict[str, Any]:
        """One step of every rank on its shard (contiguous, `shard_bounds`), which the rank fetches from
        the rollout workers' pixel-free shards first (all ranks, before any steps: a shard lost with its
        node is sampled again by `resample`, RolloutGroup.resample, and fetched again); the metrics, and the
        counters (`counters`) so far. An update that takes no step adds `learner/skip_reason` and logs it.
        `progress`: learner/schedule.py run_fraction, for learner.lam_schedule."""
        bounds = shard_bounds(len(batch), len(self.ranks))
        for attempt in range(2):
            fetches = [
                r.fetch.remote(batch.pieces(a, b)) for r, (a, b) in zip(self.ranks, bounds, strict=True)
            ]
            lost = {ref for refs in self.deadlines.get(fetches, "fetch", self._names()) for ref in refs}
            if not lost:
                break
            if resample is None or attempt == 1:
                raise RuntimeError(
                    f"{len(lost)} shard(s) of the batch were lost before the learner fetched them"
                )
            resample(batch, [k for k, p in enumerate(batch.parts) if p.latents.hex() in lost])
        refs = [
            r.update_fetched.remote(advantages[a:b], valid[a:b], progress)
            for r, (a, b) in zip(self.ranks, bounds, strict=True)
        ]
        # the Learner already reduces its metrics over ranks
        metrics: dict[str, Any] = self.deadlines.get(refs, "update", self._names())[0]
        if metrics.get("learner/skipped"):
            self.skipped_updates += 1
            # the Learner skips only when no rank has a valid edit
            metrics["learner/skip_reason"] = (
                f"no valid edit among {len(batch)}: every group's rewards were too uniform (std <= "
                f"learner.valid_min_std={self.cfg.valid_min_std:g}) or already high (mean >= "
                f"learner.valid_max_mean={self.cfg.valid_max_mean:g})"
            )
            log.warning("learner update skipped, no optimizer step: %s", metrics["learner/skip_reason"])
        return {**metrics, **self.counters()}

    def sampling_weights(self) -> ray.ObjectRef:
        """A reference to theta_old's LoRA in rank 0's object store (the driver never holds the tensors)."""
        return self.deadlines.get(self.ranks[0].sampling_weights.remote(), "weights", self._names()[:1])[0]

    def _names(self) -> list[str]:
        return [f"learner rank {r}" for r in range(len(self.ranks))]

    def counters(self) -> dict[str, float]:
        """Since this group started: edits handed to the learner (each to exactly one rank), the valid
        ones, those trained on (valid edits of updates that took a step), and updates skipped."""
        counts = self.deadlines.get([r.edit_counts.remote() for r in self.ranks], "counts", self._names())
        return {
            **{
                f"samples/{k}_total": float(sum(c[k] for c in counts)) for k in ("handed", "valid", "trained")
            },
            "learner/skipped_updates_total": float(self.skipped_updates),
        }

    def save(self, run_dir: str, extra_state: dict, keep_last: int) -> str:
        """Collective checkpoint under run_dir/checkpoints; returns its directory."""
        refs = [r.save.remote(run_dir, extra_state, keep_last) for r in self.ranks]
        return self.deadlines.get(refs, "checkpoint", self._names())[0]

    def load(self, path: str) -> dict:
        """Every rank loads checkpoint `path` (`--resume`) within run.deadline_start_s; its extra state."""
        refs = [r.load.remote(path) for r in self.ranks]
        return self.deadlines.started(refs, self._names(), f"load checkpoint {path}", time.monotonic())[0]

    def close(self) -> None:
        for r in self.ranks:
            ray.kill(r)

"""Ray actor groups for the two GPU roles: rollout workers and learner ranks.

The components are plain classes (actors.rollout.RolloutWorker, learner.learner.Learner); only this
module makes them Ray actors, and calls their methods by name.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Optional

import numpy as np
import ray
import torch
from ray.exceptions import ObjectLostError, RayActorError

from cocoedit.actors.config import PolicyConfig, RolloutConfig
from cocoedit.actors.types import GroupedItem, RolloutBatch
from cocoedit.cluster.runtime.deadlines import Deadlines, Hung, NotStarted
from cocoedit.cluster.runtime.placement import Placement, use_cpus
from cocoedit.cluster.train.scored import (
    ScoredBatch,
    ScoredShard,
    Scoring,
    ShardScorer,
    group_chunks,
    read_edits,
)
from cocoedit.learner.config import LearnerConfig
from cocoedit.telemetry import record_learner

log = logging.getLogger(__name__)


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges splitting n items into `shards` nearly equal parts."""
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


@functools.cache
def _rollout_actor() -> type:
    """RolloutWorker plus `sample_at`, which a worker restarted by Ray uses to reload the weights."""
    from cocoedit.actors.rollout import RolloutWorker

    class RolloutActor(RolloutWorker):
        synced: Optional[int] = None  # the version the driver last loaded; None after a (re)start

        def __init__(
            self, policy_cfg: PolicyConfig, rollout_cfg: RolloutConfig, cores: Optional[list[int]] = None
        ) -> None:
            use_cpus(rollout_cfg.cpus_per_worker, cores)  # before the policy loads: its threads follow
            super().__init__(policy_cfg, rollout_cfg)

        def load_weights(
            self, state: dict[str, torch.Tensor], version: int, allow_older: bool = False
        ) -> None:
            super().load_weights(state, version, allow_older)
            self.synced = version

        scorer: Optional[ShardScorer] = None  # this worker's reward clients (cluster/train/scored.py)

        @ray.method(num_returns=3)
        def sample_scored(
            self,
            items: list[GroupedItem],
            version: int,
            weights: list[Any],
            scoring: Scoring,
            keep_pixels: bool,
        ) -> tuple[ScoredShard, RolloutBatch, Optional[RolloutBatch]]:
            """Sample `items` a few whole groups at a time (`group_chunks`), each chunk sent to every reward
            service while the next one samples; returns (what the driver reads, the shard without pixels
            for the learner, the shard with them when `keep_pixels`). A worker that does not hold
            `version` from the driver (it was restarted since) first loads weights[0] (an ObjectRef inside
            a list: fetched only then)."""
            if self.synced != version and weights[0] is not None:
                log.warning("rollout worker (re)started: loading policy version %d before sampling", version)
                self.load_weights(ray.get(weights[0]), version, allow_older=True)
            if self.scorer is None:
                self.scorer = ShardScorer()
            self.scorer.connect(scoring)
            chunks = []
            for chunk in group_chunks(items, self.rollout_cfg.batch_size):
                chunks.append(self.sample(chunk, version))
                self.scorer.submit(chunks[-1])
            batch = RolloutBatch.cat(chunks)
            seconds = {
                k: sum(c.timings.get(k, 0.0) for c in chunks) for k in chunks[0].timings if k.endswith("_s")
            }
            busy = seconds["encode_s"] + seconds["sample_s"] + seconds["decode_s"]
            batch.timings = {**seconds, "edits_per_s": len(batch) / busy}  # the chunks ran one after another
            shard = self.scorer.finish(batch, items[0].edit_id)
            return shard, batch.without_images(), batch if keep_pixels else None

        def rescore(self, key: str, name: str, scoring: Scoring) -> list[Any]:
            """The edits of shard `key` that service `name` failed to score, scored again."""
            assert self.scorer is not None  # set by the sample_scored that kept them
            return self.scorer.rescore(key, name, scoring)

    return RolloutActor


class RolloutGroup:
    """`num_workers` RolloutWorker actors; an epoch's items are split into contiguous shards.

    A worker that dies is restarted by Ray (max_restarts); one that does not answer within its deadline
    (`deadlines`, stage "sample") is killed and restarted. Its shard is sampled again, with the
    weights of the version it was first sampled with (same seeds, so the same edits), and the batch
    is used once: every item of the epoch is sampled and trained on exactly once.
    The workers start (load the editor) in the background; `wait_started` waits for them within
    run.deadline_start_s.
    """

    def __init__(
        self,
        policy_cfg: PolicyConfig,
        rollout_cfg: RolloutConfig,
        placement: Placement,
        deadlines: Optional[Deadlines] = None,
    ) -> None:
        self.cfg = rollout_cfg
        self.deadlines = deadlines or Deadlines()
        actor: Any = ray.remote(_rollout_actor())  # Ray's stubs type actor methods without .remote
        self._started = time.monotonic()
        self.workers = [
            actor.options(**placement.rollout(i), max_restarts=rollout_cfg.max_restarts).remote(
                policy_cfg, rollout_cfg, placement.cores_of("rollout workers", i)
            )
            for i in range(rollout_cfg.num_workers)
        ]
        self._version = 0
        # weights of the recent versions (None before the first load): a shard in flight when its
        # worker died is re-sampled with the version it was drawn with
        self._weights_of: dict[int, Optional[ray.ObjectRef]] = {0: None}
        self.resampled_shards = 0

    def wait_started(self) -> None:
        """Wait for every worker's constructor (the editor loaded); NotStarted after run.deadline_start_s
        from the workers' creation, the workers killed."""
        names = [f"rollout worker {i}" for i in range(len(self.workers))]
        try:
            self.deadlines.started(
                [w.__ray_ready__.remote() for w in self.workers],
                names,
                "start (load the editor)",
                self._started,
                "check policy.model_path and rollout.cpus_per_worker / gpus_per_worker",
            )
        except NotStarted:
            self.close()
            raise

    def sample_async(
        self,
        items: list[GroupedItem],
        version: int,
        scoring: Scoring,
        upcoming: Optional[list[GroupedItem]] = None,
        keep_pixels: bool = False,
    ) -> list[tuple[int, list[GroupedItem], _Call, Any]]:
        """Start sampling and scoring (`scoring`: where the reward services are); returns (worker index,
        shard, call, its three ObjectRefs) for `gather`. Each worker first starts reading its shard of
        `upcoming` (the next call's items). `keep_pixels`: the workers also keep each shard's pixels."""
        if version != self._version:
            raise ValueError(f"sampling version {version} but the workers hold version {self._version}")
        if upcoming:  # an actor runs calls in order: the prefetch starts before this sample
            for i, (a, b) in enumerate(shard_bounds(len(upcoming), len(self.workers))):
                if b > a:
                    self.workers[i].prefetch.remote(upcoming[a:b])
        bounds = shard_bounds(len(items), len(self.workers))
        call = _Call(version, scoring, keep_pixels)
        return [
            (i, items[a:b], call, self._start(i, items[a:b], call))
            for i, (a, b) in enumerate(bounds)
            if b > a  # more workers than edits: the idle ones get no shard
        ]

    def _start(self, i: int, items: list[GroupedItem], call: _Call) -> list[Any]:
        weights = [self._weights_of[call.version]]
        return self.workers[i].sample_scored.remote(
            items, call.version, weights, call.scoring, call.keep_pixels
        )

    def gather(self, pending: list[tuple[int, list[GroupedItem], _Call, Any]]) -> ScoredBatch:
        """The shards' ids and outcomes (a shard whose worker died or hung is sampled again)."""
        shards = []
        for i, items, call, refs in pending:
            for attempt in range(self.cfg.max_restarts + 1):
                try:
                    shard = self.deadlines.get(refs[0], "sample", [f"rollout worker {i}"])
                    shards.append((i, shard, refs[1], refs[2], (items, call)))
                    break
                # ObjectLostError: the shard was sampled, but on a node lost before it was fetched
                except (RayActorError, ObjectLostError, Hung) as e:
                    if attempt == self.cfg.max_restarts:
                        raise RuntimeError(
                            f"rollout worker {i} died or hung {attempt + 1} times sampling a shard of {len(items)} "
                            f"edits; giving up (rollout.max_restarts={self.cfg.max_restarts})"
                        ) from e
                    if isinstance(e, Hung):
                        log.warning(
                            "%s: killing it; its shard of %d edits is sampled again after restart",
                            e,
                            len(items),
                        )
                        ray.kill(self.workers[i], no_restart=False)
                    else:
                        log.warning(
                            "rollout worker %d died or its node was lost (%s); re-sampling its shard after restart",
                            i,
                            _first_line(e),
                        )
                    self.resampled_shards += 1
                    self._wait_restarted(self.workers[i])
                    refs = self._start(i, items, call)
        return ScoredBatch.of(shards)

    def resample(self, batch: ScoredBatch, lost: list[int]) -> None:
        """Sample again the parts of `batch` whose latents were lost with their node before the learner
        fetched them: the same worker slot (restarted by Ray), items, weights and seeds, so the same edits
        (their outcomes are kept); the part's references are replaced."""
        for k in lost:
            part = batch.parts[k]
            items, call = part.source
            log.warning(
                "the latents of rollout worker %d's shard (%d edits) were lost with its node before the "
                "learner fetched them; sampling the shard again",
                part.worker,
                part.end - part.start,
            )
            self.resampled_shards += 1
            self._wait_restarted(self.workers[part.worker])
            again = self.gather([(part.worker, items, call, self._start(part.worker, items, call))])
            if again.edit_ids != batch.edit_ids[part.start : part.end]:
                raise RuntimeError(f"rollout worker {part.worker} sampled other edits when sampled again")
            part.latents, part.pixels = again.parts[0].latents, again.parts[0].pixels

    def sample(self, items: list[GroupedItem], version: int, scoring: Scoring) -> ScoredBatch:
        """A fixed set sampled and scored; the workers keep its pixels (the image grid's items)."""
        return self.gather(self.sample_async(items, version, scoring, keep_pixels=True))

    def rescore(self, worker: int, key: str, name: str, scoring: Scoring) -> list[Any]:
        """Service `name`'s outcomes of the shard worker `worker` kept under `key` (its first edit id)."""
        return self.deadlines.get(
            self.workers[worker].rescore.remote(key, name, scoring), "sample", [f"rollout worker {worker}"]
        )

    def load(self, state: dict[str, torch.Tensor], version: int) -> None:
        """Send the sampling LoRA to every worker: one ray.put, every worker gets the reference."""
        weights = self._weights_of[version] = ray.put(state)
        self._version = version
        for old in [v for v in self._weights_of if v < version - self.cfg.max_staleness - 1]:
            del self._weights_of[old]
        refs = [w.load_weights.remote(weights, version) for w in self.workers]
        started = time.monotonic()
        for i, ref in enumerate(refs):
            try:
                self.deadlines.get(ref, "load", [f"rollout worker {i}"], started)
            except RayActorError as e:  # restarting: sample_at loads these weights first
                log.warning("rollout worker %d died while loading version %d (%s)", i, version, e)
            except Hung as e:  # restarted: sample_at loads these weights first
                log.warning("%s: killing it; it loads version %d when it samples next", e, version)
                ray.kill(self.workers[i], no_restart=False)

    def close(self) -> None:
        for w in self.workers:
            ray.kill(w)

    def _wait_restarted(self, worker: Any, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:  # the restarted actor answers once its constructor has run again
            try:
                ray.get(worker.__ray_ready__.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return
            except (RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


@dataclasses.dataclass(frozen=True)
class _Call:
    """The settings of a batch's sample_scored calls (a re-sampled shard is called with the same)."""

    version: int
    scoring: Scoring
    keep_pixels: bool


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

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        return self.learner.sampling_weights()

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

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        return self.deadlines.get(self.ranks[0].sampling_weights.remote(), "weights", self._names()[:1])

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

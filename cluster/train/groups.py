"""The rollout workers' Ray actors: RolloutWorker (actors/rollout.py) in an actor, driven together by
RolloutGroup (the learner's ranks: cluster/train/learners.py).

The components are plain classes (actors.rollout.RolloutWorker, learner.learner.Learner); only this
module and learners.py make them Ray actors, and call their methods by name.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
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
)

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


class RolloutFailure(RuntimeError):
    """A rollout worker died or hung more often than rollout.max_restarts: the run stops (one line)."""


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
                        raise RolloutFailure(
                            f"rollout worker {i} died or hung {attempt + 1} time(s) sampling a shard of {len(items)} "
                            f"edits ({_first_line(e)}); giving up (rollout.max_restarts={self.cfg.max_restarts}). "
                            "See its log (Ray dashboard, /tmp/ray/session_latest/logs), then resume with "
                            "`cocoedit train --resume`"
                        ) from e
                    hung = isinstance(e, Hung)
                    why = (
                        f"{e}: killing it"
                        if hung
                        else f"rollout worker {i} died or its node was lost ({_first_line(e)})"
                    )
                    log.warning("%s; its shard of %d edits is sampled again after restart", why, len(items))
                    if hung:
                        ray.kill(self.workers[i], no_restart=False)
                    self.resampled_shards += 1
                    self._wait_restarted(i)
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
            self._wait_restarted(part.worker)
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

    def load(self, weights: ray.ObjectRef, version: int) -> None:
        """Send the sampling LoRA (`LearnerGroup.sampling_weights`: a reference to rank 0's copy) to
        every worker: each fetches it from rank 0's node; the driver passes the reference only."""
        self._weights_of[version] = weights
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

    def _wait_restarted(self, i: int) -> None:
        """Worker i, restarted by Ray, answers again (its constructor loaded the editor again) within
        run.deadline_start_s (it waited 120 s, less than a real editor's load); else NotStarted."""
        started = time.monotonic()
        for attempt in range(60):
            try:
                fix = "check policy.model_path and rollout.cpus_per_worker / gpus_per_worker"
                ready = [self.workers[i].__ray_ready__.remote()]
                self.deadlines.started(
                    ready, [f"rollout worker {i}"], "restart (load the editor)", started, fix
                )
                return
            except RayActorError:  # asked before Ray saw it die: ask again
                if attempt == 59:
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

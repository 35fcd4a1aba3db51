"""Groups scored where they are sampled: the driver never holds pixels.

A rollout worker (`RolloutActor.sample_scored`, cluster/train/groups.py) samples its shard a few whole
groups at a time; each chunk is PNG-encoded once (`to_groups`: the source, mask and target once per
group, on the wire too) and sent to every reward service by the worker's own clients while the next
chunk samples, at most `IN_FLIGHT` requests per service per worker. It returns three objects: a
`ScoredShard` (ids, per-edit outcomes, a few numbers: what the driver fetches), the shard without
pixels (latents, conditions, one-byte masks: fetched by the learner ranks, never by the driver) and,
for the fixed evaluation sets only, the shard with its pixels (the driver fetches the image grid's few
items from it).

    batch = rollout.gather(pending)                   # ScoredBatch: ids, outcomes, ObjectRefs
    recover(services, rollout, batch)                 # a service that failed in a worker, re-scored there
    scores = batch_scores(batch, cfg.rewards)         # Scores, as cluster/train/scores.py makes them

Faults keep the driver's behaviour: a replica that fails a request is retried on another by the
worker's client (rewards/client.py); a service that fails for good in a worker is reported, the
driver restarts its hung or dead replicas (RewardServices.replace_hung, as it did when it scored) and
the worker re-scores the edits it kept (scores are pure functions of the edits: nothing counts twice).
A worker lost mid-epoch re-samples (and re-scores) its shard, as before. A batch drawn ahead
(`rollout.max_staleness`) is scored with the replicas of when it was drawn; replicas added since
serve the next batch.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from cocoedit.actors.types import GroupedItem, RolloutBatch
from cocoedit.cluster.config import RewardsConfig
from cocoedit.cluster.train.scores import Scores, to_groups
from cocoedit.protos import reward_pb2
from cocoedit.rewards.base import EditOutcome
from cocoedit.rewards.client import RewardClient, RewardServiceError
from cocoedit.rewards.config import ClientConfig
from cocoedit.rewards.weighting import combine

log = logging.getLogger(__name__)

IN_FLIGHT = 2  # requests per service a worker has in flight; more chunks wait in its queue


@dataclass(frozen=True)
class Scoring:
    """Where a worker sends its edits: the client settings and each service's replica addresses."""

    client: ClientConfig
    addresses: dict[str, list[str]]  # service -> "host:port" of its replicas (the driver's view)


@dataclass
class ScoredShard:
    """What a worker returns to the driver for one shard: no tensors."""

    edit_ids: list[str]
    item_ids: list[str]
    group_ids: list[str]
    policy_version: int
    outcomes: dict[str, list[EditOutcome]]  # service -> one per edit, shard order (failed services: absent)
    failed: dict[str, str] = field(default_factory=dict)  # service -> its error; the worker keeps the edits
    score_s: dict[str, float] = field(default_factory=dict)  # service -> first request sent to last reply
    wire_bytes: dict[str, int] = field(default_factory=dict)  # service -> protobuf bytes of the edits sent
    # PNG bytes of the shard's "edited" images and of its groups' "source", "mask", "target" (each once)
    png_bytes: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # the worker's stage seconds (summed)


@dataclass
class Part:
    """One worker's shard of a ScoredBatch: edits [start, end) of the batch, and where its data lives."""

    worker: int
    start: int
    end: int
    latents: Any  # ObjectRef of the shard's RolloutBatch without pixels (RolloutBatch.without_images)
    pixels: Any  # ObjectRef of the shard with its pixels (fixed sets only), or None
    # what sampled it, (items, call) of RolloutGroup: a shard whose latents were lost with their node
    # before the learner fetched them is sampled again from it (RolloutGroup.resample)
    source: Any = None


@dataclass
class ScoredBatch:
    """An epoch's (or a fixed set's) edits as the driver holds them: ids, outcomes and references."""

    edit_ids: list[str]
    item_ids: list[str]
    group_ids: list[str]
    policy_version: int
    services: list[str]
    parts: list[Part]
    part_outcomes: list[dict[str, list[EditOutcome]]]  # per part: service -> outcomes (failed: absent)
    failed: dict[int, dict[str, str]]  # part index -> service -> error (until `recover`)
    score_s: dict[str, float]  # service -> the slowest worker's scoring seconds
    wire_bytes: dict[str, int]  # service -> protobuf bytes sent to it by every worker
    png_bytes: dict[str, int]  # ScoredShard.png_bytes, summed
    timings: dict[str, float]

    def __len__(self) -> int:
        return len(self.edit_ids)

    @property
    def outcomes(self) -> dict[str, list[EditOutcome]]:
        """service -> one outcome per edit, batch order (after `recover`: every service, every edit)."""
        if self.failed:
            raise ValueError("services failed in a worker: call recover(services, rollout, batch) first")
        return {k: [o for part in self.part_outcomes for o in part[k]] for k in self.services}

    @staticmethod
    def of(shards: list[tuple[int, ScoredShard, Any, Any, Any]]) -> ScoredBatch:
        """(worker index, shard, latents ref, pixels ref, what sampled it) per shard, in edit order -> one
        batch."""
        parts, start = [], 0
        for worker, shard, latents, pixels, source in shards:
            parts.append(Part(worker, start, start + len(shard.edit_ids), latents, pixels, source))
            start += len(shard.edit_ids)
        s = [shard for _, shard, _, _, _ in shards]
        services = list(dict.fromkeys(k for x in s for k in [*x.outcomes, *x.failed]))
        return ScoredBatch(
            edit_ids=[e for x in s for e in x.edit_ids],
            item_ids=[e for x in s for e in x.item_ids],
            group_ids=[e for x in s for e in x.group_ids],
            policy_version=s[0].policy_version,
            services=services,
            parts=parts,
            part_outcomes=[dict(x.outcomes) for x in s],
            failed={i: dict(x.failed) for i, x in enumerate(s) if x.failed},
            score_s={k: max(x.score_s.get(k, 0.0) for x in s) for k in services},
            wire_bytes={k: sum(x.wire_bytes.get(k, 0) for x in s) for k in services},
            png_bytes={k: sum(x.png_bytes.get(k, 0) for x in s) for k in {k for x in s for k in x.png_bytes}},
            timings={k: max(x.timings.get(k, 0.0) for x in s) for k in {k for x in s for k in x.timings}},
        )

    def pieces(self, start: int, end: int) -> list[tuple[list[Any], int, int]]:
        """([latents ref], first, end) in each part's own edit indices, covering the batch's [start, end)
        (the ref inside a list: Ray hands it over unresolved, the learner rank fetches it)."""
        out = [
            ([p.latents], max(start, p.start) - p.start, min(end, p.end) - p.start)
            for p in self.parts
            if max(start, p.start) < min(end, p.end)
        ]
        return out or [([self.parts[0].latents], 0, 0)]

    def pixels(self, end: int) -> RolloutBatch:
        """The first `end` edits with their pixels (a fixed set's batch only): the image grid's items."""
        parts = [p for p in self.parts if p.start < end]
        if any(p.pixels is None for p in parts):
            raise ValueError("this batch kept no pixels: sample it with keep_pixels=True (fixed sets)")
        import ray

        got = ray.get([p.pixels for p in parts])
        whole = RolloutBatch.cat(got) if len(got) > 1 else got[0]
        return whole.select(list(range(min(end, len(whole)))))


def read_edits(parts: list[RolloutBatch], pieces: list[tuple[list[Any], int, int]]) -> RolloutBatch:
    """A learner rank's shard from the parts it fetched (`ScoredBatch.pieces`), in edit order."""
    chosen = [part.select(list(range(lo, hi))) for part, (_, lo, hi) in zip(parts, pieces, strict=True)]
    return RolloutBatch.cat(chosen) if len(chosen) > 1 else chosen[0]


def group_chunks(items: list[GroupedItem], edits: int) -> list[list[GroupedItem]]:
    """`items` in consecutive chunks of whole groups, each at least `edits` edits (the last may be less)."""
    chunks: list[list[GroupedItem]] = [[]]
    for i, gi in enumerate(items):
        if len(chunks[-1]) >= edits and gi.group_id != items[i - 1].group_id:
            chunks.append([])
        chunks[-1].append(gi)
    return chunks


class ShardScorer:
    """A worker's reward clients, one per service, and the chunks of one shard in flight."""

    def __init__(self) -> None:
        self.clients: dict[str, RewardClient] = {}
        self._pools: dict[str, ThreadPoolExecutor] = {}
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix="encode")
        # (shard key, service) -> the edits and groups a service failed to score, for `rescore`
        self.kept: dict[tuple[str, str], tuple[list[reward_pb2.Edit], list[reward_pb2.Group]]] = {}
        self._jobs: list[
            tuple[Future, list[Future]]
        ] = []  # the shard's chunks: (encoding, one call per service)
        self._sent: dict[str, float] = {}  # service -> when its first request of the shard went out
        self._lock = threading.Lock()

    def connect(self, scoring: Scoring) -> None:
        """Clients for `scoring`'s services at its addresses (kept between calls; replicas updated). A
        shard starts here: chunks of one that raised before `finish` are forgotten."""
        self._jobs, self._sent = [], {}
        for name, addresses in scoring.addresses.items():
            client = self.clients.get(name)
            if client is not None and client.cfg != scoring.client:
                client.close()
                client = None
            if client is None:
                self.clients[name] = RewardClient(addresses, scoring.client, service=name)
                self._pools[name] = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix=f"{name}-score")
            elif sorted(client.addresses) != sorted(addresses):
                client.set_addresses(addresses)

    def submit(self, chunk: RolloutBatch) -> None:
        """Encode `chunk` (in the background) and queue its requests to every service."""
        encoded = self._encoder.submit(to_groups, chunk)
        calls = [self._pools[name].submit(self._score, name, encoded) for name in self.clients]
        self._jobs.append((encoded, calls))

    def _score(self, name: str, encoded: Future) -> tuple[list[EditOutcome], int, float]:
        edits, groups = encoded.result()
        with self._lock:
            self._sent.setdefault(name, time.perf_counter())
        outcomes = self.clients[name].score(edits, groups)
        return outcomes, sum(m.ByteSize() for m in [*edits, *groups]), time.perf_counter()

    def finish(self, batch: RolloutBatch, key: str) -> ScoredShard:
        """Wait for every chunk's replies; a service that failed for good is named in `failed` and its
        edits are kept under (key, service) for `rescore`."""
        jobs, self._jobs = self._jobs, []
        sent, self._sent = self._sent, {}
        outcomes: dict[str, list[EditOutcome]] = {}
        failed: dict[str, str] = {}
        score_s: dict[str, float] = {}
        wire: dict[str, int] = {}
        for k, name in enumerate(self.clients):
            got: list[EditOutcome] = []
            for _, calls in jobs:
                try:
                    outs, n, done = calls[k].result()
                except RewardServiceError as e:
                    failed[name] = str(e)
                    continue
                got.extend(outs)
                wire[name] = wire.get(name, 0) + n
                score_s[name] = max(score_s.get(name, 0.0), done - sent.get(name, done))
            if name in failed:
                chunks = [encoded.result() for encoded, _ in jobs]
                self.kept[(key, name)] = (
                    [e for c in chunks for e in c[0]],
                    [g for c in chunks for g in c[1]],
                )
                log.warning(
                    "reward service %s failed for this shard (%s); the driver restarts it", name, failed[name]
                )
            else:
                outcomes[name] = got
        return ScoredShard(
            edit_ids=list(batch.edit_ids),
            item_ids=list(batch.item_ids),
            group_ids=list(batch.group_ids),
            policy_version=batch.policy_version,
            outcomes=outcomes,
            failed=failed,
            score_s=score_s,
            wire_bytes=wire,
            png_bytes=_png_bytes([encoded.result() for encoded, _ in jobs]),
            timings=dict(batch.timings),
        )

    def rescore(self, key: str, name: str, scoring: Scoring) -> list[EditOutcome]:
        """The kept edits of shard `key` scored again by service `name` (after the driver restarted it)."""
        self.connect(scoring)
        edits, groups = self.kept.pop((key, name))
        return self.clients[name].score(edits, groups)


def _png_bytes(chunks: list[tuple[list[reward_pb2.Edit], list[reward_pb2.Group]]]) -> dict[str, int]:
    edits = [e for c in chunks for e in c[0]]
    groups = [g for c in chunks for g in c[1]]
    return {
        "edited": sum(len(e.edited_image) for e in edits),
        "source": sum(len(g.source_image) for g in groups),
        "mask": sum(len(g.edit_mask) for g in groups),
        "target": sum(len(g.target_image) for g in groups),
    }


def scoring_of(services: Any) -> Scoring:
    """The replicas' current addresses (services: RewardServices; restarted replicas re-registered)."""
    for name in services.replicas:
        services.refresh(name, wait_s=0.5)
    return Scoring(services.cfg.client, {name: services.addresses(name) for name in services.clients})


def recover(services: Any, rollout: Any, batch: ScoredBatch) -> None:
    """Re-score, in the workers that kept them, the edits of every service that failed there for good,
    once the driver has restarted its hung or dead replicas; records each service's scoring time."""
    for index, failed in sorted(batch.failed.items()):
        part = batch.parts[index]
        for name, error in failed.items():
            if name not in services.replicas:  # an external service: nothing here can restart it
                raise RewardServiceError(error)
            log.warning("reward service %s failed (%s); waiting for its replicas to come back", name, error)
            services.replace_hung(name)
            services._wait_back(name, services.cfg.client.ready_timeout_s)
            key = batch.edit_ids[part.start]
            batch.part_outcomes[index][name] = rollout.rescore(part.worker, key, name, scoring_of(services))
    batch.failed = {}
    services.last_score_s.update(batch.score_s)


def batch_scores(batch: ScoredBatch, cfg: RewardsConfig) -> Scores:
    """The weighted reward of every edit of `batch` (rewards/weighting.py): dropped where unscored."""
    outcomes = batch.outcomes
    weighted: dict[str, Sequence[EditOutcome]] = dict(outcomes)
    rewards = combine(weighted, cfg.weights, cfg.max_dropped_fraction, cfg.max_fallback_fraction)
    return Scores(rewards, outcomes)


def without_refs(batch: ScoredBatch) -> ScoredBatch:
    """The batch with no references (what the driver received from the workers, for measuring it)."""
    return dataclasses.replace(batch, parts=[])

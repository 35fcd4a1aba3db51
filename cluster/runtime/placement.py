"""Placement of a run's actors from the config: what each role asks for, checked against the cluster
before anything starts, then reserved as placement groups.

Roles: rollout workers (`rollout.num_workers` x cpus/gpus_per_worker), learner ranks
(`learner.world_size` x cpus/gpus_per_rank) and each reward service's replicas (`rewards.<name>.scaling`:
replicas x cpus/gpus_per_replica). With `run.colocate`, rollout worker i and learner rank i share bundle i (one GPU between them, the time-sliced layout of verl/OpenRLHF's hybrid engine).

Two checks keep a run from hanging on resources the cluster does not have:
1. `check_cluster`, immediately: one actor larger than every node, or all roles together more than the
   cluster has, fails with a PlacementError naming the role, what it asked for and what is left.
2. `Placement`, within `run.placement_timeout_s`: placement groups that the cluster cannot satisfy
   (fragmented nodes, resources held by another job) are removed and the role is named.
On an autoscaling cluster, where nodes join on demand, set `run.check_resources=false` and raise
`run.placement_timeout_s` to cover node start-up.

Outside a Tune trial reward replicas are not in placement groups: they are added and removed while
training runs (cluster/runtime/services.py), each checked against the resources available at that moment.

A run started inside a placement group (a Ray Tune trial of `cocoedit sweep`) reserves nothing of its
own: the trial's group already holds `run_bundles(cfg)`, and the learner ranks, rollout workers and
reward replicas each take their own bundles in it (`replica_bundles`). A replica left to Tune's capture
(any bundle with room) could take part of a rollout worker's bundle before the worker was placed, and the
worker then waited for a bundle that never freed (a sweep's trial hung for run.deadline_start_s).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

log = logging.getLogger(__name__)


class PlacementError(RuntimeError):
    """The cluster cannot host what the config asks for."""


@dataclass(frozen=True)
class Demand:
    """`count` actors of one role, each asking for `cpus` CPUs and `gpus` GPUs."""

    role: str
    count: int
    cpus: float
    gpus: float
    knobs: str  # the config keys that size this role, for the error message

    def total(self, resource: str) -> float:
        return self.count * (self.cpus if resource == "CPU" else self.gpus)

    def describe(self, resource: str) -> str:
        each = self.cpus if resource == "CPU" else self.gpus
        return f"{self.role} ask {self.count} x {each:g} {resource} = {self.total(resource):g}"


def demands(cfg: Any) -> list[Demand]:
    """What every role of run config `cfg` (cluster.config.Config) asks for, in start-up order."""
    rollout, learner = cfg.rollout, cfg.learner
    out = [
        Demand(
            "learner ranks",
            learner.world_size,
            learner.cpus_per_rank,
            learner.gpus_per_rank,
            "learner.world_size / learner.cpus_per_rank / learner.gpus_per_rank",
        ),
        Demand(
            "rollout workers",
            rollout.num_workers,
            rollout.cpus_per_worker,
            rollout.gpus_per_worker,
            "rollout.num_workers / rollout.cpus_per_worker / rollout.gpus_per_worker",
        ),
    ]
    if cfg.run.colocate:  # the two roles share bundles: one demand of the pair (checked at load)
        out = [
            Demand(
                "colocated rollout workers + learner ranks",
                learner.world_size,
                learner.cpus_per_rank + rollout.cpus_per_worker,
                learner.gpus_per_rank + rollout.gpus_per_worker,
                "learner.world_size / run.colocate",
            )
        ]
    for name in cfg.rewards.weights:
        if name in cfg.rewards.addresses:
            continue  # an external service: not ours to place
        scaling = cfg.rewards.service(name).scaling
        out.append(
            Demand(
                f"reward service {name} replicas",
                scaling.replicas,
                scaling.cpus_per_replica,
                scaling.gpus_per_replica,
                f"rewards.{name}.scaling.replicas / .cpus_per_replica / .gpus_per_replica",
            )
        )
    return out


def check_cluster(wanted: list[Demand], total: dict[str, float], nodes: list[dict[str, float]]) -> None:
    """Raise PlacementError if `wanted` cannot fit a cluster of `total` resources made of `nodes`."""
    for resource in ("CPU", "GPU"):
        largest = max((n.get(resource, 0.0) for n in nodes), default=0.0)
        for d in wanted:
            each = d.cpus if resource == "CPU" else d.gpus
            if d.count and each > largest:
                raise PlacementError(
                    f"{d.role}: each asks for {each:g} {resource} but the largest node of the cluster has "
                    f"{largest:g} {resource}. Lower it ({d.knobs}) or add a larger node"
                )
        left = total.get(resource, 0.0)
        placed: list[str] = []
        for d in wanted:
            need = d.total(resource)
            if need > left + 1e-9:
                before = f" after {', '.join(placed)}" if placed else ""
                raise PlacementError(
                    f"not enough {resource} for the {d.role}: {d.describe(resource)}, but only {left:g} of the "
                    f"cluster's {total.get(resource, 0.0):g} {resource} remain{before} (short by "
                    f"{need - left:g} {resource}). Lower {d.knobs}, or add nodes"
                )
            if need:
                placed.append(d.describe(resource))
            left -= need


def run_bundles(cfg: Any) -> list[dict[str, float]]:
    """Every bundle a run needs, in the order it uses them inside one placement group (a Tune trial):
    the learner ranks (or, with run.colocate, the rollout worker + learner rank pairs), the rollout
    workers, then each reward service's replicas (at most max_replicas when it autoscales)."""
    rollout, learner = cfg.rollout, cfg.learner
    if cfg.run.colocate:
        pair = _bundle(
            rollout.cpus_per_worker + learner.cpus_per_rank, rollout.gpus_per_worker + learner.gpus_per_rank
        )
        bundles = [pair] * learner.world_size
    else:
        bundles = [_bundle(learner.cpus_per_rank, learner.gpus_per_rank)] * learner.world_size
        bundles += [_bundle(rollout.cpus_per_worker, rollout.gpus_per_worker)] * rollout.num_workers
    for name, count in replica_counts(cfg).items():
        scaling = cfg.rewards.service(name).scaling
        bundles += [_bundle(scaling.cpus_per_replica, scaling.gpus_per_replica)] * count
    return bundles


def replica_counts(cfg: Any) -> dict[str, int]:
    """Bundles of each reward service the run starts, in a trial's group: max_replicas when it
    autoscales, else replicas (an external service, rewards.addresses, has none)."""
    counts = {}
    for name in cfg.rewards.weights:
        if name not in cfg.rewards.addresses:
            scaling = cfg.rewards.service(name).scaling
            counts[name] = scaling.max_replicas if scaling.target_score_s is not None else scaling.replicas
    return counts


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    bundle = {k: v for k, v in (("CPU", cpus), ("GPU", gpus)) if v > 0}
    if not bundle:
        raise PlacementError("an actor asking for 0 CPUs and 0 GPUs cannot be placed: give it cpus > 0")
    return bundle


class Placement:
    """Placement groups of the rollout workers and learner ranks, reserved (or failed) up front.

    placement = Placement(cfg)                       # checks, reserves, waits <= placement_timeout_s
    actor.options(**placement.rollout(i)).remote()   # num_cpus, num_gpus, scheduling_strategy
    placement.close()
    """

    def __init__(self, cfg: Any, group: Optional[PlacementGroup] = None) -> None:
        """`group`: a placement group laid out as `run_bundles(cfg)` to run in (default: the one this
        process runs in, a Tune trial's, if any)."""
        self.cfg = cfg
        self.owned = True  # False inside a trial's placement group: the trial's, not ours to remove
        self._first: dict[str, int] = {}  # role -> index of its first bundle in its group
        self._replicas: dict[str, list[int]] = {}  # reward service -> its bundles in the trial's group
        trial = group if group is not None else ray.util.get_current_placement_group()
        if trial is not None:
            self._join(trial)
            return
        if cfg.run.check_resources:
            nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
            check_cluster(demands(cfg), ray.cluster_resources(), nodes)
        self.cores = cpu_sets(cfg) if cfg.run.pin_cpus else {}
        rollout, learner = cfg.rollout, cfg.learner
        self.groups: dict[str, PlacementGroup] = {}
        if cfg.run.colocate:
            shared = _bundle(
                rollout.cpus_per_worker + learner.cpus_per_rank,
                rollout.gpus_per_worker + learner.gpus_per_rank,
            )
            self.groups["colocated rollout workers + learner ranks"] = placement_group(
                [shared] * learner.world_size, strategy="PACK", name="cocoedit-colocated"
            )
        else:
            self.groups["learner ranks"] = placement_group(
                [_bundle(learner.cpus_per_rank, learner.gpus_per_rank)] * learner.world_size,
                strategy="PACK",
                name="cocoedit-learner",
            )
            self.groups["rollout workers"] = placement_group(
                [_bundle(rollout.cpus_per_worker, rollout.gpus_per_worker)] * rollout.num_workers,
                strategy="PACK",
                name="cocoedit-rollout",
            )
        self._wait(cfg.run.placement_timeout_s)

    def _join(self, group: PlacementGroup) -> None:
        """Use the bundles of the placement group this process runs in, laid out as `run_bundles`."""
        wanted = run_bundles(self.cfg)
        have = [{k: v for k, v in b.items() if k in ("CPU", "GPU") and v} for b in group.bundle_specs]
        if have != wanted:
            raise PlacementError(
                f"this run is inside a placement group (a Ray Tune trial) whose bundles {have} are not the "
                f"run's {wanted}: give the trial `run_bundles(cfg)` of the config it runs "
                f"(cocoedit sweep does), or start the run outside any placement group"
            )
        if self.cfg.run.pin_cpus:
            raise PlacementError(
                "run.pin_cpus pins to this machine's cores, which trials side by side would share: set "
                "run.pin_cpus=false for a run inside a placement group (a Ray Tune trial)"
            )
        self.owned = False
        self.cores = {}
        self._first = {
            "learner ranks": 0,
            "rollout workers": 0 if self.cfg.run.colocate else self.cfg.learner.world_size,
        }
        counts = replica_counts(self.cfg)
        at = len(wanted) - sum(counts.values())
        for name, n in counts.items():  # in run_bundles' order
            self._replicas[name], at = list(range(at, at + n)), at + n
        self.groups = {role: group for role in self._first}
        self.groups["colocated rollout workers + learner ranks"] = group

    def _wait(self, timeout_s: float) -> None:
        refs = {pg.ready(): role for role, pg in self.groups.items()}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
        if pending:
            roles = [refs[r] for r in pending]
            asked = {role: self.groups[role].bundle_specs for role in roles}
            available = ray.available_resources()
            self.close()
            raise PlacementError(
                f"placement of {', '.join(roles)} not satisfied within run.placement_timeout_s={timeout_s:g} s: "
                f"asked for bundles {asked}; the cluster has {_fmt(ray.cluster_resources())} in all and "
                f"{_fmt(available)} available (other jobs, or nodes too small for one bundle). Free resources, "
                f"shrink the role, or raise run.placement_timeout_s if nodes are still joining"
            )

    def _options(self, role: str, index: int, cpus: float, gpus: float) -> dict[str, Any]:
        key = "colocated rollout workers + learner ranks" if self.cfg.run.colocate else role
        return {
            "num_cpus": cpus,
            "num_gpus": gpus,
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                self.groups[key], placement_group_bundle_index=self._first.get(role, 0) + index
            ),
        }

    def replica_bundles(self, name: str) -> list[int]:
        """The bundles of reward service `name`'s replicas in the trial's group ([] outside a trial:
        replicas are then placed by the resources free when they start, cluster/runtime/services.py)."""
        return self._replicas.get(name, [])

    def replica(self, bundle: int) -> dict[str, Any]:
        """Actor options that put a reward replica in bundle `bundle` of the trial's group."""
        group = self.groups["learner ranks"]
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=bundle
            )
        }

    def rollout(self, index: int) -> dict[str, Any]:
        """Actor options of rollout worker `index`."""
        r = self.cfg.rollout
        return self._options("rollout workers", index, r.cpus_per_worker, r.gpus_per_worker)

    def learner(self, index: int) -> dict[str, Any]:
        """Actor options of learner rank `index`."""
        lr = self.cfg.learner
        return self._options("learner ranks", index, lr.cpus_per_rank, lr.gpus_per_rank)

    def cores_of(self, role: str, index: int) -> Optional[list[int]]:
        """The cores actor `index` of `role` ("rollout workers" / "learner ranks") is pinned to, or None."""
        return self.cores[role][index] if self.cores else None

    def close(self) -> None:
        """Remove the placement groups (the actors in them must be gone first); a trial's stay."""
        for pg in self.groups.values() if self.owned else ():
            try:
                remove_placement_group(pg)
            except Exception as e:  # noqa: BLE001 - already gone with the cluster
                log.debug("removing placement group: %s", e)
        self.groups = {}


def check_available(role: str, cpus: float, gpus: float, knobs: str) -> None:
    """Fail now, naming `role`, if the cluster has not `cpus`/`gpus` free for the actors about to start."""
    available = ray.available_resources()
    for resource, need in (("CPU", cpus), ("GPU", gpus)):
        have = available.get(resource, 0.0)
        if need > have + 1e-9:
            raise PlacementError(
                f"{role}: the new ones ask for {need:g} {resource} but the cluster has {have:g} {resource} free "
                f"(of {ray.cluster_resources().get(resource, 0.0):g}). Lower {knobs}, or add nodes"
            )


def _fmt(resources: dict[str, float]) -> str:
    keep = {k: round(v, 3) for k, v in resources.items() if k in ("CPU", "GPU", "memory")}
    if "memory" in keep:
        keep["memory"] = f"{keep['memory'] / 2**30:.1f} GiB"  # type: ignore[assignment]
    return str(keep)


def cpu_sets(cfg: Any) -> dict[str, list[list[int]]]:
    """Disjoint cores of this machine for every learner rank and rollout worker (`run.pin_cpus`).

    Learner ranks take the first ceil(cpus_per_rank) cores each, rollout workers the next
    ceil(cpus_per_worker) each, from the cores this process may use. One-node clusters only: core
    numbers mean nothing on another node. Reward replicas and the driver stay unpinned.
    """
    if cfg.run.colocate:
        raise PlacementError(
            "run.pin_cpus places learner ranks and rollout workers apart: not with run.colocate"
        )
    alive = [n for n in ray.nodes() if n.get("Alive")]
    if len(alive) != 1:
        raise PlacementError(
            f"run.pin_cpus pins to this machine's cores: the cluster has {len(alive)} nodes, not 1"
        )
    free = sorted(os.sched_getaffinity(0))
    roles = (
        ("learner ranks", cfg.learner.world_size, cfg.learner.cpus_per_rank),
        ("rollout workers", cfg.rollout.num_workers, cfg.rollout.cpus_per_worker),
    )
    need = sum(count * math.ceil(cpus) for _, count, cpus in roles)
    if need > len(free):
        raise PlacementError(
            f"run.pin_cpus needs {need} cores (learner ranks and rollout workers, each its ceil(cpus) cores) but "
            f"this process may use {len(free)}: lower learner.cpus_per_rank / rollout.cpus_per_worker or the counts"
        )
    out: dict[str, list[list[int]]] = {}
    for role, count, cpus in roles:
        out[role] = []
        for _ in range(count):
            take = math.ceil(cpus)
            out[role].append(free[:take])
            free = free[take:]
    return out


def use_cpus(cpus: float, cores: Optional[Sequence[int]] = None) -> int:
    """In an actor: pin this process to `cores` when given, and size torch's thread pool to what the
    role reserved (len(cores), else floor(cpus), at least 1) rather than to OMP_NUM_THREADS, which the
    environment may have set to 1. Returns the number of threads."""
    import torch

    if cores:
        for task in Path("/proc/self/task").iterdir():  # every thread, not only the calling one
            try:
                os.sched_setaffinity(int(task.name), cores)
            except ProcessLookupError:
                pass  # a thread that ended meanwhile
    threads = len(cores) if cores else max(1, math.floor(cpus))
    torch.set_num_threads(threads)
    return threads

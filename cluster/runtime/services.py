"""Reward services at their own scale: each service is a set of Ray actors, each hosting one gRPC
server (rewards.hosting.BackgroundServer around the service's Scorer), plus a client that balances over
their addresses. Replicas can be added or removed while training runs (`scale`); an external service
is used by address instead (`rewards.addresses`).

Faults: a replica that dies is routed around by the client (UNAVAILABLE is retried on another
replica) and restarted by Ray (max_restarts); a restarted replica serves on a new port, and `refresh`
re-registers it with the client (after every scoring call, and at once when a call failed for good,
which is then repeated: scores are pure functions of the edits, so nothing is counted twice).
Autoscaling: with `rewards.<name>.scaling.target_score_s`, `autoscale` adds or removes one replica per epoch
within [min_replicas, max_replicas] from the time the epoch's scoring took.

Why Ray actors hosting our own gRPC servers rather than Ray Serve deployments: the reward contract is
gRPC with health, reflection and per-edit errors, used by the same client whether the service runs on
Ray, standalone (`cocoedit serve`) or elsewhere; actors keep that one code path and give placement,
restarts and resource accounting from Ray.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from cocoedit.cluster.config import RewardsConfig
from cocoedit.cluster.runtime.placement import Placement, PlacementError, check_available, use_cpus
from cocoedit.rewards.base import EditOutcome
from cocoedit.rewards.client import RewardServiceError
from cocoedit.rewards.config import ServiceConfig
from cocoedit.rewards.serve import Service, service

log = logging.getLogger(__name__)


class RewardReplica:
    """One replica: builds the scorer, serves it on this node, reports its address."""

    def __init__(self, service: Service, section: ServiceConfig) -> None:
        from cocoedit.rewards.hosting import BackgroundServer

        threads = use_cpus(section.scaling.cpus_per_replica)
        if getattr(section, "threads", None) == 0:
            # "one thread per core" means the cores this replica reserved, not every core of the node
            changes: dict[str, Any] = {"threads": threads}  # a field of some sections only (PixelConfig)
            section = dataclasses.replace(section, **changes)
        # The Service itself travels (not its name): a replica needs no registry of its own.
        scorer, server_cfg = service.scorer(section), section.server
        if server_cfg.host == "node":  # reachable from other nodes of the Ray cluster
            server_cfg = dataclasses.replace(server_cfg, host=ray.util.get_node_ip_address())
        self.server = BackgroundServer(scorer, server_cfg).start()

    def address(self) -> str:
        return self.server.address

    def stats(self) -> dict[str, Any]:
        """This replica's process id, Ray node, address and the Score calls it has accepted."""
        assert self.server.server is not None  # set by start() in __init__
        return {
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
            "address": self.address(),
            "score_calls": self.server.server.servicer.score_calls,
        }

    def stop(self) -> None:
        self.server.stop()


class RewardServices:
    """The reward services of a run, each with its replicas and client; `score` queries all at once."""

    def __init__(self, cfg: RewardsConfig, placement: Optional[Placement] = None) -> None:
        """`placement`: the run's; inside a Tune trial its replicas take their own bundles of the trial's
        group (Placement.replica_bundles), never a rollout worker's or learner rank's."""
        from cocoedit.rewards.client import RewardClient

        self.cfg = cfg
        self.placement = placement
        self._bundle_of: dict[Any, tuple[str, int]] = {}  # replica handle -> (service, its bundle)
        self.replicas: dict[str, list[Any]] = {}
        self.clients: dict[str, RewardClient] = {}
        self.last_score_s: dict[str, float] = {}  # wall time of each service in the last `score`
        self.restarts_seen = 0  # replicas that came back on a new address, or were replaced
        self._served_at: dict[Any, str] = {}  # replica handle -> the address it last served on
        for name in cfg.weights:
            if name in cfg.addresses:
                addresses = list(cfg.addresses[name])
            else:
                # a weighted service is enabled or external: RewardsConfig.check, at load
                replicas = cfg.service(name).scaling.replicas
                started = time.monotonic()
                self.replicas[name] = [self._start(name) for _ in range(replicas)]
                addresses = self._started(name, started)
            self.clients[name] = RewardClient(addresses, cfg.client, service=name)
        for client in self.clients.values():
            client.wait_ready(cfg.client.ready_timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.clients)))

    def _start(self, name: str) -> Any:
        section = self.cfg.service(name)
        options: dict[str, Any] = {"num_cpus": section.scaling.cpus_per_replica, "max_restarts": 3}
        if section.scaling.gpus_per_replica:
            options["num_gpus"] = section.scaling.gpus_per_replica
        bundle = None  # inside a Tune trial: the first of the service's bundles no live replica holds
        if self.placement is not None:
            held = {b for n, b in self._bundle_of.values() if n == name}
            bundle = next((b for b in self.placement.replica_bundles(name) if b not in held), None)
            if bundle is not None:
                options.update(self.placement.replica(bundle))
        replica = ray.remote(RewardReplica).options(**options).remote(service(name), section)
        if bundle is not None:
            self._bundle_of[replica] = (name, bundle)
        return replica

    def _forget(self, replica: Any) -> None:
        """A replica killed for good: its address and bundle are free for the next one."""
        self._served_at.pop(replica, None)
        self._bundle_of.pop(replica, None)

    def _started(self, name: str, started: float) -> list[str]:
        """The addresses of the replicas of `name` once they serve, within rewards.client.ready_timeout_s of
        `started` (when they were created); else every replica started so far is killed and
        RewardServiceError names the ones that did not start (stopped, deadlocked, or never placed)."""
        reps, timeout_s = self.replicas[name], self.cfg.client.ready_timeout_s
        refs = [r.address.remote() for r in reps]
        _, late = ray.wait(
            refs, num_returns=len(refs), timeout=max(0.0, started + timeout_s - time.monotonic())
        )
        if late:
            scaling = self.cfg.service(name).scaling
            which = ", ".join(str(i) for i, ref in enumerate(refs) if ref in set(late))
            free = {k: round(v, 3) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            self._kill_replicas()
            raise RewardServiceError(
                f"reward service {name!r}: replica {which} of {len(refs)} did not start within "
                f"rewards.client.ready_timeout_s={timeout_s:g} s (each asks {scaling.cpus_per_replica:g} CPU, "
                f"{scaling.gpus_per_replica:g} GPU; the cluster has {free} free): free resources or lower "
                f"rewards.{name}.scaling, see its log (Ray dashboard, /tmp/ray/session_latest/logs), and raise "
                f"rewards.client.ready_timeout_s if its model only loads slowly"
            )
        return self._addresses_of(reps)

    def _addresses_of(self, replicas: list[Any]) -> list[str]:
        """The addresses `replicas` serve on (waits for them), remembered to tell restarts later."""
        addresses = ray.get([r.address.remote() for r in replicas])
        self._served_at.update(zip(replicas, addresses, strict=True))
        return addresses

    def addresses(self, name: str) -> list[str]:
        return list(self.clients[name].addresses)

    def stats(self, name: str) -> list[dict[str, Any]]:
        """RewardReplica.stats of every live replica of `name`."""
        return ray.get([r.stats.remote() for r in self.replicas[name]])

    def scale(self, name: str, replicas: int, wait: bool = True, timeout_s: Optional[float] = None) -> None:
        """Grow or shrink service `name` to `replicas` replicas without interrupting scoring.

        Growing checks the free resources first and raises PlacementError (naming the service) when
        the cluster cannot host the new replicas; nothing is started then. With wait=True the new
        replicas must serve within timeout_s (default rewards.client.ready_timeout_s), else they are
        killed, the service keeps the replicas it had, and RewardServiceError says how many were late.
        With wait=False new replicas join the client once they serve (`refresh`, before every
        scoring call).
        """
        if name not in self.replicas:
            raise ValueError(
                f"reward service {name!r} is external (rewards.addresses) or unknown: cannot scale it"
            )
        current = self.replicas[name]
        if replicas < 1:
            raise ValueError(f"{name}: replicas={replicas} must be >= 1")
        if replicas > len(current):
            scaling = self.cfg.service(name).scaling
            more = replicas - len(current)
            check_available(
                f"reward service {name} replicas",
                more * scaling.cpus_per_replica,
                more * scaling.gpus_per_replica,
                f"rewards.{name}.scaling.max_replicas",
            )
            new = [self._start(name) for _ in range(more)]
            current.extend(new)
            if not wait:
                log.info("reward service %s: starting %d more replicas", name, more)
                return
            if timeout_s is None:
                self._wait_grown(name, new, self.cfg.client.ready_timeout_s, "rewards.client.ready_timeout_s")
            else:
                self._wait_grown(name, new, timeout_s, "timeout_s")
        else:
            for r in current[replicas:]:
                try:
                    ray.get(r.stop.remote())
                except RayActorError:
                    pass  # already gone
                ray.kill(r, no_restart=True)
                self._forget(r)
            del current[replicas:]
        self.clients[name].set_addresses(self._addresses_of(current))
        log.info("reward service %s now has %d replicas: %s", name, len(current), self.addresses(name))

    def _wait_grown(self, name: str, new: list[Any], timeout_s: float, key: str) -> None:
        """The replicas `new` of `name` serve within timeout_s; else all of them are killed and removed."""
        refs = [r.address.remote() for r in new]
        _, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        if not late:
            return
        for r in new:
            ray.kill(r, no_restart=True)
            self._forget(r)
        del self.replicas[name][-len(new) :]
        raise RewardServiceError(
            f"reward service {name!r}: {len(late)} of the {len(new)} new replicas did not start within "
            f"{key}={timeout_s:g} s; the service keeps its {len(self.replicas[name])} replicas. See the replica's log "
            "(Ray dashboard, /tmp/ray/session_latest/logs), or raise rewards.client.ready_timeout_s if its "
            "model only loads slowly"
        )

    def autoscale(self) -> dict[str, int]:
        """One step of every service with `target_score_s`, from the last `score`; {service: replicas}."""
        for name, reps in self.replicas.items():
            scaling = self.cfg.service(name).scaling
            target = scaling.target_score_s
            took = self.last_score_s.get(name)
            if target is None or took is None:
                continue
            n = len(reps)
            want = n
            if took > target and n < scaling.max_replicas:
                want = n + 1
            elif n > scaling.min_replicas and took * n / (n - 1) < 0.5 * target:
                want = n - 1
            want = max(scaling.min_replicas, min(scaling.max_replicas, want))
            if want != n:
                try:
                    self.scale(name, want, wait=False)
                except PlacementError as e:
                    log.warning("autoscaling %s to %d replicas skipped: %s", name, want, e)
        return {name: len(reps) for name, reps in self.replicas.items()}

    def refresh(self, name: str, wait_s: float = 1.0) -> list[str]:
        """Re-register the replicas of `name` with its client: a replica Ray restarted serves on a new
        port; one dead for good (restarts used up) is replaced. Replicas still starting, or restarting
        (ActorUnavailableError: a lost node or process), join later."""
        reps = self.replicas[name]
        refs = [r.address.remote() for r in reps]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        ready_set = set(ready)
        addresses = []
        for i, ref in enumerate(refs):
            if ref not in ready_set:
                continue  # (re)starting: registers on a later refresh
            try:
                address = ray.get(ref)
            except ActorUnavailableError:
                continue  # Ray is restarting it (its process or node was lost): registers once back
            except RayActorError as e:
                log.warning(
                    "reward service %s: replica %d is gone for good (%s); starting a new one", name, i, e
                )
                # should Ray restart it after all, two processes would serve for one replica
                ray.kill(reps[i], no_restart=True)
                self._forget(reps[i])
                reps[i] = self._start(name)
                self.restarts_seen += 1
                continue
            before = self._served_at.get(reps[i])
            if before is not None and before != address:  # restarted by Ray (a new replica has no before)
                log.warning("reward service %s: replica %d restarted, re-registered at %s", name, i, address)
                self.restarts_seen += 1
            self._served_at[reps[i]] = address
            addresses.append(address)
        client = self.clients[name]
        if addresses and sorted(addresses) != sorted(client.addresses):
            client.set_addresses(addresses)
        return addresses

    def score(self, edits: list[Any]) -> dict[str, list[EditOutcome]]:
        """Score protobuf Edits with every service concurrently; {service: outcomes in edit order}."""
        futures = {name: self._pool.submit(self._score_service, name, edits) for name in self.clients}
        return {name: f.result() for name, f in futures.items()}

    def _score_service(self, name: str, edits: list[Any]) -> list[EditOutcome]:
        t0 = time.perf_counter()
        client = self.clients[name]
        if name in self.replicas:
            self.refresh(name, wait_s=0.5)  # replicas restarted or added meanwhile (re-)register
        try:
            out = client.score(edits)
        except RewardServiceError as e:
            if name not in self.replicas:
                raise  # an external service: nothing here can restart it
            log.warning("reward service %s failed (%s); waiting for its replicas to come back", name, e)
            self.replace_hung(name)
            self._wait_back(name, self.cfg.client.ready_timeout_s)
            out = client.score(edits)  # the same edits again: scoring is a pure function of them
        self.last_score_s[name] = time.perf_counter() - t0
        return out

    def replace_hung(self, name: str) -> list[int]:
        """Kill (for Ray to restart) every replica of `name` that served before but does not answer within
        rewards.client.timeout_s: a stopped or deadlocked replica fails calls by deadline without dying,
        so neither Ray nor `refresh` would replace it. Returns the indices of the replicas replaced."""
        reps = self.replicas[name]
        refs = [r.address.remote() for r in reps]
        timeout_s = self.cfg.client.timeout_s
        _, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        replaced = []
        for i, ref in enumerate(refs):
            if ref in late and reps[i] in self._served_at:  # one still starting has not served yet
                log.warning(
                    "reward service %s: replica %d (%s) did not answer within %g s (rewards.client.timeout_s); "
                    "killing it for Ray to restart",
                    name,
                    i,
                    self._served_at[reps[i]],
                    timeout_s,
                )
                ray.kill(reps[i], no_restart=False)
                replaced.append(i)
        return replaced

    def _wait_back(self, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            addresses = self.refresh(name, wait_s=min(5.0, max(0.1, deadline - time.monotonic())))
            live: Optional[list[str]] = None
            if addresses:
                try:
                    live = self.clients[name].wait_ready(min(5.0, max(0.1, deadline - time.monotonic())))
                except TimeoutError:
                    live = None
            if live:
                return
            if time.monotonic() > deadline:
                raise RewardServiceError(
                    f"reward service {name!r}: no replica came back within {timeout_s:g} s "
                    f"(rewards.client.ready_timeout_s); see the replicas' logs in the Ray dashboard"
                )

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self._kill_replicas()

    def _kill_replicas(self) -> None:
        for reps in self.replicas.values():
            for r in reps:
                ray.kill(r, no_restart=True)
                self._forget(r)

"""Reward services at their own scale: each service is a set of Ray actors, each hosting one gRPC
server (rewards.server.BackgroundServer around the service's Scorer), plus a client that balances over
their addresses. Replicas can be added or removed while training runs (`scale`); an external service
is used by address instead (`rewards.addresses`).

Why Ray actors hosting our own gRPC servers rather than Ray Serve deployments: the reward contract is
gRPC with health, reflection and per-edit errors, used by the same client whether the service runs on
Ray, standalone (`cocoedit serve`) or elsewhere; actors keep that one code path and give placement,
restarts and resource accounting from Ray.
"""

from __future__ import annotations

import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray
from ray.exceptions import RayActorError

from rewards.base import EditOutcome
from rewards.config import RewardsConfig

log = logging.getLogger(__name__)

SERVICES = ("pixel", "mllm", "synthetic")


def service_config(cfg: RewardsConfig, service: str) -> Any:
    """The config section of `service` (PixelConfig / JudgeConfig / SyntheticJudgeConfig)."""
    if service not in SERVICES:
        raise ValueError(f"unknown reward service {service!r}; known: {list(SERVICES)}")
    return getattr(cfg, service)


class RewardReplica:
    """One replica: builds the scorer, serves it on this node, reports its address."""

    def __init__(self, service: str, cfg: RewardsConfig) -> None:
        from rewards.serve import SERVICES as BUILDERS
        from rewards.server import BackgroundServer

        scorer, server_cfg = BUILDERS[service](cfg)
        if server_cfg.host == "node":  # reachable from other nodes of the Ray cluster
            server_cfg = dataclasses.replace(server_cfg, host=ray.util.get_node_ip_address())
        self.server = BackgroundServer(scorer, server_cfg).start()

    def address(self) -> str:
        return self.server.address

    def stop(self) -> None:
        self.server.stop()


class RewardServices:
    """The reward services of a run, each with its replicas and client; `score` queries all at once."""

    def __init__(self, cfg: RewardsConfig) -> None:
        from rewards.client import RewardClient

        self.cfg = cfg
        self.replicas: dict[str, list[Any]] = {}
        self.clients: dict[str, RewardClient] = {}
        for name in cfg.weights:
            if name in cfg.addresses:
                addresses = list(cfg.addresses[name])
            else:
                section = service_config(cfg, name)
                if not getattr(section, "enabled", True):
                    raise ValueError(
                        f"rewards.weights uses {name!r} but rewards.{name}.enabled is false; enable it, give "
                        f"rewards.addresses.{name}, or drop it from rewards.weights"
                    )
                self.replicas[name] = [self._start(name) for _ in range(section.replicas)]
                addresses = ray.get([r.address.remote() for r in self.replicas[name]])
            self.clients[name] = RewardClient(addresses, cfg.client, service=name)
        for client in self.clients.values():
            client.wait_ready(cfg.client.ready_timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max(1, len(self.clients)))

    def _start(self, name: str) -> Any:
        section = service_config(self.cfg, name)
        options: dict[str, Any] = {"num_cpus": section.cpus_per_replica, "max_restarts": 3}
        gpus = getattr(section, "gpus_per_replica", 0.0)
        if gpus:
            options["num_gpus"] = gpus
        return ray.remote(RewardReplica).options(**options).remote(name, self.cfg)

    def addresses(self, name: str) -> list[str]:
        return list(self.clients[name].addresses)

    def scale(self, name: str, replicas: int) -> None:
        """Grow or shrink service `name` to `replicas` replicas without interrupting scoring."""
        current = self.replicas[name]
        if replicas < 1:
            raise ValueError(f"{name}: replicas={replicas} must be >= 1")
        if replicas > len(current):
            new = [self._start(name) for _ in range(replicas - len(current))]
            ray.get([r.address.remote() for r in new])
            current.extend(new)
        else:
            for r in current[replicas:]:
                try:
                    ray.get(r.stop.remote())
                except RayActorError:
                    pass  # already gone
                ray.kill(r)
            del current[replicas:]
        self.clients[name].set_addresses(ray.get([r.address.remote() for r in current]))

    def score(self, edits: list[Any]) -> dict[str, list[EditOutcome]]:
        """Score protobuf Edits with every service concurrently; {service: outcomes in edit order}."""
        futures = {name: self._pool.submit(c.score, edits) for name, c in self.clients.items()}
        return {name: f.result() for name, f in futures.items()}

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for reps in self.replicas.values():
            for r in reps:
                ray.kill(r)

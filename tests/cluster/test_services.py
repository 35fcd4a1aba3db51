"""Reward services on Ray: autoscaling within bounds, resource checks, a lone replica that crashes."""

import os
import signal
import time

import numpy as np
import pytest

from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.placement import PlacementError
from cocoedit.cluster.runtime.services import RewardServices
from cocoedit.rewards.client import RewardServiceError, make_edit


def _edits(n: int) -> list:
    rng = np.random.default_rng(0)
    src = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:16, 8:16] = 255
    out = []
    for i in range(n):
        edited = src.copy()
        edited[8:16, 8:16] = i * 20
        out.append(make_edit(f"e{i}", "g0", 0, "paint the square", src, edited, mask))
    return out


def _services(*overrides: str) -> RewardServices:
    cfg = load_config(
        None, ["rewards.weights={pixel: 1.0}", "rewards.pixel.scaling.cpus_per_replica=0.25", *overrides]
    )
    return RewardServices(cfg.rewards)


def test_autoscaling_grows_and_shrinks_within_bounds(ray_local) -> None:  # noqa: ANN001
    slow = _services(
        "rewards.pixel.scaling.target_score_s=1e-6", "rewards.pixel.scaling.max_replicas=2"
    )  # always too slow
    try:
        first = slow.score(_edits(4))["pixel"]
        assert slow.autoscale() == {"pixel": 2}
        slow.score(_edits(4))
        assert slow.autoscale() == {"pixel": 2}  # max_replicas holds
        # the replica started without waiting joins the client at the next scoring call, once it serves
        deadline = time.monotonic() + 240  # a replica's process start can take minutes on a loaded machine
        while True:
            again = slow.score(_edits(4))["pixel"]
            if len(slow.addresses("pixel")) == 2 or time.monotonic() > deadline:
                break
        assert len(slow.addresses("pixel")) == 2
        assert slow.restarts_seen == 0  # a replica that joins is not a restart
        assert [o.score for o in again] == [o.score for o in first]  # same edits, same scores on any replica
    finally:
        slow.close()
    fast = _services(
        "rewards.pixel.scaling.replicas=2",
        "rewards.pixel.scaling.target_score_s=1e6",
        "rewards.pixel.scaling.min_replicas=1",
    )
    try:
        fast.score(_edits(4))
        assert fast.autoscale() == {"pixel": 1}
        assert len(fast.addresses("pixel")) == 1
        fast.score(_edits(4))
        assert fast.autoscale() == {"pixel": 1}  # min_replicas holds
    finally:
        fast.close()


def test_scaling_past_the_free_resources_fails_naming_the_service(ray_local) -> None:  # noqa: ANN001
    services = _services()
    try:
        with pytest.raises(
            PlacementError, match=r"reward service pixel replicas: the new ones ask for \d+(\.\d+)? CPU"
        ):
            services.scale("pixel", 40)
        assert len(services.replicas["pixel"]) == 1  # nothing was started
    finally:
        services.close()


def test_a_lone_replica_that_crashes_is_waited_for_and_the_call_repeated(ray_local) -> None:  # noqa: ANN001
    services = _services("rewards.client.retries=1", "rewards.client.backoff_s=0.05")
    try:
        before = services.score(_edits(3))["pixel"]
        (stats,) = services.stats("pixel")
        os.kill(stats["pid"], signal.SIGKILL)
        after = services.score(_edits(3))["pixel"]  # fails on the dead port, waits for the restart, repeats
        assert [o.score for o in after] == [o.score for o in before]
        (restarted,) = services.stats("pixel")
        assert restarted["pid"] != stats["pid"] and services.addresses("pixel") == [restarted["address"]]
        assert services.restarts_seen == 1
    finally:
        services.close()


def test_growing_waits_at_most_its_timeout_and_keeps_the_replicas_it_had(ray_local) -> None:  # noqa: ANN001
    """scale(wait=True) waited without a limit for new replicas; now those that do not serve in time
    are killed, the service keeps the replicas it had and goes on scoring."""
    services = _services()
    try:
        before = services.score(_edits(3))["pixel"]
        addresses = services.addresses("pixel")
        t0 = time.monotonic()
        with pytest.raises(
            RewardServiceError,
            match=r"'pixel': 2 of the 2 new replicas did not start within timeout_s=0\.001 s; the service keeps its 1 replicas",
        ):
            services.scale("pixel", 3, timeout_s=0.001)  # no replica process starts in 1 ms
        assert time.monotonic() - t0 < 30
        assert len(services.replicas["pixel"]) == 1 and services.addresses("pixel") == addresses
        assert [o.score for o in services.score(_edits(3))["pixel"]] == [o.score for o in before]
        services.scale("pixel", 2)  # within rewards.client.ready_timeout_s: grows
        assert len(services.addresses("pixel")) == 2
    finally:
        services.close()

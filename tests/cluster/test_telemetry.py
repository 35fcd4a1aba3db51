"""cocoedit.telemetry: what the driver and an actor record comes out of Ray's Prometheus export."""

from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Optional

import pytest

from cocoedit.cluster.runtime.launch import metrics_url
from cocoedit.telemetry import (
    record_epoch,
    record_learner,
    record_reward_latency,
    record_sample,
    record_server_request,
)

# Labels Ray adds to every series that say nothing about what was measured; WorkerId is kept.
_RAY_LABELS = {"Component", "NodeAddress", "SessionName", "Version"}
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

Series = tuple[str, frozenset[tuple[str, str]]]  # (name, labels)


def scrape(url: str) -> dict[Series, float]:
    """The `cocoedit_` samples of a Prometheus text export: {(name without ray_, labels): value}."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[Series, float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or not m.group(1).startswith("ray_cocoedit_"):
            continue
        labels = {
            k: v
            for k, v in _LABEL.findall(m.group(2) or "")
            if k not in _RAY_LABELS and not k.startswith("otel_")
        }
        out[(m.group(1).removeprefix("ray_"), frozenset(labels.items()))] = float(m.group(3))
    return out


class Seen:
    """The latest value of every series seen over repeated scrapes (Ray drops a dead process's gauges)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.series: dict[Series, float] = {}

    def update(self) -> None:
        self.series.update(scrape(self.url))

    def values(self, name: str, **tags: str) -> dict[str, float]:
        """{WorkerId: value} of the series `name` whose labels include `tags`."""
        return {
            dict(labels).get("WorkerId", ""): v
            for (n, labels), v in self.series.items()
            if n == name and set(tags.items()) <= labels
        }

    def total(self, name: str, **tags: str) -> Optional[float]:
        """Sum over processes (None when no process reported it)."""
        values = self.values(name, **tags)
        return sum(values.values()) if values else None

    def wait(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        """Scrape every 0.5 s until ready() (True) or timeout_s passed (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.update()
            if ready():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def test_importing_and_recording_need_no_ray() -> None:
    code = (
        "import sys, cocoedit.telemetry as m\n"
        "m.record_sample(3, 1.0); m.record_reward_latency('pixel', 0.1); m.record_server_request('pixel', 0.1)\n"
        "m.record_learner({'loss/total': 1.0}); m.record_epoch(0, {'reward/mean': 0.5}, 1, {'pixel': 1})\n"
        "assert 'ray' not in sys.modules, 'importing or recording imported ray'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_driver_and_actor_metrics_reach_the_export(ray_local) -> None:  # noqa: ANN001
    ray = ray_local
    service = f"test-{uuid.uuid4().hex[:8]}"  # series of their own: the session's Ray outlives this test

    @ray.remote(num_cpus=0)
    class Recorder:
        def record(self) -> str:
            record_sample(3, 1.5)
            record_sample(5, 0.5)
            record_learner({"loss/total": 0.25, "loss/reg": -0.5, "learner/step": 7.0, "learner/lr": 1e-3})
            return ray.get_runtime_context().get_worker_id()

    actor = Recorder.remote()  # stays alive while scraped: Ray drops a dead process's gauges
    actor_id = ray.get(actor.record.remote())
    driver_id = ray.get_runtime_context().get_worker_id()
    for _ in range(3):
        record_server_request(service, 0.02)
    record_reward_latency(service, 0.03)
    record_reward_latency(service, 0.2)
    row = {"reward/mean": 0.625, "reward/pixel": 0.5, "policy/lag": 1.0, "time/sample_s": 2.5, "loss/x": 9.0}
    record_epoch(4, row, queue_depth=2, replicas={service: 3})

    seen = Seen(metrics_url())
    expected = [
        ("cocoedit_edits_sampled_total", {}, actor_id, 8.0),
        ("cocoedit_sample_seconds_total", {}, actor_id, 2.0),
        ("cocoedit_edits_per_s", {}, actor_id, 10.0),  # the last call: 5 edits in 0.5 s
        ("cocoedit_learner_loss", {"term": "total"}, actor_id, 0.25),
        ("cocoedit_learner_loss", {"term": "reg"}, actor_id, -0.5),
        ("cocoedit_learner_step", {}, actor_id, 7.0),
        ("cocoedit_reward_requests_total", {"service": service}, driver_id, 3.0),
        ("cocoedit_reward_server_latency_s_count", {"service": service}, driver_id, 3.0),
        ("cocoedit_reward_latency_s_count", {"service": service}, driver_id, 2.0),
        ("cocoedit_reward_latency_s_bucket", {"service": service, "le": "0.05"}, driver_id, 1.0),
        ("cocoedit_reward_latency_s_bucket", {"service": service, "le": "0.25"}, driver_id, 2.0),
        ("cocoedit_epoch", {}, driver_id, 4.0),
        ("cocoedit_queue_depth", {}, driver_id, 2.0),
        ("cocoedit_policy_lag", {}, driver_id, 1.0),
        ("cocoedit_reward_mean", {"component": "mean"}, driver_id, 0.625),
        ("cocoedit_reward_mean", {"component": "pixel"}, driver_id, 0.5),
        ("cocoedit_epoch_stage_s", {"stage": "sample"}, driver_id, 2.5),
        ("cocoedit_replicas", {"service": service}, driver_id, 3.0),
    ]

    def got() -> list[tuple[str, dict, Optional[float], float]]:
        return [(n, t, seen.values(n, **t).get(w), v) for n, t, w, v in expected]

    # Ray exports every metrics_report_interval_ms (10 s by default)
    seen.wait(lambda: all(value == pytest.approx(want) for _, _, value, want in got()), timeout_s=40)
    assert [(n, t, value) for n, t, value, _ in got()] == [
        (n, t, pytest.approx(v)) for n, t, _, v in expected
    ]
    assert seen.values("cocoedit_learner_loss", term="x") == {}  # only loss/* from the learner, not the row
    ray.kill(actor)

"""Metrics of a run for the Ray dashboard: `ray.util.metrics` counters, gauges and histograms.

Each process records into its own metric objects, created on first use; Ray's agent on every node
exports them in Prometheus text format (Grafana's Ray dashboards read them). Recording in a process
where Ray is not initialised (a standalone `cocoedit serve`, a test without Ray) does nothing.

Ray prefixes every name with `ray_` on export (`ray_cocoedit_edits_sampled_total`) and labels every
series with its process (WorkerId), node and session; sum over WorkerId for cluster totals.

| name | kind | tags | recorded by |
|---|---|---|---|
| cocoedit_edits_sampled_total | counter | | rollout worker: edits sampled (training and eval) |
| cocoedit_sample_seconds_total | counter | | rollout worker: seconds spent in sample() |
| cocoedit_edits_per_s | gauge | | rollout worker: edits/s of its last sample() call |
| cocoedit_reward_latency_s | histogram | service | driver: wall time of one Score request (client) |
| cocoedit_reward_requests_total | counter | service | reward replica: Score calls it served |
| cocoedit_reward_server_latency_s | histogram | service | reward replica: time inside one Score call |
| cocoedit_learner_loss | gauge | term | learner rank 0: the `loss/<term>` values of its last update |
| cocoedit_learner_step | gauge | | learner rank 0: optimizer steps taken |
| cocoedit_epoch | gauge | | driver: the last finished epoch |
| cocoedit_epoch_stage_s | gauge | stage | driver: seconds of sample/score/update/sync/epoch, last epoch |
| cocoedit_queue_depth | gauge | | driver: rollout batches in flight after the epoch |
| cocoedit_policy_lag | gauge | | driver: policy versions between sampling and training |
| cocoedit_reward_mean | gauge | component | driver: `reward/<component>` of the last epoch (mean, ...) |
| cocoedit_replicas | gauge | service | driver: replicas each reward service has |

Ray 2.60 exports a histogram's `_sum` from bucket midpoints; `_count` and `_bucket` are exact.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

LATENCY_BOUNDARIES_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]

# name -> (kind, description, tag keys); one dict literal, read by _metric
SPECS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "cocoedit_edits_sampled_total": ("counter", "Edits sampled by rollout workers", ()),
    "cocoedit_sample_seconds_total": ("counter", "Seconds rollout workers spent sampling", ()),
    "cocoedit_edits_per_s": ("gauge", "Edits per second of a rollout worker's last sample call", ()),
    "cocoedit_reward_latency_s": ("histogram", "Client wall time of one Score request", ("service",)),
    "cocoedit_reward_requests_total": ("counter", "Score calls served by a reward replica", ("service",)),
    "cocoedit_reward_server_latency_s": ("histogram", "Seconds inside one Score call", ("service",)),
    "cocoedit_learner_loss": ("gauge", "Loss terms of the learner's last update", ("term",)),
    "cocoedit_learner_step": ("gauge", "Optimizer steps the learner took", ()),
    "cocoedit_epoch": ("gauge", "Last finished epoch", ()),
    "cocoedit_epoch_stage_s": ("gauge", "Seconds of each stage of the last epoch", ("stage",)),
    "cocoedit_queue_depth": ("gauge", "Rollout batches in flight after the last epoch", ()),
    "cocoedit_policy_lag": ("gauge", "Policy versions between sampling and training", ()),
    "cocoedit_reward_mean": ("gauge", "Mean reward of the last epoch per component", ("component",)),
    "cocoedit_replicas": ("gauge", "Replicas of each reward service", ("service",)),
}

_metrics: dict[str, Any] = {}  # this process's metric objects, by name

# Shipped Grafana dashboard of these series and Ray's own (docs/monitoring.md)
GRAFANA_DASHBOARD = Path(__file__).resolve().parent / "dashboards" / "cocoedit_grafana_dashboard.json"


def exported_names() -> set[str]:
    """Every series name Ray's export holds for SPECS: `ray_<name>`, a histogram as its `_bucket`,
    `_count` and `_sum` series."""
    names: set[str] = set()
    for name, (kind, _, _) in SPECS.items():
        suffixes = ("_bucket", "_count", "_sum") if kind == "histogram" else ("",)
        names.update(f"ray_{name}{suffix}" for suffix in suffixes)
    return names


def enabled() -> bool:
    """True when this process is a Ray driver or worker (only then is anything recorded)."""
    ray = sys.modules.get("ray")  # not imported = not initialised; keeps importing this module free
    return ray is not None and ray.is_initialized()


def _metric(name: str) -> Any:
    if name not in _metrics:
        from ray.util.metrics import Counter, Gauge, Histogram

        kind, description, tags = SPECS[name]
        if kind == "counter":
            _metrics[name] = Counter(name, description, tag_keys=tags)
        elif kind == "gauge":
            _metrics[name] = Gauge(name, description, tag_keys=tags)
        else:
            _metrics[name] = Histogram(name, description, boundaries=LATENCY_BOUNDARIES_S, tag_keys=tags)
    return _metrics[name]


def _set(name: str, value: float, tags: Optional[dict[str, str]] = None) -> None:
    if math.isfinite(value):  # a NaN (e.g. no grad norm) would read as a real value in Prometheus
        _metric(name).set(float(value), tags=tags)


def record_sample(edits: int, seconds: float) -> None:
    """A rollout worker sampled `edits` edits in `seconds`."""
    if not enabled() or edits <= 0:
        return
    _metric("cocoedit_edits_sampled_total").inc(edits)
    if seconds > 0:
        _metric("cocoedit_sample_seconds_total").inc(seconds)
        _set("cocoedit_edits_per_s", edits / seconds)


def record_reward_latency(service: str, seconds: float) -> None:
    """The client got the reply of one Score request to `service` after `seconds`."""
    if enabled():
        _metric("cocoedit_reward_latency_s").observe(seconds, tags={"service": service})


def record_server_request(service: str, seconds: float) -> None:
    """A replica of `service` served one Score call in `seconds`."""
    if enabled():
        _metric("cocoedit_reward_requests_total").inc(1, tags={"service": service})
        _metric("cocoedit_reward_server_latency_s").observe(seconds, tags={"service": service})


def record_learner(metrics: dict[str, float]) -> None:
    """The learner's update metrics: every `loss/<term>` and the optimizer step."""
    if not enabled():
        return
    for key, value in metrics.items():
        if key.startswith("loss/"):
            _set("cocoedit_learner_loss", value, {"term": key.removeprefix("loss/")})
    if "learner/step" in metrics:
        _set("cocoedit_learner_step", metrics["learner/step"])


def record_epoch(epoch: int, row: dict[str, float], queue_depth: int, replicas: dict[str, int]) -> None:
    """The driver's view after epoch `epoch`: its metrics `row` (as logged), queue depth, replicas."""
    if not enabled():
        return
    _set("cocoedit_epoch", epoch)
    _set("cocoedit_queue_depth", queue_depth)
    if "policy/lag" in row:
        _set("cocoedit_policy_lag", row["policy/lag"])
    for key, value in row.items():
        if key.startswith("reward/"):
            _set("cocoedit_reward_mean", value, {"component": key.removeprefix("reward/")})
        elif key.startswith("time/") and key.endswith("_s"):
            _set("cocoedit_epoch_stage_s", value, {"stage": key.removeprefix("time/").removesuffix("_s")})
    for service, n in replicas.items():
        _set("cocoedit_replicas", n, {"service": service})

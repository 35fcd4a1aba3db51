"""`ray job submit` of the tiny run to a `ray start` cluster, and the run's metrics in its Prometheus export.

The cluster is a second Ray cluster on this machine beside the suite's in-process one (conftest
`ray_local`), so it must not touch that one or a colleague's run:
  - its own free ports for every Ray service, all on 127.0.0.1 (LOOPBACK_ENV);
  - its own short --temp-dir (unix socket paths must stay under 108 bytes): `ray start` writes the
    address file that a later plain `ray.init()` would join there, not in /tmp/ray;
  - `ray start --block` in a process group of its own: SIGTERM to it stops its processes, then that
    group and any process left that names our temp dir are killed. Never `ray stop`: it kills every
    Ray cluster of the user.
The working directory is uploaded exactly as the README says, `--working-dir .`: Ray leaves out what
.gitignore lists, the generated gRPC code included, which `import protos` rebuilds in the job's copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest
import yaml

from cocoedit.learner.checkpoint import latest_checkpoint
from cocoedit.loopback import LOOPBACK_ENV, free_port
from cocoedit.telemetry import exported_names
from tests.cluster.test_dashboard import dashboard_series
from tests.cluster.test_telemetry import Seen
from tests.cluster.test_train import TINY

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).parent / "ray"
PROMETHEUS = shutil.which("prometheus")  # Debian's package (.ci/run installs it)


def _get_json(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=10).read().decode())


def _wait_http(url: str, head: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if head.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=5)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{url} did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}"
                ) from None
            time.sleep(0.5)


def _stop(head: subprocess.Popen, temp_dir: str) -> None:
    """SIGTERM `ray start --block` (it stops its processes), then SIGKILL whatever of ours is left."""
    head.terminate()
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        head.kill()
        head.wait(timeout=10)
    try:
        os.killpg(head.pid, signal.SIGKILL)  # its process group
    except ProcessLookupError:
        pass
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if temp_dir.encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass  # gone meanwhile, or not ours to read


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201 - yields (dashboard url, metrics url, job env, temp dir)
    tmp_path = tmp_path_factory.mktemp("cluster")
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ports = {
        name: free_port()
        for name in (
            "port",
            "dashboard-port",
            "metrics-export-port",
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
            "node-manager-port",
            "object-manager-port",
        )
    }
    env = {
        **os.environ,
        **LOOPBACK_ENV,
        # Unauthenticated, as before issue 29 (tests/conftest.py turns token auth on for the suite): in one
        # manual try with a token, `ray job submit` authenticated but was answered "No available agent to
        # submit job"; not investigated further (README, Security set-up)
        "RAY_AUTH_MODE": "disabled",
        "PATH": f"{RAY.parent}{os.pathsep}{os.environ['PATH']}",  # the job's `python` is this venv's
        "OMP_NUM_THREADS": "1",
        # Export every 2 s (default 10 s): the test reads the gauges while the job runs, and Ray drops a
        # finished process's gauges after two intervals.
        "RAY_metrics_report_interval_ms": "2000",
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",  # SIGTERM stops at once (default: drains 30 s)
    }
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "ray_start.log"
    cmd = [str(RAY), "start", "--head", "--block", "--num-cpus=2", "--disable-usage-stats"]
    cmd += ["--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--include-dashboard=true"]
    cmd += [f"--temp-dir={temp_dir}", *(f"--{k}={v}" for k, v in ports.items())]
    with open(log, "w") as out:
        head = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
        _wait_http(f"{dashboard}/api/version", head, log, timeout_s=90)
        yield dashboard, f"http://127.0.0.1:{ports['metrics-export-port']}/metrics", env, temp_dir
    finally:
        _stop(head, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@dataclass
class Job:
    """The tiny job's outcome: status, run directory, the series seen in Ray's export while it ran, and
    the Prometheus that scraped the cluster (None when no `prometheus` binary is installed)."""

    status: str
    logs: str
    run_dir: Path
    seen: Seen
    prometheus: Optional[str]


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN001, ANN201 - yields Job
    """One tiny `ray job submit` run, shared by the checks of this module (with Prometheus scraping the
    cluster through Ray's own config when the binary is installed)."""
    dashboard, metrics, env, temp_dir = cluster
    tmp_path = tmp_path_factory.mktemp("job")
    with contextlib.ExitStack() as stack:
        prometheus = stack.enter_context(start_prometheus(temp_dir, tmp_path)) if PROMETHEUS else None
        yield run_job(dashboard, metrics, env, tmp_path, prometheus)


def run_job(dashboard: str, metrics: str, env: dict, tmp_path: Path, prometheus: Optional[str]) -> Job:
    run_dir = tmp_path / "run"
    job_id = f"cocoedit-test-{uuid.uuid4().hex[:8]}"
    runtime_env = {
        "env_vars": {"COCOEDIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"},
    }
    entrypoint = ["python", "-m", "cocoedit.cluster.train", "--config", "cluster/configs/tiny_cpu.yaml"]
    # valid_min_std=0: every update takes a step, so the learner's loss gauges are exported too
    entrypoint += [*TINY, "run.epochs=2", "learner.valid_min_std=0", f"run.run_dir={run_dir}"]
    subprocess.run(
        [str(RAY), "job", "submit", "--address", dashboard, "--working-dir", ".", "--submission-id", job_id]
        + ["--no-wait", "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
        timeout=120,
    )

    seen = Seen(metrics)  # scraped while the job runs: Ray drops a finished process's gauges
    deadline = time.monotonic() + 400
    status = "PENDING"
    while status in ("PENDING", "RUNNING") and time.monotonic() < deadline:
        time.sleep(1)
        seen.update()
        status = _get_json(f"{dashboard}/api/jobs/{job_id}")["status"]
    logs = _get_json(f"{dashboard}/api/jobs/{job_id}/logs")["logs"]
    (tmp_path / "job.log").write_text(logs)
    return Job(status, logs, run_dir, seen, prometheus)


@contextlib.contextmanager
def start_prometheus(temp_dir: str, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free loopback port with the config `ray start` wrote for its session
    (`<temp dir>/session_latest/metrics/prometheus/prometheus.yml`: every node's export, found through
    Ray's service-discovery file), its scrape interval cut from 10 s to 1 s so that the short job's
    gauges are caught; yields its URL."""
    session_config = Path(temp_dir) / "session_latest" / "metrics" / "prometheus" / "prometheus.yml"
    deadline = time.monotonic() + 30  # the dashboard writes it after it answers
    while not session_config.is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    config = yaml.safe_load(session_config.read_text())
    config["global"]["scrape_interval"] = "1s"
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    log = tmp_path / "prometheus.log"
    cmd = [
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
    ]
    cmd += [f"--web.listen-address={url.removeprefix('http://')}"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"{url}/-/ready", proc, log, timeout_s=60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_prometheus_scrapes_every_documented_series(job: Job) -> None:
    """Every `ray_cocoedit_*` series of cocoedit/telemetry.py (the README's table) and every series the
    shipped Grafana dashboard reads reached a Prometheus that used Ray's own config."""
    if job.prometheus is None:
        pytest.skip(
            "no `prometheus` binary on PATH (Debian: apt-get install prometheus; .ci/run installs it)"
        )
    assert job.status == "SUCCEEDED", f"job {job.status}; last of its log:\n{job.logs[-4000:]}"
    wanted = exported_names() | dashboard_series()
    deadline = time.monotonic() + 30  # the last report of the finished processes
    while True:
        stored = set(_get_json(f"{job.prometheus}/api/v1/label/__name__/values")["data"])
        if wanted <= stored or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert sorted(wanted - stored) == []
    # one value checked end to end: the sampled-edits counter as Prometheus holds it
    query = urllib.parse.quote("sum(max_over_time(ray_cocoedit_edits_sampled_total[10m]))")
    result = _get_json(f"{job.prometheus}/api/v1/query?query={query}")["data"]["result"]
    assert float(result[0]["value"][1]) == EDITS


# 2 epochs x (2 items x 4 edits); the starting policy and the last evaluated on both fixed sets (held-out
# and training items, 2 items x 2 seeds each); epoch 0's validation grid (2 items x 2 seeds: epoch 0 has
# no evaluation to draw it from since the first is before it)
EDITS = 2 * 2 * 4 + 2 * 2 * (2 * 2) + 2 * 2
# per service one Score request per scoring (<= rewards.client.batch_edits edits): 2 training batches,
# 2 evaluations x 2 sets, 1 grid
SCORINGS = 2 + 2 * 2 + 1


def test_ray_job_submit_trains_and_exports_metrics(job: Job) -> None:
    status, logs, run_dir, seen = job.status, job.logs, job.run_dir, job.seen
    assert status == "SUCCEEDED", f"job {status}; last of its log:\n{logs[-4000:]}"

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert latest_checkpoint(run_dir) is not None

    edits, requests = EDITS, SCORINGS
    # counters of finished processes stay in the export; wait for the last report of each
    seen.wait(lambda: seen.total("cocoedit_edits_sampled_total") == edits, timeout_s=30)
    assert seen.total("cocoedit_edits_sampled_total") == edits  # rollout worker
    assert seen.total("cocoedit_sample_seconds_total") > 0
    for service in ("pixel", "synthetic"):
        assert (
            seen.total("cocoedit_reward_latency_s_count", service=service) == requests
        )  # the rollout worker's client
        assert seen.total("cocoedit_reward_requests_total", service=service) == requests  # the replica
        assert seen.total("cocoedit_replicas", service=service) == 1
    trained = [r for r in rows if not r.get("learner/skipped")]
    assert seen.total("cocoedit_learner_step") == len(trained)  # learner rank 0
    if trained:
        assert seen.total("cocoedit_learner_loss", term="total") == pytest.approx(trained[-1]["loss/total"])
    # the driver's gauges as it left them after the last epoch
    assert seen.total("cocoedit_epoch") == 1
    assert seen.total("cocoedit_queue_depth") == 0
    assert seen.total("cocoedit_policy_lag") == 0
    assert seen.total("cocoedit_reward_mean", component="mean") == pytest.approx(rows[1]["reward/mean"])
    assert seen.total("cocoedit_reward_mean", component="synthetic") == pytest.approx(
        rows[1]["reward/synthetic"]
    )
    assert seen.total("cocoedit_epoch_stage_s", stage="epoch") == pytest.approx(rows[1]["time/epoch_s"])

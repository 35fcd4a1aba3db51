"""Joining a Ray cluster: a missing or stopped cluster is a message within run.ray_connect_timeout_s,
never a hang, and a live cluster is joined. Loopback only: stale sessions are simulated by an address
file (under RAY_TMPDIR) naming a dead port on 127.0.0.1, or by a listener on 127.0.0.1 that never answers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cocoedit.cluster.runtime.launch import RayConnectError, _join
from cocoedit.loopback import free_port

WHAT_TO_DO = ("ray start --head", "RAY_ADDRESS", "run.ray_address=null")


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=str(tmp_path), HF_HUB_OFFLINE="1")
    return env


def test_auto_without_a_cluster_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))  # no address file: no `ray start` on this machine
    t0 = time.monotonic()
    with pytest.raises(RayConnectError, match="no Ray cluster was started on this machine") as e:
        _join("auto", "run.ray_address", timeout_s=30.0)
    assert time.monotonic() - t0 < 5.0
    assert all(hint in str(e.value) for hint in WHAT_TO_DO)


def test_stale_address_file_fails_at_once_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    dead = free_port()  # nothing listens there: the cluster that wrote the file is gone
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{dead}")
    t0 = time.monotonic()
    with pytest.raises(RayConnectError, match=f"no Ray cluster answers at 127.0.0.1:{dead}") as e:
        _join("auto", "run.ray_address", timeout_s=30.0)
    assert time.monotonic() - t0 < 5.0
    assert "ray_current_cluster" in str(e.value) and all(hint in str(e.value) for hint in WHAT_TO_DO)


def test_train_with_a_silent_cluster_exits_1_within_the_timeout(tmp_path: Path) -> None:
    """`cocoedit train` on the production config, its GCS address answering nothing: exit 1 with the
    message once run.ray_connect_timeout_s has passed (Ray alone retries for minutes)."""
    with socket.socket() as silent:  # accepts connections, never speaks gRPC
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        argv = [
            *("train", "--config", "cluster/configs/flux_kontext_8gpu.yaml"),
            f"run.ray_address={address}",
            "run.ray_connect_timeout_s=4",
            "data.manifest=null",  # the config's dataset is not on this machine (refused before Ray)
            # nor are its reward services' TLS and token files (refused before Ray too)
            "rewards.pixel.server.insecure=true",
            "rewards.mllm.server.insecure=true",
        ]
        t0 = time.monotonic()
        proc = subprocess.run(
            [sys.executable, "-m", "cocoedit.cluster.cli", *argv],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=120,
        )
        elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "did not answer within run.ray_connect_timeout_s=4 s" in proc.stderr
    assert all(hint in proc.stderr for hint in WHAT_TO_DO)
    assert "Traceback" not in proc.stderr
    assert elapsed < 4 + 60  # the time-out plus the imports of a loaded machine; Ray alone waits minutes


def test_a_live_cluster_is_joined(tmp_path: Path, ray_local) -> None:  # noqa: ANN001
    """The bounded join still joins: a child process joins this session's cluster by its address."""
    address = ray_local.get_runtime_context().gcs_address
    code = (
        "import ray; from cocoedit.cluster.config import load_config; from cocoedit.cluster.runtime.launch import init_ray; "
        f"init_ray(load_config(None, ['run.ray_address={address}', 'run.ray_connect_timeout_s=60']).run); "
        "print('joined', ray.get_runtime_context().gcs_address)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"joined {address}" in proc.stdout


def test_a_join_given_up_on_ends_the_process_with_its_code_and_its_output(tmp_path: Path) -> None:
    """A ray.init thread still running (given up on) makes the interpreter's exit abort (SIGABRT, about
    one run in three of the silent-cluster test above before the fix). exit_past_abandoned_join leaves
    with the command's code, its buffered output flushed, and only when such a thread is alive."""
    code = (
        "import sys, threading, time\n"
        "from cocoedit.cluster.runtime import launch\n"
        "launch.exit_past_abandoned_join(7)  # no thread given up on: returns\n"
        "print('still here')\n"
        "t = threading.Thread(target=time.sleep, args=(60,), daemon=True); t.start()\n"
        "launch._abandoned_joins.append(t)\n"
        "print('the one-line error', file=sys.stderr, end='')\n"
        "launch.exit_past_abandoned_join(3)\n"
        "print('not reached')\n"
    )
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(tmp_path), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout == "still here\n"
    assert proc.stderr.endswith("the one-line error")
    assert time.monotonic() - t0 < 60  # did not wait for the thread

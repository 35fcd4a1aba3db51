"""The local Ray cluster `cocoedit train` starts requires its per-run token: a process that finds the GCS
address (it shows in `ps`) but has no token cannot join or run anything. Slow (~1-2 min on 2 busy
cores: a Ray head, and a refused client gives up after ~25 s): `pytest -m slow tests/cluster/test_ray_auth.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

HEAD = """
import json, os, time
from cocoedit.cluster.config import RunConfig
from cocoedit.cluster.runtime.launch import init_ray
import ray
init_ray(RunConfig(ray_num_cpus=1))
print(json.dumps({"gcs": ray.get_runtime_context().gcs_address, "token_path": os.environ["RAY_AUTH_TOKEN_PATH"]}), flush=True)
time.sleep(600)
"""
CLIENT = """
import sys, ray
ray.init(address=sys.argv[1])
ray.get(ray.remote(lambda path: open(path, "w").write("ran")).remote(sys.argv[2]))
"""


@pytest.mark.slow
def test_a_client_without_the_run_token_is_refused(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(OMP_NUM_THREADS="1", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    head = subprocess.Popen(
        [sys.executable, "-c", HEAD], env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        started = json.loads(head.stdout.readline())  # type: ignore[union-attr]
        gcs, token_path = started["gcs"], Path(started["token_path"])
        assert token_path.stat().st_mode & 0o077 == 0  # readable by this user only

        # a raw gRPC call to the GCS without the token
        channel = grpc.insecure_channel(gcs)
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo")
        with pytest.raises(grpc.RpcError) as err:
            call(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
        channel.close()

        # a Ray driver without the token: refused, runs nothing
        marker = tmp_path / "ran"
        for extra in ({"RAY_AUTH_MODE": "disabled"}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
            refused = subprocess.run(
                [sys.executable, "-c", CLIENT, gcs, str(marker)],
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=180,
            )
            assert refused.returncode != 0 and not marker.exists(), refused.stderr[-2000:]
        # with the run's token it joins (so the refusals above were the token's doing)
        allowed = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
        joined = subprocess.run(
            [sys.executable, "-c", CLIENT, gcs, str(marker)],
            env=allowed,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert joined.returncode == 0 and marker.read_text() == "ran", joined.stderr[-2000:]
    finally:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()

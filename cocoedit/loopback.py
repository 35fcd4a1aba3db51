"""Environment that keeps Ray, vLLM and gRPC traffic on 127.0.0.1 for local runs and tests.

Ray and vLLM bind the machine's external address by default (docs/architecture.md, Machine facts); these settings keep every
port on loopback. They are applied by `cocoedit train` when it starts its own local Ray cluster,
and by the test suite. Ray's token authentication is not switched off here: `cocoedit train` gives its
local cluster a per-run token (cocoedit/ray_auth.py).
"""

from __future__ import annotations

import os
import socket
import sys

LOOPBACK_ENV = {
    # Makes every Ray port bind 127.0.0.1 (measured: --node-ip-address alone is not enough).
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    # vLLM's internal queues otherwise use the machine's non-loopback address.
    "VLLM_HOST_IP": "127.0.0.1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def apply_loopback_env() -> None:
    """Set LOOPBACK_ENV in this process (inherited by every child it starts); existing values win.

    Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when it is imported; when it already is (the
    `cocoedit train` driver imports it before it knows it will start a local cluster), its constant
    is updated too, or the raylet and agents would still bind the machine's external address.
    """
    for key, value in LOOPBACK_ENV.items():
        os.environ.setdefault(key, value)
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in (
            "1",
            "true",
        )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]

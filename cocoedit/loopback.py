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
from typing import Any

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
    constants: Any = sys.modules.get("ray._private.ray_constants")  # a module: its attributes are Ray's
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


class PortTakenError(OSError):
    """A port the command is about to listen on is already taken; the message names the key to change."""


def check_port_free(host: str, port: int, key: str) -> None:
    """Raise PortTakenError (one line naming `key` and a free port) when `port` on `host` cannot be bound.

    Run before anything starts, so a taken port is one line rather than a server's traceback or a
    cluster that times out. SO_REUSEADDR: a port in TIME_WAIT is free to a server, only a listener takes it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise PortTakenError(
                f"port {port} on {host} is taken ({e.strerror}): another process listens there; stop it or "
                f"pass a free one ({key}={free_port(host)}, free right now)"
            ) from None

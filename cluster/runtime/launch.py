"""Start (or join) the Ray cluster and resolve the model directories a run needs.

In the tiny mode (`run.tiny: true`) a missing `policy.model_path` means the tiny editor pre-trained on
the synthetic task (built on first use, cached under $COCOEDIT_CACHE, default ~/.cache/cocoedit, keyed
by its settings), and a missing `rewards.mllm.model_path` the tiny vLLM judge (built once into
`rewards.mllm.tiny_judge_dir`). Outside the tiny mode a missing model path is an error.
Building on first use (rather than shipping weights in git) keeps the repository free of binary
weights and lets the tiny editor follow the diffusers version installed.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import ray

from cocoedit.cluster.config import Config, RunConfig
from cocoedit.loopback import apply_loopback_env, check_port_free
from cocoedit.ray_auth import enable_run_token

log = logging.getLogger(__name__)

TINY_EDITOR_VERSION = 2  # bump when the pre-training recipe changes (2: one thread, deterministic kernels)


def cache_dir() -> Path:
    return Path(os.environ.get("COCOEDIT_CACHE", Path.home() / ".cache" / "cocoedit"))


class RayConnectError(ConnectionError):
    """No Ray cluster answers at the address the run was told to join; the message says what to do."""


_WHAT_TO_DO = (
    "Start Ray first (`ray start --head` on this machine, or submit with `ray job submit`), point "
    "RAY_ADDRESS / run.ray_address at a running cluster's GCS (host:port), or set run.ray_address=null "
    "to start a local cluster for this run"
)


_started_local = False  # init_ray started a local cluster (shutdown_ray stops it)
_abandoned_joins: list[threading.Thread] = []  # ray.init calls given up on, still inside Ray's C++ core


def exit_past_abandoned_join(code: int) -> None:
    """End the process with `code` now if a join was given up on while ray.init still runs.

    Such a thread sits in Ray's C++ core; the interpreter's normal exit tears down what it uses and
    the process aborts (std::bad_alloc, SIGABRT, about one run in three), after the one-line error
    was printed. So the streams are flushed and the process leaves without that teardown.
    """
    if any(t.is_alive() for t in _abandoned_joins):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def init_ray(cfg: RunConfig) -> None:
    """Join a Ray cluster or start a local one on 127.0.0.1 (no-op when already initialised).

    Joins cfg.ray_address when set, else $RAY_ADDRESS (set by `ray job submit` for the job's driver);
    otherwise starts a local cluster of cfg.ray_num_cpus CPUs. Joining gives up after
    cfg.ray_connect_timeout_s with a RayConnectError saying what to do. Logs where metrics are scraped.
    """
    if ray.is_initialized():
        return
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        _join(address, "run.ray_address" if cfg.ray_address else "RAY_ADDRESS", cfg.ray_connect_timeout_s)
    else:
        apply_loopback_env()
        enable_run_token()  # the GCS address shows in `ps`: nobody without the token may join
        if cfg.metrics_export_port is not None:  # else Ray waits 30 s and says "node timed out"
            check_port_free("127.0.0.1", cfg.metrics_export_port, "run.metrics_export_port")
        global _started_local
        _started_local = True
        ray.init(
            num_cpus=cfg.ray_num_cpus,
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            _metrics_export_port=cfg.metrics_export_port,
            log_to_driver=True,
            logging_level=logging.WARNING,
        )
    log.info("Ray metrics (Prometheus, cocoedit/telemetry.py): %s", metrics_url())


def cluster_address(address: str, source: str) -> tuple[str, str]:
    """(host:port of the cluster's GCS, where that came from) for a run.ray_address / RAY_ADDRESS value.

    `auto` means RAY_ADDRESS, else the cluster that `ray start` last recorded on this machine (its
    address file). Unlike `ray.init(address="auto")`, no other Ray process found on the machine is
    joined: on a shared machine that may be anyone's cluster. `ray://` client addresses pass through.
    """
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "")
        if env and env != "auto":
            return env, "RAY_ADDRESS"
        from ray._common.utils import get_ray_address_file

        path = Path(get_ray_address_file(None))
        recorded = path.read_text().strip() if path.is_file() else ""
        if not recorded:
            raise RayConnectError(
                f"run.ray_address=auto but no Ray cluster was started on this machine ({path} does not exist). "
                + _WHAT_TO_DO
            )
        return recorded, f"{path}, written by the last `ray start` on this machine"
    return address, source


def _no_sigterm_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("SIGTERM handler is not set")


def _join(address: str, source: str, timeout_s: float) -> None:
    """ray.init(address) bounded by timeout_s: a dead address fails at once, a silent one after timeout_s."""
    target, source = cluster_address(address, source)
    deadline = time.monotonic() + timeout_s
    if "://" not in target:
        host, _, port = target.rpartition(":")
        if not host or not port.isdigit():
            raise RayConnectError(f"Ray address {target!r} (from {source}) is not host:port. " + _WHAT_TO_DO)
        if host in ("127.0.0.1", "localhost", "::1"):
            # otherwise Ray swaps a loopback address for the machine's external one (docs/architecture.md, Machine facts)
            apply_loopback_env()
        try:
            socket.create_connection((host, int(port)), timeout=min(timeout_s, 5.0)).close()
        except OSError as e:
            raise RayConnectError(
                f"no Ray cluster answers at {target} (from {source}): {e}. A stopped cluster leaves its "
                "address behind. " + _WHAT_TO_DO
            ) from e
    failure: list[BaseException] = []

    def connect() -> None:
        try:
            ray.init(address=target, log_to_driver=True)
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread below
            failure.append(e)

    # ray.init retries its GCS calls for minutes; a thread lets the driver give up on time (Ray's
    # warning that it cannot set its SIGTERM handler there is answered below)
    ray_log = logging.getLogger("ray._private.worker")
    ray_log.addFilter(_no_sigterm_warning)
    thread = threading.Thread(target=connect, name="ray-connect", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    ray_log.removeFilter(_no_sigterm_warning)
    if thread.is_alive():
        _abandoned_joins.append(thread)  # exit_past_abandoned_join ends the process safely
        raise RayConnectError(
            f"the Ray cluster at {target} (from {source}) did not answer within run.ray_connect_timeout_s="
            f"{timeout_s:g} s. " + _WHAT_TO_DO
        )
    if failure:
        raise RayConnectError(
            f"joining the Ray cluster at {target} (from {source}) failed: {failure[0]}. " + _WHAT_TO_DO
        ) from failure[0]
    if threading.current_thread() is threading.main_thread():
        # what ray.init does in the main thread: `ray job stop` (SIGTERM) exits the driver cleanly
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))


def shutdown_ray() -> None:
    """Stop the local cluster `init_ray` started, and wait for its processes, so that no raylet, agent,
    worker or replica of this run outlives it. A no-op for a joined cluster, or Ray started by others."""
    global _started_local
    if _started_local and ray.is_initialized():
        ray.shutdown(wait_for_processes=True)
    _started_local = False


def metrics_url() -> str:
    """The Prometheus scrape URL of this Ray node's metrics export (Ray must be initialised)."""
    node_id = ray.get_runtime_context().get_node_id()
    node = next(n for n in ray.nodes() if n["NodeID"] == node_id)
    return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"


def resolve_models(cfg: Config) -> Config:
    """Fill in the tiny model directories (building them if needed) when run.tiny is set."""
    policy, judge = cfg.policy, cfg.rewards.mllm
    if policy.model_path is None:
        if not cfg.run.tiny:
            raise ValueError(
                "policy.model_path is not set: point it at a local diffusers directory of the editor "
                "(e.g. FLUX.1-Kontext-dev), or set run.tiny=true for the tiny CPU editor"
            )
        policy = dataclasses.replace(policy, model_path=str(tiny_editor(cfg)))
    uses_judge = "mllm" in cfg.rewards.weights and "mllm" not in cfg.rewards.addresses
    if uses_judge and judge.model_path is None:
        if not cfg.run.tiny:
            raise ValueError(
                "rewards.mllm.model_path is not set: point it at a local Qwen2.5-VL-Instruct directory, give "
                "rewards.addresses.mllm, or set run.tiny=true for the tiny judge"
            )
        from cocoedit.rewards.mllm import resolve_model_path

        judge = dataclasses.replace(judge, model_path=str(resolve_model_path(judge)))  # builds it once
    return dataclasses.replace(cfg, policy=policy, rewards=cfg.rewards.with_service("mllm", judge))


def cache_path(kind: str, settings: dict) -> Path:
    """Where `_cached` keeps the build of `kind` with `settings` (it may not be built yet)."""
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{kind}-{key}"


def _cached(kind: str, settings: dict, build) -> Path:  # noqa: ANN001 - build: Callable[[Path], None]
    path = cache_path(kind, settings)
    if (path / "model_index.json").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:  # one builder at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            log.info("building %s into %s (first use; cached afterwards)", kind, path)
            build(path)
    return path


def tiny_editor(cfg: Config) -> Path:
    from cocoedit.actors.pretrain import pretrain_tiny

    settings = {"version": TINY_EDITOR_VERSION, **dataclasses.asdict(cfg.pretrain)}
    if cfg.pretrain.family != cfg.policy.family:
        raise ValueError(
            f"pretrain.family={cfg.pretrain.family} but policy.family={cfg.policy.family}: the tiny editor "
            f"must be of the policy's family"
        )
    if cfg.pretrain.image_size != cfg.data.image_size:
        raise ValueError(
            f"pretrain.image_size={cfg.pretrain.image_size} but data.image_size={cfg.data.image_size}: pre-train "
            f"the tiny editor at the size it will be trained at"
        )
    return _cached("tiny-editor", settings, lambda p: pretrain_tiny(cfg.pretrain, p, progress=True))

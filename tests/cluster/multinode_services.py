"""Reward services of a shipped multi-node config on a local multi-node Ray cluster (cluster/simulate/cluster.py),
run by tests/cluster/test_multinode.py in a process of its own: a local cluster cannot start where the
suite's Ray already runs.

    python -m tests.cluster.multinode_services PROBE TLS_DIR OUT.json   # PROBE: a key of PROBES

TLS_DIR holds ca.pem, node.pem / node.key (signed by the CA, naming 127.0.0.1) and token. The pixel
service runs with the shipped config's rewards.pixel.server section (host: node, TLS, token), its file
paths pointed at TLS_DIR, on a cluster whose head node (the driver's) hosts no actor. OUT.json gets what
the test asserts: where the replicas run, what they scored, what unauthenticated clients got.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import ray

from cocoedit.cluster.config import CONFIG_DIR, load_config
from cocoedit.cluster.runtime.services import RewardServices
from cocoedit.cluster.simulate.cluster import local_cluster
from cocoedit.rewards.client import RewardClient, RewardServiceError
from cocoedit.rewards.config import ClientConfig
from tests.rewards.conftest import make_edits

SHIPPED = CONFIG_DIR / "flux_kontext_8gpu.yaml"


def shipped_pixel(tls: Path, extra: list[str]) -> Any:
    """The shipped config's reward side, scoring with pixel only, its TLS and token files in `tls`."""
    return load_config(
        SHIPPED,
        [
            "rewards.weights={pixel: 1.0}",
            f"rewards.pixel.server.tls_cert_file={tls / 'node.pem'}",
            f"rewards.pixel.server.tls_key_file={tls / 'node.key'}",
            f"rewards.pixel.server.token_file={tls / 'token'}",
            f"rewards.client.tls_ca_file={tls / 'ca.pem'}",
            f"rewards.client.token_file={tls / 'token'}",
            "rewards.pixel.scaling.cpus_per_replica=1",  # logical CPUs of the local nodes
            "rewards.pixel.scaling.target_score_s=null",
            "rewards.client.ready_timeout_s=120",
            *extra,
        ],
    )


def refused(addresses: list[str], cfg: ClientConfig) -> str:
    """The error a client with `cfg` gets when it scores through `addresses`, or '' if it scored."""
    client = RewardClient(addresses, cfg, "pixel")
    try:
        client.score(make_edits(1, 16, 16))
    except RewardServiceError as e:
        return str(e)
    finally:
        client.close()
    return ""


def placed_and_scored(tls: Path) -> dict[str, Any]:
    cfg = shipped_pixel(tls, [])
    out: dict[str, Any] = {
        "server": {k: getattr(cfg.rewards.pixel.server, k) for k in ("host", "insecure")},
        "replicas_configured": cfg.rewards.pixel.scaling.replicas,
    }
    with local_cluster(nodes=3, gpus_per_node=0, cpus_per_node=1, head_cpus=0):
        out["driver_node"] = ray.get_runtime_context().get_node_id()
        out["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        services = RewardServices(cfg.rewards)
        try:
            out["stats_before"] = services.stats("pixel")
            outcomes = services.score(make_edits(4, 32, 32))["pixel"]
            out["scores"] = [o.score for o in outcomes]
            out["errors"] = [o.error for o in outcomes if o.error is not None]
            out["stats_after"] = services.stats("pixel")
            addresses = services.addresses("pixel")
            out["addresses"] = addresses
            out["no_token"] = refused(addresses, ClientConfig(tls_ca_file=str(tls / "ca.pem"), retries=0))
            out["plaintext"] = refused(
                addresses, ClientConfig(token_file=str(tls / "token"), retries=0, timeout_s=10)
            )
            out["stats_end"] = services.stats("pixel")
        finally:
            services.close()
    return out


def live_replicas() -> dict[str, int]:
    """RewardReplica actors Ray has not marked dead, and RewardReplica processes under this process
    (the local cluster's raylets and their workers are its descendants)."""
    import psutil
    from ray._private.state import actors

    table = actors().values()
    alive = [a for a in table if a["ActorClassName"] == "RewardReplica" and a["State"] != "DEAD"]
    procs = []
    for p in psutil.Process().children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::RewardReplica"):
                procs.append(p.pid)
        except psutil.NoSuchProcess:
            continue
    return {"actors": len(alive), "processes": len(procs)}


def node_lost(tls: Path) -> dict[str, Any]:
    """Both replicas on one node; a spare node joins; the replicas' node is removed (its raylet and
    processes killed) while the driver keeps scoring. Records the recovery and the replicas alive."""
    cfg = shipped_pixel(tls, ["rewards.client.timeout_s=30", "rewards.client.retries=6"])
    edits = make_edits(4, 32, 32)
    out: dict[str, Any] = {"replicas_configured": cfg.rewards.pixel.scaling.replicas}
    with local_cluster(nodes=2, gpus_per_node=0, cpus_per_node=2, head_cpus=0) as cluster:
        services = RewardServices(cfg.rewards)
        try:
            before = services.stats("pixel")
            out["before"] = before
            cluster.add_node(num_cpus=2, num_gpus=0, node_ip_address="127.0.0.1", include_dashboard=False)
            cluster.wait_for_nodes()
            victim = next(n for n in cluster.worker_nodes if n.node_id == before[0]["node_id"])
            services.score(edits)
            t0 = time.monotonic()
            cluster.remove_node(victim, allow_graceful=False)
            out["removed_node"] = victim.node_id
            scored = []
            while time.monotonic() - t0 < 180:
                outcomes = services.score(edits)["pixel"]
                scored.append(all(o.error is None for o in outcomes))
                now = services.addresses("pixel")
                if len(now) == 2 and not {b["address"] for b in before} & set(now):
                    break
                time.sleep(0.5)
            out["recover_s"] = time.monotonic() - t0
            out["scored_while_recovering"] = scored
            time.sleep(5.0)  # a replica Ray restarts late would show up here
            services.score(edits)
            out["after"] = services.stats("pixel")
            out["addresses"] = services.addresses("pixel")
            out["live"] = live_replicas()
            out["restarts_seen"] = services.restarts_seen
        finally:
            services.close()
    return out


PROBES = {"placed": placed_and_scored, "node_lost": node_lost}


def main(argv: list[str]) -> int:
    what, tls, out = argv[0], Path(argv[1]), Path(argv[2])
    out.write_text(json.dumps(PROBES[what](tls), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""A local multi-node Ray cluster on this machine: several raylets on 127.0.0.1, each announcing the
simulated node's GPUs (fake: Ray only counts them) and a few logical CPUs.

    with local_cluster(nodes=2, gpus_per_node=8, cpus_per_node=8) as cluster:
        ...   # the driver is connected (ray.is_initialized()); init_ray() is then a no-op

Every port binds 127.0.0.1 (cocoedit.loopback) and the cluster requires a per-run token
(cocoedit.ray_auth), as `cocoedit train`'s own local cluster. Ray's address file (what
`ray.init(address="auto")` and run.ray_address=auto read) is put back as it was: a simulation must
not become the cluster another run on this machine joins.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

import ray

from cocoedit.loopback import apply_loopback_env
from cocoedit.ray_auth import enable_run_token

log = logging.getLogger(__name__)


def _node_args(gpus: int, cpus: int, object_store_mb: int) -> dict[str, Any]:
    return {
        "num_cpus": cpus,
        "num_gpus": gpus,
        "object_store_memory": object_store_mb * 2**20,
        "node_ip_address": "127.0.0.1",
        "include_dashboard": False,
    }


@contextlib.contextmanager
def local_cluster(
    nodes: int,
    gpus_per_node: int,
    cpus_per_node: int,
    object_store_mb: int = 1024,
    head_cpus: Optional[int] = None,
) -> Iterator[Any]:
    """Start `nodes` raylets (the first is the head), connect this process, yield the
    ray.cluster_utils.Cluster; shut everything down on exit. head_cpus=0 (with gpus_per_node=0): a head
    node that hosts no actor, only the driver, as a cluster's login node."""
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process: a simulation starts its own cluster")
    apply_loopback_env()
    enable_run_token()
    # Ray starts one idle worker process per logical CPU of each node for the first driver: dozens of
    # processes on a machine of 2 cores that the run's actors never use
    os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
    from ray._common.utils import get_ray_address_file
    from ray.cluster_utils import Cluster

    address_file = Path(get_ray_address_file(None))
    before = address_file.read_text() if address_file.is_file() else None
    node = _node_args(gpus_per_node, cpus_per_node, object_store_mb)
    head = dict(node) if head_cpus is None else {**node, "num_cpus": head_cpus}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        if before is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_text(before)
        for _ in range(nodes - 1):
            cluster.add_node(**node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=True, logging_level=logging.WARNING)
        log.info(
            "local simulated cluster: %d nodes x %d GPUs (simulated), %d logical CPUs",
            nodes,
            gpus_per_node,
            cpus_per_node,
        )
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()

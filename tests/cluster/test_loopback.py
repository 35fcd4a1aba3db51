"""`cocoedit train`'s own local Ray cluster listens on 127.0.0.1 only, even though the driver imports
Ray before it decides to start one (Ray reads its binding switch at import)."""

import json
import os
import subprocess
import sys

from cocoedit.loopback import LOOPBACK_ENV

SCRIPT = """
import json, time
import psutil, ray                                   # imported first, as the train driver does
from cocoedit.cluster.config import RunConfig
from cocoedit.cluster.runtime.launch import init_ray

init_ray(RunConfig(ray_num_cpus=1))
ray.get(ray.remote(lambda: 1).remote())              # a worker process too
time.sleep(1)
tree = [psutil.Process()] + psutil.Process().children(recursive=True)
addrs = sorted({c.laddr.ip for p in tree for c in p.net_connections("tcp") if c.status == "LISTEN"})
print(json.dumps(addrs))
ray.shutdown()
"""


def test_local_cluster_of_the_train_driver_binds_loopback_only() -> None:
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV and k != "RAY_ADDRESS"}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=180, check=True
    ).stdout
    addrs = json.loads(out.strip().splitlines()[-1])
    assert addrs, "found no listening sockets: the check would prove nothing"
    assert all(a in ("127.0.0.1", "::ffff:127.0.0.1") for a in addrs), addrs

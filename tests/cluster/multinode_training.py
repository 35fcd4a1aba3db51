"""Node loss in a SIMULATED training run (cocoedit simulate's parts: the `sim` editor and judge hold their
calls, the pixel service is real) on a local multi-node Ray cluster, run by tests/cluster/test_node_loss.py
in a process of its own.

    python -m tests.cluster.multinode_training WORK_DIR OUT.json

The cluster: a head node that hosts only the driver, and one node per role, shaped so that only that
role fits on it (Ray counts the simulated GPUs): L (the learner rank: 1 GPU, 3 CPUs), R (2 rollout
workers: 2 GPUs, 2 CPUs), S (the simulated judge's and the pixel service's replicas: 1 GPU, 2 CPUs).
After epoch 0 a spare node joins (3 GPUs, 4 CPUs) and R is removed while epoch 1's batch samples;
after epoch 1, S is removed before epoch 2 scores. (The sim editor writes no checkpoint: the learner's
node is lost in a real tiny run, tests/cluster/multinode_learner.py.) OUT.json gets the placement, the
wall time of every epoch and of each removal, the rows of metrics.jsonl and the replicas and workers Ray
holds alive.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from cocoedit.cluster.config import CONFIG_DIR, Config, load_config
from cocoedit.cluster.simulate.cluster import local_cluster
from cocoedit.cluster.simulate.measure import placement
from cocoedit.cluster.simulate.model import SimSettings, simulated_config
from cocoedit.cluster.train.loop import run_epochs, start_run

EPOCHS = 4
TIME_SCALE = 50.0
# node shapes: (GPUs, CPUs); each role fits only its own
LEARNER_NODE, ROLLOUT_NODE, SERVICES_NODE, SPARE_NODE = (1, 3), (2, 2), (1, 2), (3, 4)


def simulated(work: Path) -> Config:
    """The shipped FLUX config, small: 2 items x 4 edits at 128 px, 2 rollout workers, 1 learner rank,
    one replica of the simulated judge and one of pixel."""
    base = load_config(
        CONFIG_DIR / "flux_kontext_8gpu.yaml",
        [
            "data.image_size=128",
            "data.n_items=2",
            "data.group_size=4",
            "rollout.num_workers=2",
            "rollout.batch_size=4",
            "rollout.cpus_per_worker=1",
            "learner.world_size=1",
            "learner.micro_batch_size=4",
            "learner.cpus_per_rank=3",
            "rewards.pixel.scaling.replicas=1",
            "rewards.pixel.scaling.cpus_per_replica=1",
            "rewards.mllm.scaling.gpus_per_replica=1",
            "rewards.mllm.scaling.cpus_per_replica=1",
            "rewards.mllm.tensor_parallel_size=1",
            "rewards.client.timeout_s=20",
        ],
    )
    sim = simulated_config(base, SimSettings(time_scale=TIME_SCALE, count_lora=False), work)
    run = dataclasses.replace(sim.cfg.run, epochs=EPOCHS, check_resources=False)
    return dataclasses.replace(sim.cfg, run=run)


def _add(cluster: Any, shape: tuple[int, int]) -> Any:
    node = cluster.add_node(
        num_gpus=shape[0],
        num_cpus=shape[1],
        node_ip_address="127.0.0.1",
        include_dashboard=False,
        object_store_memory=512 * 2**20,
    )
    cluster.wait_for_nodes()
    return node


def alive(class_name: str) -> int:
    from ray._private.state import actors

    return sum(
        1
        for a in actors().values()
        if a["ActorClassName"].rsplit(".", 1)[-1] == class_name and a["State"] != "DEAD"
    )


def _placement_once_up(run: Any, timeout_s: float = 120.0) -> dict[str, list[str]]:
    """Where every actor is, asked again while one is still restarting (a replica of the lost services
    node can be between processes when epoch 2 ends: the run does not wait for it, this probe must)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return placement(run)
        except ray.exceptions.ActorUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def node_loss(work: Path) -> dict[str, Any]:
    cfg = simulated(work)
    out: dict[str, Any] = {"epochs": EPOCHS, "edits_per_epoch": cfg.data.n_items * cfg.data.group_size}
    ends: dict[int, float] = {}
    removed_at: dict[str, float] = {}
    with local_cluster(
        nodes=1, gpus_per_node=0, cpus_per_node=0, head_cpus=0, object_store_mb=512
    ) as cluster:
        nodes = {
            "learner": _add(cluster, LEARNER_NODE),
            "rollout": _add(cluster, ROLLOUT_NODE),
            "services": _add(cluster, SERVICES_NODE),
        }
        out["nodes"] = {role: n.node_id for role, n in nodes.items()}
        t0 = time.monotonic()
        with start_run(cfg) as run:
            out["start_s"] = time.monotonic() - t0
            out["placement"] = placement(run)
            for epoch, _ in run_epochs(run):  # the next epoch's batch samples while the body runs
                ends[epoch] = time.monotonic()
                if epoch == 0:
                    _add(cluster, SPARE_NODE)
                    removed_at["rollout"] = time.monotonic()
                    cluster.remove_node(nodes["rollout"], allow_graceful=False)
                elif epoch == 1:
                    removed_at["services"] = time.monotonic()
                    cluster.remove_node(nodes["services"], allow_graceful=False)
                elif epoch == 2:
                    out["placement_after"] = _placement_once_up(run)
                    out["alive_after"] = {
                        "rollout workers": alive("RolloutActor"),
                        "reward replicas": alive("RewardReplica"),
                    }
                    out["replicas"] = {n: len(run.services.addresses(n)) for n in run.services.clients}
    out["epoch_end_s"] = {str(e): ends[e] - t0 for e in sorted(ends)}
    out["removed_at_s"] = {k: v - t0 for k, v in removed_at.items()}
    run_dir = Path(cfg.run.run_dir)
    out["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return out


def main(argv: list[str]) -> int:
    work, out = Path(argv[0]), Path(argv[1])
    out.write_text(json.dumps(node_loss(work), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

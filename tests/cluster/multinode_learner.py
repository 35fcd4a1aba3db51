"""The learner's node lost, then crashes, in a real tiny run (tests/cluster/test_train.py's TINY) on a local
multi-node Ray cluster, run by tests/cluster/test_node_loss.py in a process of its own.

    python -m tests.cluster.multinode_learner WORK_DIR OUT.json

The cluster: a head node that hosts only the driver; node L (1 simulated GPU, 1 CPU) that only the
learner rank fits (it asks for the GPU: Ray counts it, the rank computes on the CPU); node W (2 CPUs)
for the rollout worker and the reward replicas. 5 epochs, a checkpoint after each:
1. after epoch 1, L is removed: epoch 2 stops with LearnerFailure (one line naming the checkpoint);
2. a new learner node joins; resumed from the checkpoint, after epoch 2 the rollout worker's process
   is SIGKILLed (epoch 3's batch sampling or sampled: a tiny batch takes ~0.3 s), and the learner rank's
   process is SIGKILLed while it writes epoch 3's checkpoint (its temporary directory exists):
   LearnerFailure again;
3. resumed again, the run ends. OUT.json gets the errors, timings, metrics.jsonl and checkpoints.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray

from cocoedit.cluster.config import Config, load_config
from cocoedit.cluster.simulate.cluster import local_cluster
from cocoedit.cluster.train.loop import LearnerFailure, run_epochs, start_run
from cocoedit.learner.checkpoint import complete_checkpoints
from cocoedit.learner.export import LORA_DIR, LORA_WEIGHT_NAME
from tests.cluster.test_train import TINY

EPOCHS = 5
LEARNER_NODE = {"num_gpus": 1, "num_cpus": 1}


def tiny(run_dir: Path) -> Config:
    return load_config(
        None,
        [
            *TINY,
            f"run.epochs={EPOCHS}",
            "run.checkpoint_every=1",
            "run.eval_every=0",
            "run.image_every=0",
            "run.check_resources=false",
            "learner.gpus_per_rank=1",
            "learner.cpus_per_rank=1",
            f"run.run_dir={run_dir}",
        ],
    )


def _add(cluster: Any, **shape: Any) -> Any:
    node = cluster.add_node(
        node_ip_address="127.0.0.1", include_dashboard=False, object_store_memory=512 * 2**20, **shape
    )
    cluster.wait_for_nodes()
    return node


def _pid(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


class KillDuringSave:
    """SIGKILLs `pid` as soon as a checkpoint's temporary directory appears under run_dir."""

    def __init__(self, run_dir: Path, pid: int) -> None:
        self.killed_in: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(run_dir / "checkpoints", pid), daemon=True)
        self._thread.start()

    def _watch(self, folder: Path, pid: int) -> None:
        while not self._stop.is_set():
            tmp = [p.name for p in folder.glob(".tmp_*")] if folder.is_dir() else []
            if tmp:
                os.kill(pid, signal.SIGKILL)
                self.killed_in = tmp
                return
            time.sleep(0.001)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def learner_lost(work: Path) -> dict[str, Any]:
    run_dir = work / "run"
    cfg = tiny(run_dir)
    out: dict[str, Any] = {"epochs": EPOCHS, "edits_per_epoch": cfg.data.n_items * cfg.data.group_size}
    ends: dict[str, list[int]] = {"first": [], "second": [], "third": []}
    with local_cluster(
        nodes=1, gpus_per_node=0, cpus_per_node=0, head_cpus=0, object_store_mb=512
    ) as cluster:
        learner_node = _add(cluster, **LEARNER_NODE)
        _add(cluster, num_gpus=0, num_cpus=2)
        t0 = time.monotonic()
        try:
            with start_run(cfg) as run:
                out["first_start_s"] = time.monotonic() - t0
                out["learner_node_ok"] = (
                    ray.get(
                        run.learner.ranks[0].__ray_call__.remote(
                            lambda self: ray.get_runtime_context().get_node_id()
                        )
                    )
                    == learner_node.node_id
                )
                for epoch, _ in run_epochs(run):
                    ends["first"].append(epoch)
                    if epoch == 1:
                        removed = time.monotonic()
                        cluster.remove_node(learner_node, allow_graceful=False)
        except LearnerFailure as e:
            out["node_error"] = str(e)
            out["node_error_after_s"] = time.monotonic() - removed
        _add(cluster, **LEARNER_NODE)
        watcher = None
        try:
            t0 = time.monotonic()
            with start_run(cfg, resume=True) as run:
                out["second_start"] = run.start
                out["second_start_s"] = time.monotonic() - t0
                for epoch, _ in run_epochs(run):
                    ends["second"].append(epoch)
                    if epoch == 2:
                        os.kill(_pid(run.rollout.workers[0]), signal.SIGKILL)  # Ray restarts it
                        watcher = KillDuringSave(run_dir, _pid(run.learner.ranks[0]))
                        killed = time.monotonic()
        except LearnerFailure as e:
            out["save_error"] = str(e)
            out["save_error_after_s"] = time.monotonic() - killed
        assert watcher is not None
        watcher.stop()
        out["killed_in"] = watcher.killed_in
        out["after_kill_checkpoints"] = [p.name for p in complete_checkpoints(run_dir)]
        t0 = time.monotonic()
        with start_run(cfg, resume=True) as run:
            out["third_start"] = run.start
            out["resume_start_s"] = time.monotonic() - t0
            for epoch, _ in run_epochs(run):
                ends["third"].append(epoch)
    out["ends"] = ends
    out["metrics"] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out["final_lora"] = (run_dir / LORA_DIR / LORA_WEIGHT_NAME).is_file()
    out["checkpoints"] = [p.name for p in complete_checkpoints(run_dir)]
    out["leftover_tmp"] = [p.name for p in (run_dir / "checkpoints").glob(".tmp_*")]
    return out


def main(argv: list[str]) -> int:
    work, out = Path(argv[0]), Path(argv[1])
    out.write_text(json.dumps(learner_lost(work), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

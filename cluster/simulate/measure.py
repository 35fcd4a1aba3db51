"""What a simulated run measures around the real driver, through the loop's public seam (`run`):
bytes into and out of the driver and over gRPC, the driver's CPU seconds and RSS, the seconds the
simulated actors held their (simulated) GPUs, and the node each actor was placed on.

Counters wrap methods of the run's own objects (the rollout group's `gather`, the learner group's
`update`): they count what passes and call the original. Bytes into the driver are the pickled
size of what it receives (a ScoredBatch: ids, outcomes, one 28-byte ObjectRef id per reference),
out of it the tensors and references it sends to the learner ranks; gRPC bytes are the protobuf
bytes of the edits the rollout workers sent to every service (they score their own groups).
"""

from __future__ import annotations

import pickle
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from cocoedit.actors.types import Condition, RolloutBatch
from cocoedit.cluster.train.scored import ScoredBatch, without_refs

REF_BYTES = 28  # an ObjectRef's id
# the images each service reads (the information it needs; the instruction and ids are small)
READS = {
    "pixel": ("source", "edited", "mask"),
    "sim_judge": ("source", "edited"),
    "mllm": ("source", "edited"),
    "synthetic": ("edited", "target", "mask"),
}
PNGS = ("edited", "source", "mask", "target")


def tensor_bytes(value: Any) -> int:
    """Bytes of every tensor in a RolloutBatch / Condition / dict / list (what pickling moves, roughly)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Condition):
        return tensor_bytes(value.tensors)
    if isinstance(value, RolloutBatch):
        return sum(tensor_bytes(getattr(value, f)) for f in value.__dataclass_fields__)
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MB (Linux /proc)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


class Meter:
    """Counters over one simulated run; `snapshot()` returns their totals so far."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.counts = {
            "driver_in_bytes": 0,
            "driver_out_bytes": 0,
            "grpc_bytes": 0,
            "needed_bytes": 0,
            "batches": 0,
        }
        self._wrap(run.rollout, "gather", self._gathered)
        self._wrap(run.learner, "update", self._updating)

    @staticmethod
    def _wrap(obj: Any, name: str, hook: Callable[..., Any]) -> None:
        original = getattr(obj, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            return hook(original, *args, **kwargs)

        setattr(obj, name, wrapped)

    def _gathered(self, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        batch: ScoredBatch = original(*args, **kwargs)
        refs = sum(1 + (p.pixels is not None) for p in batch.parts)
        self.counts["driver_in_bytes"] += len(pickle.dumps(without_refs(batch))) + REF_BYTES * refs
        self.counts["grpc_bytes"] += sum(batch.wire_bytes.values())
        # each image once, to each service that reads it: what the wire bytes compare with
        reads = [READS.get(name, PNGS) for name in batch.wire_bytes]
        self.counts["needed_bytes"] += sum(batch.png_bytes.get(k, 0) for r in reads for k in r)
        self.counts["batches"] += 1
        return batch

    def _updating(self, original: Callable[..., Any], batch: ScoredBatch, *args: Any) -> Any:
        # advantages, valid, and per rank the (reference, first, end) of each worker's part it reads
        self.counts["driver_out_bytes"] += tensor_bytes(list(args)) + (REF_BYTES + 16) * len(batch.parts)
        return original(batch, *args)

    def snapshot(self) -> dict[str, float]:
        cpu = resource.getrusage(resource.RUSAGE_SELF)
        rss, peak = rss_mb()
        return {
            **{k: float(v) for k, v in self.counts.items()},
            "driver_cpu_s": cpu.ru_utime + cpu.ru_stime,
            "driver_rss_mb": rss,
            "driver_peak_rss_mb": peak,
            "wall_s": time.perf_counter(),
            "held/learner": learner_held(self.run),
        }


def _policy_held(worker: Any) -> dict[str, float]:
    return dict(worker.policy.held)


def _learner_held(rank: Any) -> dict[str, float]:
    return dict(rank.learner.policy.held)


def _node(actor: Any) -> str:
    return ray.get_runtime_context().get_node_id()


def learner_held(run: Any) -> float:
    """Simulated GPU seconds the learner ranks held so far, summed (wall seconds). Read between
    epochs, when no update is in flight."""
    return sum(
        sum(h.values()) for h in ray.get([r.__ray_call__.remote(_learner_held) for r in run.learner.ranks])
    )


def rollout_held(run: Any) -> float:
    """Simulated GPU seconds the rollout workers held so far, summed. Read it only when no sample is
    in flight (after the last epoch): an actor runs calls in order, so between epochs the call would
    wait for the next batch's sampling and shift it into the wrong epoch."""
    return sum(
        sum(h.values()) for h in ray.get([w.__ray_call__.remote(_policy_held) for w in run.rollout.workers])
    )


def placement(run: Any) -> dict[str, list[str]]:
    """Node id of every rollout worker, learner rank and reward replica, by role."""
    out = {
        "rollout workers": ray.get([w.__ray_call__.remote(_node) for w in run.rollout.workers]),
        "learner ranks": ray.get([r.__ray_call__.remote(_node) for r in run.learner.ranks]),
    }
    for name, replicas in run.services.replicas.items():
        out[f"reward service {name}"] = ray.get([r.__ray_call__.remote(_node) for r in replicas])
    return out

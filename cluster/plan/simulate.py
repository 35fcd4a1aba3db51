"""Simulation on PyTorch's meta device: a computation runs on shapes only (no arithmetic) while every
tensor an operation creates is counted for as long as it is alive (`simulated_peak`); attention is
counted as a memory-efficient kernel holds it. Results are kept per question (`once`), in this process
and on disk under $COCOEDIT_CACHE/plan, since a simulation takes seconds and every run prints a plan.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any


class _LiveBytes:
    """Counts the bytes of tensor storages created by operations while they are alive; `peak` is the
    largest sum seen. Views and in-place results (storage of an input) are not new memory."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                tracker.sweep()
                out = func(*args, **(kwargs or {}))
                tracker._record(args, kwargs, out)
                return out

        self.mode = Mode()
        self.live: dict[Any, int] = {}
        self.current = 0
        self.peak = 0

    def sweep(self) -> None:
        """Forget storages that died since the last operation (before its outputs are recorded, so a
        new storage at a reused address is never mistaken for the dead one)."""
        dead = [key for key in self.live if key.expired()]
        for key in dead:
            self.current -= self.live.pop(key)

    def _record(self, args: Any, kwargs: Any, out: Any) -> None:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        inputs = {
            StorageWeakRef(t.untyped_storage())
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = StorageWeakRef(t.untyped_storage())
                if key not in self.live and key not in inputs:
                    n = t.untyped_storage().nbytes()
                    self.live[key] = n
                    self.current += n
        self.peak = max(self.peak, self.current)


@contextlib.contextmanager
def memory_efficient_attention() -> Iterator[None]:
    """scaled_dot_product_attention as a memory-efficient kernel holds it: the output, and for
    backward q, k, v, output and the float32 log-sum-exp [B, heads, Lq]; no [Lq, Lk] score matrix."""
    import torch
    import torch.nn.functional as F

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def attention(query, key, value, *args, **kwargs):
        return Attention.apply(query, key, value)

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def simulated_peak(step: Callable[[], Any]) -> int:
    """Peak bytes of the tensors `step()` creates (run on meta tensors: shapes only)."""
    tracker = _LiveBytes()
    with memory_efficient_attention(), tracker.mode:
        step()
    return tracker.peak


SIMULATOR_VERSION = 3  # bump when what a simulation counts changes: cached results are then recomputed
_SIMULATED: dict[str, float] = {}


def once(key: Any, simulate: Callable[[], float]) -> float:
    """simulate() once per question and library versions: kept in this process and on disk under
    $COCOEDIT_CACHE/plan (a simulation takes seconds; every run prints a plan)."""
    import hashlib

    import diffusers
    import torch

    from cocoedit.cluster.runtime.launch import cache_dir

    text = json.dumps(
        [SIMULATOR_VERSION, torch.__version__, diffusers.__version__, key], sort_keys=True, default=str
    )
    if text not in _SIMULATED:
        path = cache_dir() / "plan" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"
        if path.is_file():
            _SIMULATED[text] = float(json.loads(path.read_text())["value"])
        else:
            _SIMULATED[text] = float(simulate())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": json.loads(text), "value": _SIMULATED[text]}))
            tmp.replace(path)  # atomic: concurrent runs never read half a file
    return _SIMULATED[text]

"""Deadlines for the loop's remote calls, from the stage times measured so far: a hung actor is noticed.

    deadlines = Deadlines.of(cfg.run)   # run.deadline_* (cluster/train/config.py)
    shards = deadlines.get(refs, "sample", ["rollout worker 0", "rollout worker 1"])
    deadlines.started([w.__ray_ready__.remote() for w in workers], names, "start", started, fix)

A call of stage S fails with `Hung` (naming the actors that did not answer) once it has waited
max(min_s, factor x the slowest S measured so far); before S was measured once (the first epoch,
which also loads models and compiles) the deadline is first_s. A stopped (SIGSTOP), deadlocked or
swapped-out actor answers nothing and raises nothing: without a deadline the driver waits forever.
What to do with a hung actor is the caller's choice: a rollout worker is killed and its shard sampled
again, a hung learner rank stops the run with the checkpoint to resume from (cluster/train/learners.py).

Starting has its own deadline, start_s (run.deadline_start_s), counted from when a role's actors were
created: their constructors (loading the editor), the learner's DeepSpeed set-up and rendezvous, and
`--resume`'s checkpoint load. Nothing was measured yet then, and nothing can be redone: `started`
raises NotStarted, one line naming who did not start and what to change, and the run stops.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Optional

import ray


class Hung(TimeoutError):
    """Actors that did not answer a call within its deadline; `names` says which."""

    def __init__(self, message: str, names: list[str]) -> None:
        super().__init__(message)
        self.names = names

    def __reduce__(self) -> tuple[Any, tuple[str, list[str]]]:
        # copied and pickled whole: Ray Tune copies a trial's error (copy.copy) and Ray pickles it, both
        # through args, which lack `names`; without this a sweep's NotStarted became a TypeError
        return type(self), (str(self), self.names)


class NotStarted(Hung):
    """Actors that did not finish starting (or loading a checkpoint) within run.deadline_start_s."""


class Deadlines:
    """Per-stage deadlines (seconds) from the slowest measured time of each stage; `get` applies them."""

    def __init__(
        self, factor: float = 5.0, min_s: float = 60.0, first_s: float = 3600.0, start_s: float = 1800.0
    ) -> None:
        if factor < 1 or min_s <= 0 or first_s < min_s or start_s <= 0:
            raise ValueError(
                f"deadlines factor={factor} min_s={min_s} first_s={first_s} start_s={start_s}: need factor >= 1, "
                "min_s > 0, first_s >= min_s and start_s > 0 (run.deadline_factor, run.deadline_min_s, "
                "run.deadline_first_s, run.deadline_start_s)"
            )
        self.factor, self.min_s, self.first_s, self.start_s = factor, min_s, first_s, start_s
        self.slowest: dict[str, float] = {}  # stage -> slowest measured seconds

    @classmethod
    def of(cls, run: Any) -> Deadlines:
        """The deadlines of run section `run` (cluster/train/config.py RunConfig: run.deadline_*)."""
        return cls(run.deadline_factor, run.deadline_min_s, run.deadline_first_s, run.deadline_start_s)

    def timeout_s(self, stage: str) -> float:
        slowest = self.slowest.get(stage)
        return self.first_s if slowest is None else max(self.min_s, self.factor * slowest)

    def record(self, stage: str, seconds: float) -> None:
        self.slowest[stage] = max(seconds, self.slowest.get(stage, 0.0))

    def get(self, refs: Any, stage: str, names: Sequence[str], started: Optional[float] = None) -> Any:
        """ray.get(refs) (one ObjectRef or a list) within `stage`'s deadline, counted from `started`
        (time.monotonic(); default now); records the time taken. names[i]: who computes refs[i]. A
        failed call raises as ray.get does; one that has not answered in time raises Hung."""
        single = not isinstance(refs, list)
        pending_refs = [refs] if single else list(refs)
        t0 = time.monotonic() if started is None else started
        timeout = self.timeout_s(stage)
        _, pending = ray.wait(
            pending_refs, num_returns=len(pending_refs), timeout=max(0.0, t0 + timeout - time.monotonic())
        )
        if pending:
            late = set(pending)
            hung = [names[i] for i, r in enumerate(pending_refs) if r in late]
            slowest = self.slowest.get(stage)
            why = (
                f"run.deadline_factor={self.factor:g} x the slowest {stage} so far ({slowest:.1f} s), at least "
                f"run.deadline_min_s={self.min_s:g}"
                if slowest is not None
                else f"run.deadline_first_s={self.first_s:g}: {stage} was not measured yet"
            )
            raise Hung(f"{', '.join(hung)} did not answer {stage} within {timeout:.1f} s ({why})", hung)
        values = ray.get(pending_refs)
        self.record(stage, time.monotonic() - t0)
        return values[0] if single else values

    def started(
        self, refs: list[Any], names: Sequence[str], what: str, started: float, fix: str = ""
    ) -> list[Any]:
        """ray.get(refs) within start_s of `started` (time.monotonic() when the actors were created);
        names[i]: who computes refs[i], `what` they were doing ("start", "load checkpoint X"). Raises
        NotStarted naming the late ones, with the cluster's free resources and `fix` (what to check)."""
        _, pending = ray.wait(
            refs, num_returns=len(refs), timeout=max(0.0, started + self.start_s - time.monotonic())
        )
        if pending:
            late = set(pending)
            hung = [names[i] for i, r in enumerate(refs) if r in late]
            free = {k: round(v, 3) for k, v in ray.available_resources().items() if k in ("CPU", "GPU")}
            raise NotStarted(
                f"{', '.join(hung)} did not {what} within run.deadline_start_s={self.start_s:g} s (stopped, "
                f"deadlocked, waiting for resources or still loading; the cluster has {free} free): "
                f"{fix + '; ' if fix else ''}see its log (Ray dashboard, /tmp/ray/session_latest/logs), and "
                f"raise run.deadline_start_s if loading is only slow",
                hung,
            )
        return ray.get(refs)

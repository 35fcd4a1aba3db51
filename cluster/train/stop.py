"""A clean stop on SIGTERM (`kill -TERM`, `ray job stop`, a scheduler's preemption notice).

The first SIGTERM lets the epoch under way finish (its row logged, its update kept), then a checkpoint
of it is written, the trackers' run ends KILLED, every part (services, actors, Ray) is closed, and
`cocoedit train` exits with `EXIT_CODE` (143, what a shell reports for a process ended by SIGTERM)
after one line naming the checkpoint to resume from. A SIGTERM that arrives while the run starts stops
it before its first epoch. A second SIGTERM abandons the epoch under way at once: the last checkpoint
stands, and `--resume` redoes the epochs after it (metrics.jsonl keeps each epoch once either way).

`ray job stop` sends SIGKILL RAY_JOB_STOP_WAIT_TIME_S (Ray's default: 3 s) after SIGTERM: give the
job supervisor an epoch plus a checkpoint write (docs/faults.md).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, Optional

log = logging.getLogger("cocoedit.train")

EXIT_CODE = 128 + signal.SIGTERM  # 143


class Stopped(Exception):
    """The run stopped on SIGTERM; the message says what was saved and how to resume."""


class StopSignal:
    """Catches SIGTERM while installed (main thread only); the loop asks `requested` between epochs."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self._previous: Any = None
        self._installed = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """Take over SIGTERM (after ray.init, which sets its own handler); a no-op off the main thread."""
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
            self._installed = True

    def restore(self) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous)
            self._installed = False

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is not None:
            raise Stopped(
                "stopped by a second SIGTERM in the middle of an epoch: the epochs after the last checkpoint "
                "are redone by `cocoedit train --resume`"
            )
        self.signum = signum
        log.warning(
            "SIGTERM: finishing the epoch under way, then a checkpoint and a clean stop (a second SIGTERM "
            "stops at once)"
        )

    def before_epoch(
        self, epoch: int, first: int, saved_epoch: Optional[int], save: Callable[[int], Path], run_dir: str
    ) -> None:
        """At the start of `epoch`: when SIGTERM came, save the epochs done since the last checkpoint
        (`save(epoch - 1)` returns the checkpoint) and raise Stopped. `first`: this process's first epoch."""
        if not self.requested:
            return
        resume = (
            f"resume with `cocoedit train --resume` and the same config and overrides (run.run_dir={run_dir})"
        )
        if epoch == first:
            then = resume if saved_epoch is not None else "start it again with --overwrite"
            raise Stopped(
                f"stopped by SIGTERM before epoch {epoch}: nothing was trained in this invocation; {then}"
            )
        path = save(epoch - 1) if saved_epoch != epoch - 1 else None
        where = f"checkpoint {path} written" if path is not None else "its checkpoint was already written"
        raise Stopped(f"stopped by SIGTERM after epoch {epoch - 1}: {where}; {resume}")


def run_status(exc: Optional[BaseException]) -> str:
    """The trackers' final status of a run that ended with `exc` (MLflow's names)."""
    if exc is None:
        return "FINISHED"
    return "KILLED" if isinstance(exc, (Stopped, KeyboardInterrupt)) else "FAILED"

"""Starting has a deadline (run.deadline_start_s, rewards.client.ready_timeout_s): a learner rank
SIGSTOPped while it starts, a learner rank stopped before `--resume`'s checkpoint load, and a reward
replica the cluster can never place each end the start with one line naming them, instead of a silent
wait. Real actors of the sim editor (no weights) on the suite's Ray; ~20-40 s on a loaded 2-core machine.
On the code before this change each of them waited forever (the tests' threads were still waiting)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from cocoedit.actors.config import PolicyConfig
from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.deadlines import Deadlines, NotStarted
from cocoedit.cluster.runtime.placement import Placement
from cocoedit.cluster.runtime.services import RewardServices
from cocoedit.cluster.train.groups import RolloutGroup
from cocoedit.cluster.train.learners import LearnerGroup
from cocoedit.rewards.client import RewardServiceError
from tests.cluster.test_simulate import SPEC

START_S = 8.0


def _in_thread(fn: Any, wait_s: float) -> tuple[float, BaseException | None]:
    """Run fn() in a thread for at most wait_s; (seconds it took, what it raised). A thread still
    running after wait_s fails the test: the start had no deadline."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed to the test
            out["error"] = e

    t0 = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(wait_s)
    assert not thread.is_alive(), f"still waiting after {wait_s:.0f} s: nothing ended the start"
    return time.monotonic() - t0, out.get("error")


def _stop_when_started(title: str, before: set[int], within_s: float = 120.0) -> psutil.Process:
    """SIGSTOP the first new process whose title starts with `title` (a Ray actor of that class)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        for p in psutil.process_iter(["pid", "cmdline"]):
            cmd = p.info["cmdline"] or []
            if p.info["pid"] not in before and cmd and cmd[0].startswith(title):
                p.send_signal(signal.SIGSTOP)
                return p
        time.sleep(0.01)
    raise AssertionError(f"no {title} process started within {within_s:g} s")


def _pids(title: str) -> set[int]:
    return {
        p.pid for p in psutil.process_iter(["cmdline"]) if (p.info["cmdline"] or [""])[0].startswith(title)
    }


@pytest.fixture()
def sim_learner(ray_local, tmp_path: Path) -> tuple[PolicyConfig, Any, Placement]:  # noqa: ANN001
    cfg = load_config(None, ["run.pin_cpus=false"])
    policy = PolicyConfig(family="sim", model_path=str(SPEC.write(tmp_path / "sim")), dtype="float32")
    placement = Placement(cfg)
    yield policy, cfg, placement
    placement.close()


def test_a_learner_rank_stopped_while_starting_fails_the_start(sim_learner) -> None:  # noqa: ANN001
    policy, cfg, placement = sim_learner
    before = _pids("ray::LearnerRank")
    deadlines = Deadlines(factor=2.0, min_s=1.0, first_s=30.0, start_s=START_S)
    t0 = time.monotonic()
    thread_result: dict[str, Any] = {}

    def start() -> None:
        thread_result["took"], thread_result["error"] = _in_thread(
            lambda: LearnerGroup(policy, cfg.learner, placement, deadlines), START_S + 60
        )

    starter = threading.Thread(target=start)
    starter.start()
    stopped = _stop_when_started("ray::LearnerRank", before)  # before its DeepSpeed set-up is done
    try:
        starter.join()
        error = thread_result["error"]
        assert isinstance(error, NotStarted), error
        message = str(error)
        assert message.startswith("learner rank 0 did not ") and "\n" not in message
        assert "run.deadline_start_s=8 s" in message
        assert error.names == ["learner rank 0"]
        assert time.monotonic() - t0 < START_S + 30  # the deadline ended it, not the rank
        print(f"stopped learner rank reported {time.monotonic() - t0:.1f} s after the start: {message}")
    finally:
        if stopped.is_running():
            stopped.send_signal(signal.SIGCONT)
    psutil.wait_procs([stopped], timeout=30)  # killed by the group: none is left stopped
    assert not stopped.is_running() or stopped.status() == psutil.STATUS_ZOMBIE


def test_a_learner_rank_stopped_before_the_checkpoint_load_fails_the_resume(sim_learner) -> None:  # noqa: ANN001
    policy, cfg, placement = sim_learner
    deadlines = Deadlines(factor=2.0, min_s=1.0, first_s=30.0, start_s=600.0)  # DeepSpeed's first build
    group = LearnerGroup(policy, cfg.learner, placement, deadlines)
    deadlines.start_s = START_S
    pid = ray.get(group.ranks[0].__ray_call__.remote(lambda self: os.getpid()))
    os.kill(pid, signal.SIGSTOP)
    try:
        took, error = _in_thread(lambda: group.load("/checkpoints/step_00000003"), START_S + 60)
        assert isinstance(error, NotStarted), error
        assert str(error).startswith(
            "learner rank 0 did not load checkpoint /checkpoints/step_00000003 within run.deadline_start_s=8 s"
        )
        assert START_S - 1 < took < START_S + 30
    finally:
        os.kill(pid, signal.SIGCONT)
        group.close()


def test_a_reward_replica_that_cannot_be_placed_fails_the_start(ray_local) -> None:  # noqa: ANN001
    cfg = load_config(
        None,
        [
            "rewards.weights={pixel: 1.0}",
            "rewards.pixel.scaling.cpus_per_replica=64",  # more than the suite's 2-CPU cluster has
            "rewards.client.ready_timeout_s=3",
        ],
    )
    took, error = _in_thread(lambda: RewardServices(cfg.rewards), 60)
    assert isinstance(error, RewardServiceError), error
    message = str(error)
    assert message.startswith(
        "reward service 'pixel': replica 0 of 1 did not start within rewards.client.ready_timeout_s=3 s "
        "(each asks 64 CPU, 0 GPU;"
    )
    assert "rewards.pixel.scaling" in message and "\n" not in message
    assert 2 < took < 30


def test_a_rollout_worker_stopped_while_restarting_fails_within_the_start_deadline(sim_learner) -> None:  # noqa: ANN001
    """A worker Ray restarts loads the editor again, which on a cluster takes minutes: the wait for it
    is run.deadline_start_s (it was a fixed 120 s, then a raw GetTimeoutError), and a restart that does
    not finish ends with NotStarted's one line. Here the restarted process is SIGSTOPped."""
    policy, cfg, placement = sim_learner
    deadlines = Deadlines(factor=2.0, min_s=1.0, first_s=30.0, start_s=600.0)
    group = RolloutGroup(policy, cfg.rollout, placement, deadlines)
    stopped = None
    try:
        group.wait_started()
        deadlines.start_s = START_S
        pid = ray.get(group.workers[0].__ray_call__.remote(lambda self: os.getpid()))
        before = _pids("ray::RolloutActor")
        os.kill(pid, signal.SIGKILL)
        result: dict[str, Any] = {}

        def restart() -> None:
            result["took"], result["error"] = _in_thread(lambda: group._wait_restarted(0), 150)

        waiter = threading.Thread(target=restart)
        waiter.start()
        stopped = _stop_when_started("ray::RolloutActor", before)  # the restarted worker, before it is ready
        waiter.join()
        error = result["error"]
        assert isinstance(error, NotStarted), error
        assert str(error).startswith(
            "rollout worker 0 did not restart (load the editor) within run.deadline_start_s=8 s"
        )
        assert error.names == ["rollout worker 0"] and "\n" not in str(error)
        assert result["took"] < START_S + 30  # the deadline ended it; before, the wait was 120 s
    finally:
        if stopped is not None and stopped.is_running():
            stopped.send_signal(signal.SIGCONT)
        group.close()

"""Hangs are noticed: a stopped (SIGSTOP) rollout worker, reward replica or learner rank in a real tiny
run. The worker and the replica are replaced and their work redone once (every epoch logged once, every
edit handed to the learner once, the final LoRA written); a stopped learner rank stops the run with one
line naming the checkpoint to resume from. Each prints its time to recover. The first test is the fast
one (Deadlines on a real actor, ~5 s); the chaos tests are slow: ~1-2 min each alone with the tiny editor
built, ~5 min on a loaded 2-core machine: `pytest -m slow tests/cluster/test_hangs.py`."""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.deadlines import Deadlines, Hung
from cocoedit.cluster.train.loop import LearnerFailure, run_epochs, start_run
from cocoedit.learner.checkpoint import latest_checkpoint
from tests.cluster.test_train import TINY

EPOCHS = 4
EDITS_PER_EPOCH = 2 * 4  # data.n_items x data.group_size of TINY


class Sleeper:
    def nap(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


def test_hung_and_not_started_survive_copy_and_pickle() -> None:
    """Ray Tune copies a trial's error (copy.copy) and Ray pickles it; both rebuild it from its args,
    which used to lack `names`: a sweep trial's NotStarted surfaced as 'Hung.__init__() missing 1
    required positional argument'."""
    import copy
    import pickle

    from cocoedit.cluster.runtime.deadlines import NotStarted

    e = NotStarted("rollout worker 0 did not start", ["rollout worker 0"])
    for again in (copy.copy(e), pickle.loads(pickle.dumps(e))):
        assert type(again) is NotStarted
        assert str(again) == "rollout worker 0 did not start" and again.names == ["rollout worker 0"]


def test_a_call_past_its_measured_deadline_is_hung(ray_local) -> None:  # noqa: ANN001
    actor: Any = ray.remote(Sleeper).remote()
    deadlines = Deadlines(factor=2.0, min_s=1.0, first_s=30.0)
    assert deadlines.timeout_s("nap") == 30.0  # not measured yet
    ray.get(actor.__ray_ready__.remote())  # started: the measured time is the call's own
    assert deadlines.get(actor.nap.remote(0.2), "nap", ["sleeper 0"]) == 0.2
    assert deadlines.slowest["nap"] >= 0.2
    assert deadlines.timeout_s("nap") == max(1.0, 2.0 * deadlines.slowest["nap"])
    t0 = time.monotonic()
    with pytest.raises(Hung) as e:
        deadlines.get([actor.nap.remote(0.0), actor.nap.remote(60.0)], "nap", ["sleeper 0", "sleeper 1"])
    assert time.monotonic() - t0 < 60.0 - 10.0  # the deadline, not the call, ended the wait
    assert e.value.names == ["sleeper 1"]  # the one still running (calls of an actor run in order)
    assert str(e.value).startswith("sleeper 1 did not answer nap within") and "\n" not in str(e.value)
    ray.kill(actor)
    with pytest.raises(ValueError, match="first_s >= min_s"):
        Deadlines(factor=2.0, min_s=10.0, first_s=5.0)


@pytest.fixture()
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "faults-cache"  # one tiny editor for the module
    monkeypatch.setenv("COCOEDIT_CACHE", str(path))
    return path


def _config(tmp_path: Path, *more: str) -> Any:
    return load_config(
        None,
        [
            *TINY,
            f"run.epochs={EPOCHS}",
            "run.eval_every=0",
            "run.image_every=0",
            f"run.checkpoint_every={EPOCHS}",  # the last epoch's only: the final LoRA
            "run.deadline_factor=3",
            "run.deadline_min_s=20",
            "run.deadline_first_s=600",
            "learner.valid_min_std=0",  # every update takes a step: the learner works each epoch
            f"run.run_dir={tmp_path / 'run'}",
            *more,
        ],
    )


def _pid(actor: Any) -> int:
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))


def _logged_epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _release(pid: int) -> None:
    """A process still stopped after the test is killed (it would hold its cores and memory)."""
    if psutil.pid_exists(pid) and psutil.Process(pid).status() == psutil.STATUS_STOPPED:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_stopped_rollout_worker_is_replaced_and_its_shard_sampled_once(
    ray_local,
    cache: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    cfg = _config(tmp_path)
    pid, stopped_at, recovered_s = 0, 0.0, 0.0
    caplog.set_level(logging.WARNING)
    try:
        with start_run(cfg) as run:
            for epoch, _ in run_epochs(run):  # the next epoch's batch is sampling while the body runs
                if epoch == 1:
                    pid = _pid(run.rollout.workers[0])
                    os.kill(pid, signal.SIGSTOP)
                    stopped_at = time.monotonic()
                if epoch == 2:
                    recovered_s = time.monotonic() - stopped_at
            history = run.history
    finally:
        _release(pid)
    print(f"rollout worker stopped -> epoch 2 done: {recovered_s:.1f} s")
    assert len(history) == EPOCHS and _logged_epochs(tmp_path / "run") == list(range(EPOCHS))
    last = history[-1]
    assert last["samples/sampled_total"] == last["samples/handed_total"] == EPOCHS * EDITS_PER_EPOCH
    assert [row["samples/edits"] for row in history] == [EDITS_PER_EPOCH] * EPOCHS
    assert last["samples/resampled_shards"] >= 1
    # noticed by whichever call reached it first: the next weights (load) or the next shard (sample)
    hung = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert hung and hung[0].startswith(
        ("rollout worker 0 did not answer load within", "rollout worker 0 did not answer sample within")
    ), caplog.text[-2000:]
    assert "killing it" in hung[0] and "\n" not in hung[0]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE  # killed
    assert (tmp_path / "run" / "lora").is_dir()


@pytest.mark.slow
def test_stopped_reward_replica_is_replaced_and_the_epoch_scored_once(
    ray_local,
    cache: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,  # noqa: ANN001
) -> None:
    cfg = _config(tmp_path, "rewards.client.timeout_s=5", "rewards.pixel.scaling.replicas=1")
    pid, stopped_at, recovered_s = 0, 0.0, 0.0
    caplog.set_level(logging.WARNING)
    try:
        with start_run(cfg) as run:
            for epoch, _ in run_epochs(run):
                if epoch == 1:
                    pid = run.services.stats("pixel")[0]["pid"]
                    os.kill(pid, signal.SIGSTOP)
                    stopped_at = time.monotonic()
                if epoch == 2:
                    recovered_s = time.monotonic() - stopped_at
                    new_pid = run.services.stats("pixel")[0]["pid"]
            history = run.history
    finally:
        _release(pid)
    print(f"pixel replica stopped -> epoch 2 done: {recovered_s:.1f} s")
    assert new_pid != pid
    assert len(history) == EPOCHS and _logged_epochs(tmp_path / "run") == list(range(EPOCHS))
    last = history[-1]
    assert last["samples/sampled_total"] == last["samples/handed_total"] == EPOCHS * EDITS_PER_EPOCH
    assert last["services/replica_restarts"] >= 1
    assert [row["reward/dropped_edits"] for row in history] == [0.0] * EPOCHS  # every edit scored, once
    assert any(
        "replica 0" in r.getMessage() and "did not answer within 5 s" in r.getMessage()
        for r in caplog.records
    )
    assert (tmp_path / "run" / "lora").is_dir()


@pytest.mark.slow
def test_stopped_learner_rank_stops_the_run_naming_the_checkpoint(
    ray_local,
    cache: Path,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    cfg = _config(tmp_path, "run.checkpoint_every=1")
    pid, stopped_at = 0, 0.0
    try:
        with pytest.raises(LearnerFailure) as e, start_run(cfg) as run:
            for epoch, _ in run_epochs(run):
                if epoch == 1:
                    pid = _pid(run.learner.ranks[0])
                    os.kill(pid, signal.SIGSTOP)
                    stopped_at = time.monotonic()
    finally:
        _release(pid)
    print(f"learner rank stopped -> LearnerFailure: {time.monotonic() - stopped_at:.1f} s")
    msg = str(e.value)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None and str(ckpt) in msg and "cocoedit train --resume" in msg, msg
    assert "at epoch 2" in msg and "learner rank 0 did not answer update within" in msg and "\n" not in msg
    assert _logged_epochs(tmp_path / "run") == [0, 1]

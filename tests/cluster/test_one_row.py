"""One epoch, one row: a real tiny `cocoedit train` killed (SIGKILL, driver and its local Ray cluster)
after a checkpoint, with epochs past that checkpoint already logged, then `--resume`d: metrics.jsonl,
TensorBoard and MLflow hold every epoch exactly once. Slow: two tiny runs in subprocesses, ~3 min alone
and up to ~10 min on a loaded 2-core machine: `pytest -m slow tests/cluster/test_one_row.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from cocoedit.learner.checkpoint import complete_checkpoints
from tests.cluster.test_train import TINY
from tests.cluster.trackers import mlflow_series

ROOT = Path(__file__).resolve().parents[2]


def _epochs(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line)["epoch"])
        except ValueError:
            pass  # a row being written
    return out


def _tensorboard_steps(run_dir: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    steps = []
    for path in sorted((run_dir / "tb").glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            steps += [event.step for v in event.summary.value if v.tag == tag]
    return sorted(steps)


@pytest.mark.slow
def test_kill_after_a_checkpoint_and_resume_logs_each_epoch_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        *TINY,
        "run.epochs=5",
        "run.checkpoint_every=2",  # checkpoints after epochs 1 and 3
        "run.image_every=1",
        "learner.valid_min_std=0",
        "run.trackers=[tensorboard,mlflow]",
        f"run.run_dir={run_dir}",
    ]
    env = {**os.environ, "COCOEDIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "cocoedit.cluster.cli", "train", *overrides]
    # its own session: the driver and the local Ray cluster it starts are killed together
    log = open(tmp_path / "first.log", "w")  # a file, not a pipe: a full pipe would stall the driver
    first = subprocess.Popen(
        argv, cwd=ROOT, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 1500
    try:
        while time.monotonic() < deadline and first.poll() is None:
            # epoch 2 logged (past the checkpoint of epoch 1), epoch 3's checkpoint not yet written
            if 2 in _epochs(run_dir) and complete_checkpoints(run_dir):
                break
            time.sleep(0.05)
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = _epochs(run_dir)
    assert [p.name for p in complete_checkpoints(run_dir)] == ["step_00000002"], (
        before,
        time.monotonic() < deadline,
    )
    assert before[:3] == [0, 1, 2]

    resumed = subprocess.run(
        [*argv, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    assert _epochs(run_dir) == [0, 1, 2, 3, 4]
    assert _tensorboard_steps(run_dir, "reward/mean") == [0, 1, 2, 3, 4]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # reading the run's file store back
    series = mlflow_series(run_dir, "reward/mean")
    assert Counter(step for step, _ in series) == Counter(range(5)), series


def test_a_resumed_runlog_rewrites_the_redone_epochs_and_sends_none_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast version of the test above, on RunLog alone: epochs 0-3 logged, the run killed mid-row
    (a half-written line) and resumed from the checkpoint of epoch 1."""
    from cocoedit.cluster.config import load_config
    from cocoedit.cluster.train.runlog import RunLog

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cfg = load_config(None, ["run.trackers=[tensorboard,mlflow]", f"run.run_dir={tmp_path / 'run'}"])
    first = RunLog(cfg)
    for epoch in range(4):
        first.scalars(epoch, {"reward/mean": 0.1 * epoch})
    first.close()
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "reward/me')  # killed while writing
    resumed = RunLog(cfg, resume=True, first_epoch=2)
    assert _epochs(tmp_path / "run") == [0, 1]
    for epoch in range(2, 6):
        resumed.scalars(epoch, {"reward/mean": 0.1 * epoch + 0.01})
    resumed.close()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert rows[2]["reward/mean"] == pytest.approx(0.21)  # the redone epoch's own row
    assert [s for s, _ in mlflow_series(tmp_path / "run", "reward/mean")] == [0, 1, 2, 3, 4, 5]
    assert _tensorboard_steps(tmp_path / "run", "reward/mean") == [0, 1, 2, 3, 4, 5]

"""SIGTERM of a real tiny `cocoedit train` (what `kill -TERM` and `ray job stop` send) is a clean stop:
the epoch under way finishes, a checkpoint of it is written, MLflow marks the run KILLED, no process of
the run outlives it, the driver exits 143 with one line; `--resume` then finishes the run with every
epoch logged once. Slow: two tiny runs in subprocesses, ~1.5 min alone with the tiny editor cached
(plus ~3 min to build it once), up to ~5 min on a loaded 2-core machine:
`pytest -m slow tests/cluster/test_sigterm.py`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psutil
import pytest

from cocoedit.learner.checkpoint import complete_checkpoints, read_learner_state
from tests.cluster.test_one_row import _epochs
from tests.cluster.test_train import TINY
from tests.cluster.trackers import mlflow_series

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 20  # ~0.3 s each here: room for the SIGTERM to land mid-run on a loaded machine


def _run_processes(driver: psutil.Process) -> tuple[list[psutil.Process], str]:
    """Every process the driver started (raylet, GCS, agents, workers, replicas) and Ray's session dir."""
    procs = driver.children(recursive=True)
    session = ""
    for p in procs:
        try:
            for arg in p.cmdline():
                if arg.startswith("--session_dir=") or arg.startswith("--session-dir="):
                    session = arg.split("=", 1)[1]
        except psutil.Error:
            pass
    return procs, session


def _alive(procs: list[psutil.Process], session: str) -> list[str]:
    """The processes of `procs` still running, and any process whose command line names `session`."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {p.name()}")
        except psutil.NoSuchProcess:
            pass  # gone while we looked
    if session:
        for p in psutil.process_iter(["pid", "cmdline", "status"]):
            if p.info["status"] != psutil.STATUS_ZOMBIE and session in " ".join(p.info["cmdline"] or []):
                left.append(f"{p.pid} {' '.join(p.info['cmdline'])[:120]}")
    return left


def _left_after(procs: list[psutil.Process], session: str, grace_s: float) -> list[str]:
    """`_alive` once it is empty, or after grace_s: a Ray worker notices its raylet is gone on its own."""
    deadline = time.monotonic() + grace_s
    while (left := _alive(procs, session)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return left


@pytest.mark.slow
def test_sigterm_stops_cleanly_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    overrides = [
        *TINY,
        f"run.epochs={EPOCHS}",
        "run.checkpoint_every=0",  # no periodic checkpoint: the one after SIGTERM is the stop's own
        "run.image_every=0",
        "run.eval_every=0",
        "run.trackers=[mlflow]",
        f"run.run_dir={run_dir}",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "cocoedit.cluster.cli", "train", *overrides]
    out = open(tmp_path / "first.log", "w")  # a file, not a pipe: a full pipe would stall the driver
    first = subprocess.Popen(
        argv, cwd=ROOT, env=env, start_new_session=True, stdout=out, stderr=subprocess.STDOUT
    )
    driver = psutil.Process(first.pid)
    procs: list[psutil.Process] = []
    session = ""
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and first.poll() is None and 1 not in _epochs(run_dir):
            time.sleep(0.05)
        assert first.poll() is None and 1 in _epochs(run_dir), (tmp_path / "first.log").read_text()[-3000:]
        procs, session = _run_processes(driver)
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)  # the driver alone, as `kill -TERM PID` does
        code = first.wait(timeout=300)
        stop_s = time.monotonic() - sent
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    text = (tmp_path / "first.log").read_text()
    assert code == 143, text[-3000:]
    last_line = text.strip().splitlines()[-1]
    assert last_line.startswith("Stopped: stopped by SIGTERM after epoch"), text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    print(f"SIGTERM to exit: {stop_s:.1f} s")

    # the last logged epoch is the one checkpointed: nothing lost, nothing to redo
    logged = _epochs(run_dir)
    assert logged == list(range(len(logged))) and 2 <= len(logged) < EPOCHS, logged
    (ckpt,) = complete_checkpoints(run_dir)
    assert read_learner_state(ckpt)["extra_state"]["epoch"] == logged[-1]
    assert f"after epoch {logged[-1]}: checkpoint {ckpt} written" in last_line
    assert (run_dir / "lora").is_dir()

    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow = MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
    run_id = json.loads((run_dir / "trackers.json").read_text())["mlflow"]
    assert mlflow.get_run(run_id).info.status == "KILLED"

    assert procs and session  # the driver had started its local cluster
    assert _left_after(procs, session, grace_s=20.0) == [], (session, text[-2000:])

    resumed = subprocess.run(
        [*argv, "--resume"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _epochs(run_dir) == list(range(EPOCHS))
    assert Counter(step for step, _ in mlflow_series(run_dir, "reward/mean")) == Counter(range(EPOCHS))
    assert mlflow.get_run(run_id).info.status == "FINISHED"


def test_stop_signal_saves_the_epochs_done_then_stops(tmp_path: Path) -> None:
    """The fast part: a real SIGTERM to this process asks for a stop; at the next epoch's start the
    epochs since the last checkpoint are saved and Stopped names the checkpoint; a second SIGTERM
    stops at once. (~0 s)"""
    from cocoedit.cluster.train.stop import Stopped, StopSignal, run_status

    stop = StopSignal()
    stop.install()
    try:
        stop.before_epoch(3, 0, 1, lambda e: tmp_path / "never", "RUN")  # no SIGTERM: nothing happens
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # Python runs the handler between bytecodes of the main thread
        assert stop.requested
        saved: list[int] = []
        with pytest.raises(Stopped, match="after epoch 2: checkpoint .*step_3 written; resume with"):
            stop.before_epoch(3, 0, 1, lambda e: saved.append(e) or tmp_path / "step_3", "RUN")
        assert saved == [2]  # the epochs after the checkpoint of epoch 1
        with pytest.raises(Stopped, match="after epoch 2: its checkpoint was already written"):
            stop.before_epoch(3, 0, 2, lambda e: tmp_path / "again", "RUN")
        with pytest.raises(Stopped, match="before epoch 0: nothing was trained"):
            stop.before_epoch(0, 0, None, lambda e: tmp_path / "none", "RUN")
        with pytest.raises(Stopped, match="second SIGTERM"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle
    assert [run_status(None), run_status(Stopped("x")), run_status(ValueError("x"))] == [
        "FINISHED",
        "KILLED",
        "FAILED",
    ]

"""Faults and scaling during a real tiny run: replicas and workers die, services grow; nothing is lost."""

import os
import signal
from pathlib import Path

import pytest
import ray

from cocoedit.cluster.config import load_config
from cocoedit.cluster.train.loop import LearnerFailure, run_epochs, start_run
from cocoedit.learner.checkpoint import latest_checkpoint
from tests.cluster.test_train import TINY

EDITS_PER_EPOCH = 2 * 4  # data.n_items x data.group_size of TINY


@pytest.fixture()
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "faults-cache"  # one tiny editor for the module
    monkeypatch.setenv("COCOEDIT_CACHE", str(path))
    return path


def test_scaling_and_faults_mid_run_lose_no_sample(ray_local, cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    """Epoch 0: grow pixel 1 -> 2 replicas. Epoch 1: SIGKILL one pixel replica and kill the rollout
    worker while it samples the next batch. The run finishes; every sampled edit is trained on once."""
    cfg = load_config(
        None,
        [
            *TINY,
            "run.epochs=4",
            "run.eval_every=0",
            "run.image_every=0",
            "run.checkpoint_every=0",
            "rewards.pixel.scaling.replicas=1",
            "rewards.client.batch_edits=2",  # 4 requests per epoch: both replicas get work
            f"run.run_dir={tmp_path / 'run'}",
        ],
    )
    seen: dict[str, object] = {}
    with start_run(cfg) as run:
        services, rollout = run.services, run.rollout
        for epoch, _ in run_epochs(run):  # the next epoch's batch is sampling while the body runs
            if epoch == 0:
                services.scale("pixel", 2)
                seen["added"] = services.stats("pixel")[1]["pid"]
            if epoch == 1:
                victim = services.stats("pixel")[0]
                seen["killed_address"] = victim["address"]
                os.kill(victim["pid"], signal.SIGKILL)  # a crash, not a polite stop
                ray.kill(rollout.workers[0], no_restart=False)  # restarted by Ray; its shard is re-sampled
            if epoch == 3:
                seen["final_stats"] = services.stats("pixel")
                seen["addresses"] = services.addresses("pixel")
        history = run.history

    assert len(history) == 4
    last = history[-1]
    # every sampled edit reached the learner exactly once; trained <= valid <= handed
    assert last["samples/sampled_total"] == last["samples/handed_total"] == 4 * EDITS_PER_EPOCH
    assert last["samples/trained_total"] <= last["samples/valid_total"] <= last["samples/handed_total"]
    assert [row["samples/edits"] for row in history] == [EDITS_PER_EPOCH] * 4
    assert last["samples/resampled_shards"] >= 1  # the killed worker's shard was sampled again
    # the replica added at epoch 0 served requests: the workers score a batch with the replicas of when it
    # was drawn (cluster/train/scored.py), so from the batch drawn after it was added (epoch 2's)
    final = seen["final_stats"]
    assert next(s["score_calls"] for s in final if s["pid"] == seen["added"]) > 0
    # the killed replica was restarted by Ray on a new port and re-registered with the client
    assert len(final) == 2 and seen["killed_address"] not in seen["addresses"]
    assert sorted(s["address"] for s in final) == sorted(seen["addresses"])
    assert last["services/replica_restarts"] == 1  # the killed one; the replica added at epoch 0 is not
    assert last["services/pixel_replicas"] == 2
    assert all(0.0 <= row["reward/mean"] <= 1.0 for row in history)


def test_learner_failure_names_the_checkpoint_to_resume_from(ray_local, cache: Path, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = load_config(
        None,
        [
            *TINY,
            "run.epochs=3",
            "run.eval_every=0",
            "run.image_every=0",
            "run.checkpoint_every=1",
            f"run.run_dir={tmp_path / 'run'}",
        ],
    )

    with pytest.raises(LearnerFailure) as e, start_run(cfg) as run:
        for epoch, _ in run_epochs(run):
            if epoch == 0:
                ray.kill(run.learner.ranks[0], no_restart=True)
    ckpt = latest_checkpoint(tmp_path / "run")
    assert ckpt is not None
    msg = str(e.value)
    assert "at epoch 1" in msg and str(ckpt) in msg and "cocoedit train --resume" in msg

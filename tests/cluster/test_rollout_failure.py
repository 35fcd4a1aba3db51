"""A rollout worker that dies more often than rollout.max_restarts stops the run with RolloutFailure's
one line (a plain RuntimeError before: `cocoedit train` printed a traceback). Real sim-editor actor on
the suite's Ray; ~10 s."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from cocoedit.actors.config import PolicyConfig
from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.deadlines import Deadlines
from cocoedit.cluster.runtime.placement import Placement
from cocoedit.cluster.train.groups import RolloutFailure, RolloutGroup
from cocoedit.cluster.train.loop import RUN_ERRORS
from cocoedit.cluster.train.scored import Scoring
from tests.actors.test_rollout import make_items
from tests.cluster.test_simulate import SPEC


def test_a_rollout_worker_dead_for_good_stops_the_run_with_one_line(ray_local, tmp_path: Path) -> None:  # noqa: ANN001
    cfg = load_config(None, ["run.pin_cpus=false", "rollout.max_restarts=0"])
    policy = PolicyConfig(family="sim", model_path=str(SPEC.write(tmp_path / "sim")), dtype="float32")
    placement = Placement(cfg)
    group = RolloutGroup(policy, cfg.rollout, placement, Deadlines(start_s=600.0))
    try:
        group.wait_started()
        ray.kill(group.workers[0], no_restart=True)  # dead for good: no restart is left
        pending = group.sample_async(make_items(1, 2), 0, Scoring(cfg.rewards.client, {}))
        with pytest.raises(RolloutFailure) as e:
            group.gather(pending)
        message = str(e.value)
        assert message.startswith("rollout worker 0 died or hung 1 time(s) sampling a shard of 2 edits (")
        assert "rollout.max_restarts=0" in message and "cocoedit train --resume" in message
        assert "\n" not in message
        assert isinstance(e.value, RUN_ERRORS)  # what cocoedit train and simulate end with in one line
    finally:
        group.close()
        placement.close()

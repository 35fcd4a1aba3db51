"""The one stage timer shared by the driver, the rollout workers and the learner."""

from __future__ import annotations

import time

import pytest

from cocoedit.timing import StageTimer


def test_stages_add_up_over_their_entries_and_the_total_covers_them() -> None:
    timer = StageTimer()
    for _ in range(3):
        with timer("decode"):
            time.sleep(0.01)
    with timer("sample"):
        time.sleep(0.02)
    m = timer.metrics(prefix="time/", total="epoch")
    assert set(m) == {"time/decode_s", "time/sample_s", "time/epoch_s"}
    assert m["time/decode_s"] >= 0.03 and m["time/sample_s"] >= 0.02
    assert m["time/epoch_s"] >= m["time/decode_s"] + m["time/sample_s"]


def test_a_stage_that_raises_is_still_timed() -> None:
    timer = StageTimer()
    with pytest.raises(RuntimeError, match="boom"), timer("update"):
        raise RuntimeError("boom")
    assert set(timer.metrics()) == {"update_s", "total_s"} and timer.seconds["update"] >= 0

"""RewardClient against real servers on 127.0.0.1: balancing, failover, retries, deadlines, splitting;
make_edit conversions; weighting.combine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cocoedit.rewards.client import RewardClient, RewardServiceError, make_edit
from cocoedit.rewards.config import ClientConfig, PixelConfig
from cocoedit.rewards.images import decode_png
from cocoedit.rewards.pixel import PixelScorer
from tests.rewards.conftest import GateScorer, make_edits


def test_requests_split_in_order_with_per_edit_errors_kept(pixel_server) -> None:
    edits = make_edits(10, 16, 16)
    edits[4].edited_image = b"broken"
    client = RewardClient([pixel_server.address], ClientConfig(batch_edits=3), "pixel")
    calls_before = pixel_server.server.servicer.score_calls
    out = client.score(edits)
    assert pixel_server.server.servicer.score_calls - calls_before == 4  # ceil(10 / 3) requests
    assert [o.edit_id for o in out] == [e.edit_id for e in edits]
    assert out[4].score is None and "edited_image: not a PNG" in out[4].error
    assert all(o.score is not None for i, o in enumerate(out) if i != 4)
    assert client.score([]) == []
    with pytest.raises(ValueError, match="duplicate edit_id 'e0'"):
        client.score([edits[0], edits[0]])


def test_requests_split_by_bytes_below_the_message_limit(pixel_server) -> None:
    edits = make_edits(6, 256, 256, seed=3)  # two stored 256 px RGB PNGs: ~0.38 MB an edit
    sizes = [e.ByteSize() / 2**20 for e in edits]
    assert all(0.34 < s < 0.5 for s in sizes), sizes
    client = RewardClient([pixel_server.address], ClientConfig(batch_edits=64, max_message_mb=1), "pixel")
    calls_before = pixel_server.server.servicer.score_calls
    out = client.score(edits)
    assert pixel_server.server.servicer.score_calls - calls_before == 3  # 2 edits (< 1 MB) a request
    assert [o.edit_id for o in out] == [e.edit_id for e in edits] and all(o.error is None for o in out)
    big = make_edits(1, 600, 600, prefix="big")
    with pytest.raises(
        ValueError, match=r"edit 'big0' is 2.1 MB on the wire, over rewards.client.max_message_mb=1"
    ):
        client.score(big)


def test_balances_across_replicas_and_survives_a_killed_one(serve) -> None:
    a = serve(PixelScorer(PixelConfig(threads=1)))
    b = serve(PixelScorer(PixelConfig(threads=1)))
    client = RewardClient(
        [a.address, b.address], ClientConfig(batch_edits=2, backoff_s=0.01, retries=4), "pixel"
    )
    client.wait_ready(10)
    for _ in range(4):
        assert all(o.error is None for o in client.score(make_edits(2, 16, 16)))
    served = (a.server.servicer.score_calls, b.server.servicer.score_calls)
    assert served == (2, 2)  # sequential calls alternate (least loaded, ties round-robin)
    a.stop(0)
    for i in range(6):
        out = client.score(make_edits(4, 16, 16, seed=i))
        assert [o.error for o in out] == [None] * 4
    assert b.server.servicer.score_calls == 2 + 6 * 2
    # the dead replica can be dropped, a new one added while running
    c = serve(PixelScorer(PixelConfig(threads=1)))
    client.set_addresses([b.address, c.address])
    assert client.addresses == [b.address, c.address]
    assert all(o.error is None for o in client.score(make_edits(8, 16, 16)))
    assert c.server.servicer.score_calls >= 1


def test_retries_run_out_with_a_loud_error() -> None:
    from cocoedit.loopback import free_port

    dead = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    client = RewardClient(dead, ClientConfig(retries=2, backoff_s=0.01, timeout_s=5), "pixel")
    with pytest.raises(RewardServiceError) as err:
        client.score(make_edits(1, 8, 8))
    message = str(err.value)
    assert "reward service 'pixel' Score failed after 3 attempts" in message
    assert dead[0] in message and dead[1] in message and "UNAVAILABLE" in message
    with pytest.raises(
        TimeoutError, match="no replica of reward service 'pixel' reported SERVING within 0.2 s"
    ):
        client.wait_ready(0.2)


def test_resource_exhausted_is_retried_on_another_replica(serve) -> None:
    busy_scorer = GateScorer()
    busy_scorer.score_gate.clear()
    busy = serve(busy_scorer, max_concurrent_calls=1)
    free = serve(GateScorer())
    blocker = RewardClient([busy.address], ClientConfig(timeout_s=20), "gate")
    import threading

    t = threading.Thread(target=blocker.score, args=(make_edits(1, 8, 8, prefix="block"),))
    t.start()
    assert busy_scorer.score_entered.wait(10)
    client = RewardClient([busy.address, free.address], ClientConfig(backoff_s=0.01, batch_edits=1), "gate")
    out = client.score(make_edits(3, 8, 8))
    assert [o.score for o in out] == [0.5] * 3
    assert free.server.servicer.score_calls == 3
    busy_scorer.score_gate.set()
    t.join(10)


def test_deadline_and_non_retryable_errors_are_not_retried(serve) -> None:
    slow_scorer = GateScorer()
    slow_scorer.score_gate.clear()
    slow = serve(slow_scorer)
    client = RewardClient([slow.address], ClientConfig(timeout_s=0.3, retries=3, backoff_s=0.01), "gate")
    with pytest.raises(RewardServiceError, match="DEADLINE_EXCEEDED.*not retried"):
        client.score(make_edits(1, 8, 8))
    assert slow.server.servicer.score_calls == 1
    slow_scorer.score_gate.set()
    small = serve(GateScorer(), max_batch_edits=2)
    client = RewardClient([small.address], ClientConfig(batch_edits=3), "gate")
    with pytest.raises(RewardServiceError, match="INVALID_ARGUMENT.*max_batch_edits=2"):
        client.score(make_edits(3, 8, 8))


def test_info_checks_the_service_name(pixel_server) -> None:
    info = RewardClient([pixel_server.address], ClientConfig(), "pixel").info()
    assert info.max_batch_edits == 512 and info.settings["compat"] == "standard"
    with pytest.raises(RewardServiceError, match="given for service 'mllm' serve 'pixel'"):
        RewardClient([pixel_server.address], ClientConfig(), "mllm").info()
    with pytest.raises(ValueError, match="host:port"):
        RewardClient(["localhost"], ClientConfig(), "pixel")
    with pytest.raises(ValueError, match="no replica addresses"):
        RewardClient([], ClientConfig(), "pixel")


def test_make_edit_converts_masks_and_tensors() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    binary = np.zeros((6, 5), bool)
    binary[1:3] = True
    expected = binary.astype(np.uint8) * 255
    for mask in (
        binary,
        binary.astype(np.uint8),
        expected,
        binary.astype(np.float32),
        torch.from_numpy(binary)[None],
    ):
        edit = make_edit("e", "g", 3, "x", torch.from_numpy(image), image, mask)
        assert np.array_equal(decode_png(edit.edit_mask), expected)
    assert np.array_equal(decode_png(edit.source_image), image) and edit.policy_version == 3
    assert make_edit("e", "g", 0, "x", image, image).edit_mask == b""
    with pytest.raises(ValueError, match="uint8"):
        make_edit("e", "g", 0, "x", image / 255.0, image)
    with pytest.raises(ValueError, match="channels-first"):
        make_edit("e", "g", 0, "x", torch.from_numpy(image).permute(2, 0, 1), image)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        make_edit("e", "g", 0, "x", image, image, binary * 2.0)

"""A group's shared images (`ScoreRequest.groups`) are decoded once per request: its edits get the same
read-only arrays, the same scores as the same edits sent each with its own images, and the same per-edit
errors; budgets and chunks count them once (real gRPC servers on 127.0.0.1, rewards/edits.RequestEdits)."""

from __future__ import annotations

import asyncio
import warnings

import grpc
import numpy as np
import pytest

from cocoedit.protos import reward_pb2
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.client import RewardClient, wire_image
from cocoedit.rewards.config import ClientConfig, PixelConfig, SyntheticJudgeConfig
from cocoedit.rewards.edits import RequestEdits, expand_groups
from cocoedit.rewards.mllm import resize_for_judge
from cocoedit.rewards.pixel import PixelScorer
from cocoedit.rewards.sim_judge import SimJudge, SimJudgeConfig
from cocoedit.rewards.synthetic import SyntheticJudge
from tests.rewards.conftest import groups_of, on_the_wire, stub

BIG = ClientConfig(timeout_s=20.0, retries=1, backoff_s=0.01, ready_timeout_s=10.0, batch_edits=64)


class Recorder(PixelScorer):
    """The pixel scorer (CPU path), keeping every DecodedEdit it was given."""

    def __init__(self) -> None:
        super().__init__(PixelConfig(threads=2))
        self.seen: dict[str, DecodedEdit] = {}

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        self.seen.update({e.edit_id: e for e in edits})
        return await super().score(edits)


def scored(address: str, request: reward_pb2.ScoreRequest) -> dict[str, reward_pb2.EditScore]:
    return {s.edit_id: s for s in stub(address).Score(request, timeout=20).scores}


def test_a_groups_edits_share_one_read_only_decode_and_score_as_if_sent_alone(serve) -> None:
    scorer = Recorder()
    srv = serve(scorer)
    edits = groups_of([3, 4, 2])
    own = {"g0:0", "g0:1", "g0:2"}
    mixed = on_the_wire(edits, {"g1", "g2"})  # g0's edits carry their own images
    # an edit of a listed group that carries its own source keeps its own images
    mixed.edits[3].CopyFrom(edits[3])
    alone = scored(srv.address, reward_pb2.ScoreRequest(edits=edits))
    first = dict(scorer.seen)
    together = scored(srv.address, mixed)
    assert [s.edit_id for s in together.values()] == [e.edit_id for e in edits]
    for e in edits:  # bit-identical scores and components
        assert together[e.edit_id].WhichOneof("result") == "scored"
        assert together[e.edit_id].scored == alone[e.edit_id].scored
    seen = scorer.seen
    for group, ids in (("g1", ["g1:1", "g1:2", "g1:3"]), ("g2", ["g2:0", "g2:1"])):
        head = seen[ids[0]]
        for name in ("source_image", "edit_mask", "target_image"):
            shared = getattr(head, name)
            assert not shared.flags.writeable, (group, name)
            assert all(getattr(seen[i], name) is shared for i in ids), (group, name)
            assert np.array_equal(shared, getattr(first[ids[0]], name))
        assert all(seen[i].edited_image.flags.writeable for i in ids)  # each edit's own
        assert len({id(seen[i].edited_image) for i in ids}) == len(ids)
    for i in [*own, "g1:0"]:  # edits with their own images: decoded for themselves, as before
        assert seen[i].source_image.flags.writeable and seen[i].source_image is not seen["g1:1"].source_image
    with pytest.raises(ValueError, match="read-only"):
        seen["g1:1"].source_image[0, 0] = 0


def test_a_bad_group_image_gives_each_of_its_edits_the_per_edit_error_it_gave_alone(serve) -> None:
    srv = serve(PixelScorer(PixelConfig(threads=1)))
    edits = groups_of([2, 2, 2, 2, 2], seed=1)

    def corrupt(png: bytes) -> bytes:  # a valid header, pixel data that does not inflate
        return png[:41] + b"\0" * (len(png) - 41)

    for e in edits:
        if e.group_id == "g0":
            e.source_image = corrupt(e.source_image)
        elif e.group_id == "g1":
            e.edit_mask = corrupt(e.edit_mask)
        elif e.group_id == "g2":  # a header error: the target's size
            e.target_image = wire_image(np.zeros((8, 8, 3), np.uint8), "target_image")
        elif e.group_id == "g3":
            e.edit_mask = b""  # the pixel service needs one
    edits[3].edited_image = corrupt(edits[3].edited_image)  # g1:1: its own error comes before the mask's
    alone = scored(srv.address, reward_pb2.ScoreRequest(edits=edits))
    together = scored(srv.address, on_the_wire(edits, {f"g{g}" for g in range(5)}))
    errors = {i: s.error for i, s in together.items() if s.error}
    assert errors == {i: s.error for i, s in alone.items() if s.error}
    assert set(errors) == {e.edit_id for e in edits[:8]}
    assert errors["g0:0"] == errors["g0:1"] and errors["g0:0"].startswith("source_image: undecodable PNG")
    assert errors["g1:0"].startswith("edit_mask: undecodable PNG")
    assert errors["g1:1"].startswith("edited_image: undecodable PNG")
    assert errors["g2:0"] == errors["g2:1"] == "target_image: 8x8 (WxH) does not match source_image 24x24"
    assert errors["g3:0"] == "edit_mask: missing, but the pixel service needs the edit mask"
    assert [together[f"g4:{k}"].scored == alone[f"g4:{k}"].scored for k in (0, 1)] == [True, True]


def test_a_groups_images_count_once_in_the_budget_and_once_per_chunk(serve) -> None:
    # 200x200: an edit's own image decodes to 120000 bytes, the group's source and mask to 320000
    scorer = Recorder()
    srv = serve(scorer, max_request_decoded_mb=1, chunk_decoded_mb=1)
    edits = groups_of([8], 200, 200, seed=2)
    for e in edits:
        e.target_image = b""
    out = scored(srv.address, on_the_wire(edits, {"g0"}))
    # 440000 + 5 x 120000 = 1040000 <= 1 MiB; alone the third edit was over (3 x 440000)
    assert [i for i, s in out.items() if s.error] == ["g0:6", "g0:7"]
    assert out["g0:6"].error == (
        "request over its decoded-bytes budget: this edit decodes to 0.1 MB and the edits before it to 1.0 MB, "
        "over max_request_decoded_mb=1; send it in another request (fewer edits per request)"
    )
    assert len({id(scorer.seen[f"g0:{k}"].source_image) for k in range(6)}) == 1

    # the plan (g1, g0 x 8, g1): a group over two chunks is decoded once (counted in both); one that comes
    # back after a chunk without it is decoded again, so no decoded image outlives the chunks that counted it
    more = groups_of([8, 2], 200, 200, seed=3)
    for e in more:
        e.target_image = b""
    plan = RequestEdits(on_the_wire([more[8], *more[:8], more[9]], {"g0", "g1"}), PixelScorer(PixelConfig()))
    errors, chunks = plan.plan(64, 1)
    assert errors == {} and chunks == [[0, 1, 2], [3, 4, 5, 6, 7, 8], [9]]
    decoded = [plan.decode(i) for chunk in chunks for i in chunk]
    assert len({id(d.source_image) for d in decoded[1:9]}) == 1  # g0 over chunks 0 and 1
    assert decoded[9].source_image is not decoded[0].source_image  # g1 again in chunk 2: decoded again
    assert np.array_equal(decoded[9].source_image, decoded[0].source_image)


def test_every_scorer_takes_read_only_shared_images() -> None:
    """The pixel torch path, the synthetic judge, the simulated judge and the MLLM judge's image
    preprocessing on a group's shared (read-only) arrays: the numbers of the same edits decoded alone,
    and no warning (torch warns about wrapping a read-only array)."""
    edits = groups_of([3, 2], 32, 40, seed=4)
    request = on_the_wire(edits, {"g0", "g1"})
    pixel = PixelScorer(PixelConfig(threads=1))
    plan = RequestEdits(request, pixel, None)
    assert plan.plan(64, 64) == ({}, [list(range(5))])
    shared = [plan.decode(i) for i in range(5)]
    alone = [
        RequestEdits(reward_pb2.ScoreRequest(edits=expand_groups(request)), pixel).decode(i) for i in range(5)
    ]
    assert not shared[0].source_image.flags.writeable and alone[0].source_image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scorer, run in (
            (pixel, lambda d: pixel._score_batched(d, None)),
            (SyntheticJudge(SyntheticJudgeConfig()), None),
            (SimJudge(SimJudgeConfig(enabled=True)), None),
        ):
            run = run or (lambda d, s=scorer: asyncio.run(s.score(d)))
            assert [(o.score, o.components) for o in run(shared)] == [
                (o.score, o.components) for o in run(alone)
            ]
        assert (
            resize_for_judge(shared[0].source_image, 16).tobytes()
            == resize_for_judge(alone[0].source_image, 16).tobytes()
        )


class Mutator(Scorer):
    """A scorer that writes into the source image it is given."""

    service = score_name = "mutator"

    def settings(self) -> dict[str, str]:
        return {}

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        for e in edits:
            e.source_image[0, 0] = 0
        return [EditOutcome(e.edit_id, score=0.5) for e in edits]


def test_a_scorer_writing_into_a_shared_image_fails_loudly(serve) -> None:
    srv = serve(Mutator())
    edits = groups_of([2], seed=5)
    assert RewardClient([srv.address], BIG, "mutator").score(edits)[0].score == 0.5  # its own copies
    with pytest.raises(grpc.RpcError) as err:
        stub(srv.address).Score(on_the_wire(edits, {"g0"}), timeout=20)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "mutator scorer raised ValueError: assignment destination is read-only" in err.value.details()

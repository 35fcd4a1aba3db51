"""What a rollout batch carries and sends (issue 27 item 4): the source image, target and edit mask once
per group, the mask as one byte per pixel, the learner's shards without pixels, the reward protos
(hence the rewards) unchanged by the per-group layout and by groups on the wire, and what a worker that
scores its own groups hands the driver: ids and outcomes, the same bytes whatever the image size."""

import dataclasses
import hashlib
import pickle
from collections.abc import Iterator

import pytest
import torch

from cocoedit.actors.types import Condition, RolloutBatch
from cocoedit.cluster.simulate.measure import tensor_bytes
from cocoedit.cluster.train.scored import Scoring, ShardScorer
from cocoedit.cluster.train.scores import to_edits, to_groups
from cocoedit.protos import reward_pb2
from cocoedit.rewards.config import ClientConfig, PixelConfig, ServerConfig
from cocoedit.rewards.edits import decode_edit, expand_groups
from cocoedit.rewards.pixel import PixelScorer

G, K, S = 2, 3, 32  # groups, edits per group, pixels

# Computed with the code before the change (per-edit float32 masks and per-edit source/target images,
# to_edits encoding every edit's four images) on the batch below: its pixel rewards and the SHA-256 of
# its serialized reward protos.
PIXEL_BEFORE = [
    0.4360628336876643,
    0.4327923384785538,
    0.44431479651857186,
    0.4034126561938761,
    0.40256709475162555,
    0.39503598611783064,
]
PROTOS_BEFORE = "a4ebe14a70130aea1b99d637f143f307e449382782ee842b10ba81b298ce5b74"


def fixed_batch(S: int = S) -> RolloutBatch:  # noqa: N803 - the module's S, or another size
    """G groups x K edits of S x S random images: each edit keeps its source's left half; a target."""
    g = torch.Generator().manual_seed(7)
    src = torch.randint(0, 256, (G, 3, S, S), generator=g, dtype=torch.uint8)
    tgt = torch.randint(0, 256, (G, 3, S, S), generator=g, dtype=torch.uint8)
    edited = torch.randint(0, 256, (G * K, 3, S, S), generator=g, dtype=torch.uint8)
    edited[:, :, :, : S // 2] = src.repeat_interleave(K, 0)[:, :, :, : S // 2]
    mask = torch.zeros(G, 1, S, S)
    mask[0, :, S // 4 : 3 * S // 4, S // 2 :] = 1.0  # at S = 32: [8:24, 16:], [4:20, 12:30]
    mask[1, :, S // 8 : 5 * S // 8, 3 * S // 8 : 15 * S // 16] = 1.0
    n = G * K
    return RolloutBatch(
        edit_ids=[f"e{i}" for i in range(n)],
        item_ids=[f"item{i // K}" for i in range(n)],
        group_ids=[f"0:item{i // K}" for i in range(n)],
        instructions=["make it blue"] * n,
        policy_version=3,
        x0=torch.zeros(n, 4, 2),
        source_latents=torch.zeros(G, 4, 2),
        condition=Condition({"embeds": torch.zeros(G, 2)}, frozenset({"embeds"})),
        group_index=torch.arange(n) // K,
        edited_images=edited,
        source_images=src,
        edit_masks=(mask * 255).to(torch.uint8),
        sigmas=torch.linspace(1, 0, 3),
        sampler="dpm2",
        height=S,
        width=S,
        seeds=list(range(n)),
        target_images=tgt,
    )


def test_the_reward_protos_and_pixel_rewards_are_those_of_the_per_edit_layout():
    batch = fixed_batch()
    edits = to_edits(batch)
    assert hashlib.sha256(b"".join(e.SerializeToString() for e in edits)).hexdigest() == PROTOS_BEFORE
    scorer = PixelScorer(PixelConfig(threads=1))
    scores = [o.score for o in scorer.score_sync([decode_edit(e, scorer) for e in edits])]
    assert scores == pytest.approx(PIXEL_BEFORE, rel=0, abs=1e-12)


def test_a_batch_carries_its_items_pixels_once_per_group_and_its_masks_as_bytes():
    batch = fixed_batch()
    assert batch.edit_masks.dtype == torch.uint8 and batch.edit_masks.shape == (G, 1, S, S)
    assert batch.source_images.shape == batch.target_images.shape == (G, 3, S, S)  # type: ignore[union-attr]
    pixels = sum(
        tensor_bytes(getattr(batch, f))
        for f in ("edited_images", "source_images", "target_images", "edit_masks")
    )
    assert pixels == G * K * 3 * S * S + G * (3 + 3 + 1) * S * S  # was G * K * (3 + 3 + 3 + 4) * S * S
    unit = batch.edit_masks_unit([K, K + 1])  # group 1's mask, per edit, float in [0, 1]
    assert unit.dtype == torch.float32 and unit.shape == (2, 1, S, S) and unit[0, 0, 4, 12] == 1.0
    # select, cat and per_edit keep one row per group
    back = RolloutBatch.cat([batch.select([0, 1]), batch.select(list(range(2, G * K)))])
    assert back.source_images.shape[0] == 3 and torch.equal(back.edit_masks_unit([4]), unit[1:])
    assert torch.equal(batch.per_edit().source_images[K], batch.source_images[1])


def test_a_float_mask_is_refused_with_the_conversion():
    batch = fixed_batch()
    with pytest.raises(ValueError, match=r"edit_masks must be uint8.*\(mask \* 255\)\.round\(\)"):
        RolloutBatch(**{**batch.__dict__, "edit_masks": batch.edit_masks.float() / 255})
    with pytest.raises(ValueError, match=r"one row per condition row \(2\)"):
        RolloutBatch(**{**batch.__dict__, "source_images": batch.source_images[batch.group_index]})


def test_the_learner_is_sent_no_pixels_but_its_masks():
    batch = fixed_batch()
    shard = batch.without_images().select([3, 4])
    assert shard.edited_images.shape == (2, 3, 0, 0) and shard.source_images.shape == (1, 3, 0, 0)
    assert shard.target_images is None and torch.equal(
        shard.edit_masks_unit([0, 1]), batch.edit_masks_unit([3, 4])
    )
    assert tensor_bytes(shard) < tensor_bytes(batch.select([3, 4])) / 5


def test_groups_on_the_wire_carry_each_image_once_and_make_the_same_protos():
    """to_groups: each edit its edited PNG, each group its source, mask and target once; expand_groups
    (the images the server decodes for each edit) gives back exactly the protos of to_edits (so the same
    rewards)."""
    batch = fixed_batch()
    edits, groups = to_groups(batch)
    assert [g.group_id for g in groups] == ["0:item0", "0:item1"] and not any(e.source_image for e in edits)
    request = reward_pb2.ScoreRequest.FromString(
        reward_pb2.ScoreRequest(edits=edits, groups=groups).SerializeToString()
    )
    wire = request.ByteSize()
    expanded = expand_groups(request)  # in place
    assert hashlib.sha256(b"".join(e.SerializeToString() for e in expanded)).hexdigest() == PROTOS_BEFORE
    full = sum(e.ByteSize() for e in to_edits(batch))
    needed = sum(len(e.edited_image) for e in edits) + sum(
        len(g.source_image) + len(g.edit_mask) + len(g.target_image) for g in groups
    )
    assert wire < 1.05 * needed and full > 1.7 * wire  # the old layout: source and target K = 3 times


@pytest.fixture(scope="module")
def pixel_address() -> Iterator[str]:
    from cocoedit.rewards.hosting import BackgroundServer

    with BackgroundServer(PixelScorer(PixelConfig(threads=1)), ServerConfig(grace_s=1.0)) as srv:
        yield srv.address


def test_a_worker_scores_its_groups_and_hands_the_driver_no_pixels(pixel_address: str):
    """ShardScorer (what a rollout worker runs) over a real gRPC pixel server: the rewards are those the
    driver computed before (PIXEL_BEFORE); what goes to the driver (a ScoredShard) holds no image and
    pickles to the same number of bytes (but for the counts it reports) at 32 and 128 px while the
    images grow 16 times. (Before, the driver received every image: 6 x 7 x 32 x 32 bytes here.)"""
    scoring = Scoring(ClientConfig(timeout_s=30.0, batch_edits=4), {"pixel": [pixel_address]})
    sizes = {}
    for size in (S, 4 * S):
        batch = fixed_batch(size)
        scorer = ShardScorer()
        scorer.connect(scoring)
        scorer.submit(batch.select([0, 1, 2]))  # two chunks of whole groups, as a worker sends them
        scorer.submit(batch.select([3, 4, 5]))
        shard = scorer.finish(batch, "e0")
        assert not shard.failed and shard.edit_ids == batch.edit_ids
        if size == S:
            assert [o.score for o in shard.outcomes["pixel"]] == pytest.approx(PIXEL_BEFORE, rel=0, abs=1e-12)
        assert shard.wire_bytes["pixel"] < 1.05 * sum(
            m.ByteSize() for m in [*to_groups(batch)[0], *to_groups(batch)[1]]
        )
        assert not any(isinstance(v, (torch.Tensor, bytes)) for v in vars(shard).values())
        # the counts it reports (bytes, seconds) aside, the same bytes whatever the image size
        sizes[size] = len(pickle.dumps(dataclasses.replace(shard, wire_bytes={}, png_bytes={}, score_s={})))
    assert sizes[S] == sizes[4 * S] < 2000


def test_a_group_split_over_requests_travels_with_each(pixel_address: str):
    """batch_edits=2 splits each group of 3 over two requests: each request carries the group's images,
    and the rewards are still the per-edit layout's."""
    from cocoedit.rewards.client import RewardClient

    edits, groups = to_groups(fixed_batch())
    with RewardClient([pixel_address], ClientConfig(timeout_s=30.0, batch_edits=2), "pixel") as client:
        requests = client._requests(edits, {g.group_id: g for g in groups})
        assert [[e.edit_id for e in r] for r in requests] == [["e0", "e1"], ["e2", "e3"], ["e4", "e5"]]
        scores = [o.score for o in client.score(edits, groups)]
    assert scores == pytest.approx(PIXEL_BEFORE, rel=0, abs=1e-12)

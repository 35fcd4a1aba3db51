"""What a rollout batch carries and sends (issue 27 item 4): the source image, target and edit mask once
per group, the mask as one byte per pixel, the learner's shards without pixels, and the reward protos
(hence the rewards) unchanged by the per-group layout."""

import hashlib

import pytest
import torch

from cocoedit.actors.types import Condition, RolloutBatch
from cocoedit.cluster.simulate.measure import tensor_bytes
from cocoedit.cluster.train.scores import to_edits
from cocoedit.rewards.config import PixelConfig
from cocoedit.rewards.edits import decode_edit
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


def fixed_batch() -> RolloutBatch:
    """G groups x K edits of S x S random images: each edit keeps its source's left half; a target."""
    g = torch.Generator().manual_seed(7)
    src = torch.randint(0, 256, (G, 3, S, S), generator=g, dtype=torch.uint8)
    tgt = torch.randint(0, 256, (G, 3, S, S), generator=g, dtype=torch.uint8)
    edited = torch.randint(0, 256, (G * K, 3, S, S), generator=g, dtype=torch.uint8)
    edited[:, :, :, : S // 2] = src.repeat_interleave(K, 0)[:, :, :, : S // 2]
    mask = torch.zeros(G, 1, S, S)
    mask[0, :, 8:24, 16:] = 1.0
    mask[1, :, 4:20, 12:30] = 1.0
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

import pytest
import torch

from cocoedit.actors.types import Condition, RolloutBatch


def _batch(version: int, n: int, offset: int = 0, group_size: int = 1) -> RolloutBatch:
    """n edits in groups of `group_size`: one condition row per group, row k = offset + k."""
    rows = -(-n // group_size)
    return RolloutBatch(
        edit_ids=[f"e{offset + i}" for i in range(n)],
        item_ids=["item"] * n,
        group_ids=[f"0:item{(offset + i) // group_size}" for i in range(n)],
        instructions=["make it blue"] * n,
        policy_version=version,
        x0=torch.arange(n * 8, dtype=torch.float32).reshape(n, 2, 4) + 100 * offset,
        source_latents=torch.arange(rows, dtype=torch.float32).view(rows, 1, 1).expand(rows, 2, 4) + offset,
        condition=Condition(
            {"embeds": (torch.arange(rows) + offset)[:, None].float(), "ids": torch.zeros(5, 3)},
            frozenset({"embeds"}),
        ),
        group_index=torch.arange(n) // group_size,
        edited_images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        source_images=torch.zeros(rows, 3, 4, 4, dtype=torch.uint8),
        edit_masks=torch.zeros(rows, 1, 4, 4, dtype=torch.uint8),
        sigmas=torch.linspace(1, 0, 11),
        sampler="dpm2",
        height=4,
        width=4,
        seeds=list(range(offset, offset + n)),
    )


def test_cat_then_select_round_trips() -> None:
    a, b = _batch(3, 2), _batch(3, 3, offset=2)
    cat = RolloutBatch.cat([a, b])
    assert len(cat) == 5 and cat.edit_ids == ["e0", "e1", "e2", "e3", "e4"]
    assert cat.condition.tensors["embeds"].shape == (5, 1)
    assert cat.condition.tensors["ids"].shape == (5, 3)  # shared tensor is not concatenated
    back = cat.select([2, 3, 4])
    assert back.edit_ids == b.edit_ids and back.seeds == b.seeds
    assert torch.equal(back.x0, b.x0)
    assert torch.equal(back.condition.tensors["embeds"], b.condition.tensors["embeds"])


def test_group_rows_follow_their_edits_through_cat_select_and_per_edit() -> None:
    """Edit i's condition is the row of its group however the batch is concatenated or cut."""
    a, b = _batch(0, 4, group_size=2), _batch(0, 3, offset=4, group_size=3)  # rows 0, 1 | row 4
    cat = RolloutBatch.cat([a, b])
    assert len(cat.condition) == 3 and cat.group_index.tolist() == [0, 0, 1, 1, 2, 2, 2]
    expected = [0, 0, 1, 1, 4, 4, 4]  # the embeds value of each edit's group row
    assert cat.edit_condition(list(range(7))).tensors["embeds"].flatten().tolist() == expected
    assert cat.edit_source_latents([3, 5])[:, 0, 0].tolist() == [1.0, 4.0]
    part = cat.select([5, 1, 0])
    assert len(part.condition) == 2 and part.source_latents.shape == (2, 2, 4)  # only the rows it uses
    assert part.edit_condition([0, 1, 2]).tensors["embeds"].flatten().tolist() == [4, 0, 0]
    flat = cat.per_edit()
    assert len(flat.condition) == 7 and flat.group_index.tolist() == list(range(7))
    assert flat.condition.tensors["embeds"].flatten().tolist() == expected
    assert torch.equal(flat.source_latents, cat.edit_source_latents(list(range(7))))


def test_cat_refuses_mixed_versions() -> None:
    with pytest.raises(ValueError, match="different versions"):
        RolloutBatch.cat([_batch(1, 2), _batch(2, 2)])


def test_batch_refuses_rows_that_do_not_match() -> None:
    good = _batch(0, 4, group_size=2)
    with pytest.raises(ValueError, match="one row per condition row"):
        RolloutBatch(**{**good.__dict__, "source_latents": torch.zeros(4, 2, 4)})

import pytest
import torch

from cocoedit.actors.types import Condition, RolloutBatch


def _batch(version: int, n: int, offset: int = 0) -> RolloutBatch:
    return RolloutBatch(
        edit_ids=[f"e{offset + i}" for i in range(n)],
        item_ids=["item"] * n,
        group_ids=["0:item"] * n,
        instructions=["make it blue"] * n,
        policy_version=version,
        x0=torch.arange(n * 8, dtype=torch.float32).reshape(n, 2, 4) + 100 * offset,
        source_latents=torch.zeros(n, 2, 4),
        condition=Condition(
            {"embeds": torch.arange(n)[:, None].float(), "ids": torch.zeros(5, 3)}, frozenset({"embeds"})
        ),
        edited_images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        source_images=torch.zeros(n, 3, 4, 4, dtype=torch.uint8),
        edit_masks=torch.zeros(n, 1, 4, 4),
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


def test_cat_refuses_mixed_versions() -> None:
    with pytest.raises(ValueError, match="different versions"):
        RolloutBatch.cat([_batch(1, 2), _batch(2, 2)])

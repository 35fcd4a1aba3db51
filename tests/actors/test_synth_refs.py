"""The synthetic task's index: references the driver holds, items generated where they are used, bit for
bit the items a batch generation gives (runs measured before the change stay reproducible)."""

from __future__ import annotations

import pickle

import pytest
import torch

from cocoedit.actors.config import DataConfig
from cocoedit.actors.data import load_index, split_held_out
from cocoedit.actors.items import ItemPrefetcher, load_item
from cocoedit.actors.synth import synthetic_items
from cocoedit.actors.types import EditItem, GroupedItem, SynthRef

INDICES = (0, 1, 2, 3, 6, 9, 13)  # every task (index % 4), and items past the first few


def _same(a: EditItem, b: EditItem) -> None:
    assert (a.item_id, a.instruction, a.task) == (b.item_id, b.instruction, b.task)
    for name in ("source_image", "edit_mask", "target_image"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y), name


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("seed", [0, 7])
def test_a_reference_generates_the_batch_item_bit_for_bit(size: int, seed: int) -> None:
    batch = synthetic_items(max(INDICES) + 1, size, seed)
    for index in INDICES:
        ref = SynthRef(index, size, seed)
        assert ref.item_id == batch[index].item_id
        _same(load_item(ref), batch[index])
    # through the index the driver builds: training items, then the held-out ones after them
    train, held = split_held_out(DataConfig(image_size=size, synth_num=10, synth_seed=seed), 4)
    assert list(train) == [item.item_id for item in batch[:10]]
    assert all(isinstance(ref, SynthRef) for ref in [*train.values(), *held])
    for ref, item in zip(held, batch[10:], strict=True):
        _same(load_item(ref), item)
    # and as a rollout worker loads them: prefetched in the background, or generated on the spot
    grouped = [GroupedItem(train[batch[i].item_id], f"g{i}", f"g{i}:{k}", k) for i in (1, 2) for k in (0, 1)]
    prefetcher = ItemPrefetcher()
    prefetcher.prefetch(grouped[:2])
    resolved = prefetcher.resolve(grouped)
    assert (prefetcher.hits, prefetcher.misses) == (1, 1)
    for gi, i in zip(resolved, (1, 1, 2, 2), strict=True):
        _same(gi.loaded, batch[i])


def test_the_synthetic_index_holds_no_pixels() -> None:
    """The driver's index of the synthetic task pickles (as Ray sends it) to tens of bytes per item; it
    held every item's decoded images and mask before (~40 KB per item at 64 px)."""
    index = load_index(DataConfig(image_size=64, synth_num=256))
    assert len(index) == 256 and all(isinstance(ref, SynthRef) for ref in index.values())
    assert len(pickle.dumps(index)) < 100 * 256
    with pytest.raises(TypeError, match="item 'synth-s0-00000' is not loaded yet: resolve its SynthRef"):
        _ = GroupedItem(index["synth-s0-00000"], "g", "g:0", 0).loaded


def test_a_size_too_small_is_refused_by_the_index_not_later() -> None:
    with pytest.raises(ValueError, match="synthetic image size 16 px is too small; use at least 24 px"):
        load_index(DataConfig(image_size=16, synth_num=4))
    with pytest.raises(ValueError, match="synthetic image size 16 px is too small"):
        split_held_out(DataConfig(image_size=16, synth_num=4), 2)

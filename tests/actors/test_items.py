"""Reading items on the rollout workers: the prefetcher, checks at read time, one center-crop everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoedit.actors.config import DataConfig, RolloutConfig
from cocoedit.actors.data import load_index
from cocoedit.actors.edit import load_image
from cocoedit.actors.epochs import EpochSampler, grouped_items
from cocoedit.actors.items import ItemError, ItemPrefetcher, read_item
from cocoedit.actors.rollout import RolloutWorker
from cocoedit.actors.synth import write_synthetic_dataset
from cocoedit.actors.types import GroupedItem, ItemRef
from tests.actors.test_rollout import policy_config


@pytest.fixture(scope="module")
def synth_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth") / "d", 6, 32, seed=2)


def _epoch(manifest: Path, n_items: int = 3, group_size: int = 2) -> list[GroupedItem]:
    index = load_index(DataConfig(manifest=str(manifest), image_size=32))
    return grouped_items(EpochSampler(list(index), n_items, group_size, seed=0).next_epoch(), index)


def test_prefetched_items_are_the_items_read_on_the_spot(synth_manifest):
    items = _epoch(synth_manifest)
    prefetcher = ItemPrefetcher()
    prefetcher.prefetch(items)
    resolved = prefetcher.resolve(items)
    assert (prefetcher.hits, prefetcher.misses) == (3, 0)  # one read per item, not per edit
    assert resolved[0].item is resolved[1].item
    for gi, got in zip(items, resolved, strict=True):
        assert (got.group_id, got.edit_id, got.seed) == (gi.group_id, gi.edit_id, gi.seed)
        want = read_item(gi.item)  # type: ignore[arg-type]
        assert torch.equal(got.item.source_image, want.source_image)
        assert torch.equal(got.item.edit_mask, want.edit_mask)
    assert prefetcher.resolve(resolved) == resolved  # EditItems pass through
    ItemPrefetcher().resolve(items)  # nothing prefetched: read now

    fresh = ItemPrefetcher()
    fresh.resolve(items)
    assert (fresh.hits, fresh.misses) == (0, 3)


def test_a_file_changed_after_validation_is_refused_when_a_worker_reads_it(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "outside.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ds / "a.png")
    Image.fromarray(np.triu(np.full((8, 8), 255, np.uint8), 2)).save(ds / "m.png")
    line = {"id": "a", "source": "a.png", "instruction": "do", "mask": "m.png"}
    (ds / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    (ref,) = load_index(DataConfig(manifest=str(ds / "manifest.jsonl"), image_size=8)).values()
    assert isinstance(ref, ItemRef)
    (ds / "a.png").unlink()
    (ds / "a.png").symlink_to(tmp_path / "outside.png")
    prefetcher = ItemPrefetcher()
    prefetcher.prefetch([GroupedItem(ref, "0:a", "0:a:0", 0)])  # the error waits for resolve
    with pytest.raises(ItemError, match=r"line 1 \(item 'a'\): source: .* outside the dataset root"):
        prefetcher.resolve([GroupedItem(ref, "0:a", "0:a:0", 0)])


def test_cocoedit_edit_crops_as_training_does(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 61, 3), dtype=np.uint8)).save(tmp_path / "s.png")
    Image.fromarray(np.tril(np.full((40, 61), 255, np.uint8))).save(tmp_path / "m.png")
    line = {"id": "a", "source": "s.png", "instruction": "do", "mask": "m.png"}
    (tmp_path / "manifest.jsonl").write_text(json.dumps(line) + "\n")
    (ref,) = load_index(DataConfig(manifest=str(tmp_path / "manifest.jsonl"), image_size=24)).values()
    trained = read_item(ref).source_image  # type: ignore[arg-type]
    edited = torch.from_numpy(np.array(load_image(tmp_path / "s.png", 24))).permute(2, 0, 1)
    assert torch.equal(edited, trained)


def test_a_worker_samples_refs_exactly_as_it_samples_the_items(tiny_model_dir, synth_manifest):
    worker = RolloutWorker(
        policy_config(tiny_model_dir("flux_kontext")), RolloutConfig(num_steps=2, batch_size=6)
    )
    refs = _epoch(synth_manifest)
    loaded = [GroupedItem(read_item(gi.item), gi.group_id, gi.edit_id, gi.seed) for gi in refs]  # type: ignore[arg-type]
    worker.prefetch(refs)
    from_refs = worker.sample(refs, 0)
    from_items = worker.sample(loaded, 0)
    assert torch.equal(from_refs.edited_images, from_items.edited_images)
    assert torch.equal(from_refs.source_images, from_items.source_images)
    assert torch.equal(from_refs.edit_masks, from_items.edit_masks)
    assert from_refs.item_ids == from_items.item_ids and from_refs.instructions == from_items.instructions
    assert "read_s" in from_refs.timings

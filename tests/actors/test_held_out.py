"""The held-out split: the fixed evaluation set comes from items the training loop never draws."""

import hashlib
import random
from pathlib import Path

import pytest

from cocoedit.actors.config import DataConfig
from cocoedit.actors.data import split_held_out
from cocoedit.actors.items import load_item
from cocoedit.actors.synth import synthetic_items, write_synthetic_dataset


def test_synthetic_task_holds_out_items_after_the_training_ones() -> None:
    cfg = DataConfig(image_size=32, synth_num=6, synth_seed=3)
    train, held = split_held_out(cfg, 2)
    assert list(train) == [f"synth-s3-{k:05d}" for k in range(6)]
    assert [i.item_id for i in held] == ["synth-s3-00006", "synth-s3-00007"]
    again = synthetic_items(8, 32, 3)  # the same items as a run of 8 would generate
    assert all(load_item(a).instruction == b.instruction for a, b in zip(held, again[6:], strict=True))
    assert split_held_out(cfg, 0)[1] == []


def test_data_file_gives_up_the_lowest_hashed_ids_whatever_the_order(tmp_path: Path) -> None:
    manifest = write_synthetic_dataset(tmp_path / "data", num=10, size=32, seed=0)
    cfg = DataConfig(manifest=str(manifest), image_size=32)
    train, held = split_held_out(cfg, 3)
    ids = [f"synth-s0-{k:05d}" for k in range(10)]
    lowest = sorted(ids, key=lambda i: hashlib.sha256(i.encode()).digest())[:3]
    assert sorted(i.item_id for i in held) == sorted(lowest)
    assert sorted(train) == sorted(set(ids) - set(lowest))
    lines = manifest.read_text().splitlines()
    random.Random(0).shuffle(lines)
    shuffled = tmp_path / "data" / "shuffled.jsonl"
    shuffled.write_text("\n".join(lines) + "\n")
    _, held_again = split_held_out(DataConfig(manifest=str(shuffled), image_size=32), 3)
    assert sorted(i.item_id for i in held_again) == sorted(lowest)
    with pytest.raises(ValueError, match="leaves none to train on: lower run.eval_items"):
        split_held_out(cfg, 10)

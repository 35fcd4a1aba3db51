"""The synthetic edit task: exact masks and targets, balance, determinism, the synth CLI."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cocoedit.actors.synth import (
    BACKGROUNDS,
    COLOURS,
    MAX_INSTRUCTION_CHARS,
    PLACES,
    SHAPES,
    TASKS,
    TEMPLATES,
    place_phrase,
    rasterize,
    synthetic_example,
    synthetic_items,
    vocabulary,
    write_synthetic_dataset,
)
from cocoedit.cluster.cli import main


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_synth_writes_a_manifest_check_accepts_with_identical_bytes_across_runs(tmp_path, capsys):
    for name in ("a", "b"):
        argv = ["data", "synth", "--out", str(tmp_path / name), "--num", "64", "--size", "64", "--seed", "0"]
        assert main(argv) == 0
    first, second = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(first) == 1 + 3 * 64  # manifest + source, mask, target per item
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first), "synthetic dataset bytes differ between two runs"

    capsys.readouterr()
    assert main(["data", "check", str(tmp_path / "a" / "manifest.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "items: 64 (64 with a target)" in out
    assert "tasks: add 16, background 16, recolour 16, remove 16" in out
    assert "image sizes: 64x64 (64)" in out


def test_cli_synth_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "old.txt").write_text("x")
    assert main(["data", "synth", "--out", str(tmp_path), "--num", "4"]) == 1
    assert "not empty" in capsys.readouterr().out


@pytest.mark.parametrize("size", [32, 64])
def test_masks_are_exactly_the_edited_footprint_or_the_background(size):
    for index in range(48):
        ex = synthetic_example(index, size, seed=3)
        item = ex.item
        assert item.source_image.shape == (3, size, size) and item.source_image.dtype == torch.uint8
        assert item.target_image is not None and item.target_image.shape == (3, size, size)
        assert item.edit_mask.shape == (1, size, size) and item.edit_mask.dtype == torch.float32
        mask = item.edit_mask[0].numpy()
        assert set(np.unique(mask)) <= {0.0, 1.0}
        diff = (item.source_image != item.target_image).any(0).numpy()
        assert not (diff & (mask == 0)).any(), f"item {index}: pixels change outside the mask"
        if item.task == "background":
            objects = [rasterize(s, size) for s in ex.objects]
            background = ~np.any(objects, axis=0) if objects else np.ones((size, size), bool)
            np.testing.assert_array_equal(mask.astype(bool), background)
        else:
            assert ex.edited is not None
            np.testing.assert_array_equal(mask.astype(bool), rasterize(ex.edited, size))
        # solid saturated objects on neutral backgrounds: every masked pixel really changes
        np.testing.assert_array_equal(diff, mask.astype(bool))


def test_scenes_are_small_disjoint_and_match_the_instruction():
    size = 32
    for index in range(64):
        ex = synthetic_example(index, size, seed=0)
        scene = list(ex.objects) + ([ex.edited] if ex.item.task == "add" else [])
        assert 1 <= len(scene) <= 3
        assert all(s.r >= 5 for s in scene)
        assert len({(s.colour, s.kind) for s in scene}) == len(scene)  # "the red circle" is unique
        footprints = [rasterize(s, size) for s in scene]
        assert int(np.sum(footprints, axis=0).max()) == 1  # no overlaps
        text = ex.item.instruction
        if ex.edited is not None:
            assert f"{ex.edited.colour} {ex.edited.kind}" in text
        if ex.item.task == "add":
            cy, cx = np.argwhere(rasterize(ex.edited, size)).mean(0)
            if "center" not in text:
                assert ("left" in text) == (cx < size / 2) and ("top" in text) == (cy < size / 2)
        assert set(text.split()) <= set(vocabulary())


def test_every_possible_instruction_fits_the_tiny_tokenizer_budget():
    longest = 0
    for task, templates in TEMPLATES.items():
        for template in templates:
            for colour, new_colour, shape, place in itertools.product(
                COLOURS, [*COLOURS, *BACKGROUNDS], SHAPES, PLACES
            ):
                text = template.format(
                    colour=colour, new_colour=new_colour, shape=shape, where=place_phrase(place)
                )
                assert "{" not in text, (task, template)
                longest = max(longest, len(text.replace(" ", "")))
    assert longest <= MAX_INSTRUCTION_CHARS


def test_tasks_are_balanced_and_generation_is_deterministic():
    items = synthetic_items(64, 32, seed=0)
    assert Counter(it.task for it in items) == {t: 16 for t in TASKS}
    again = synthetic_items(8, 32, seed=0)  # item i does not depend on num
    for a, b in zip(items[:8], again, strict=True):
        assert a.item_id == b.item_id and a.instruction == b.instruction
        assert torch.equal(a.source_image, b.source_image) and torch.equal(a.edit_mask, b.edit_mask)
        assert torch.equal(a.target_image, b.target_image)
    other = synthetic_items(8, 32, seed=1)
    assert any(not torch.equal(a.source_image, b.source_image) for a, b in zip(again, other, strict=True))
    assert len({it.item_id for it in items}) == 64
    colours_seen = {w for it in items for w in it.instruction.split() if w in COLOURS}
    shapes_seen = {w for it in items for w in it.instruction.split() if w in SHAPES}
    assert colours_seen == set(COLOURS) and shapes_seen == set(SHAPES)


def test_too_small_images_and_empty_sets_fail_loudly(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        synthetic_items(4, 16, seed=0)
    with pytest.raises(ValueError, match=">= 1"):
        synthetic_items(0, 32, seed=0)
    manifest = write_synthetic_dataset(tmp_path / "d", 4, 32, seed=0)
    assert manifest.name == "manifest.jsonl" and len(manifest.read_text().splitlines()) == 4

"""Edit data: validation, readers, crop/resize alignment, polarity, the index, the epoch sampler."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoedit.actors.config import DataConfig
from cocoedit.actors.data import load_edit_data, load_index, scan
from cocoedit.actors.epochs import EpochSampler, epoch_items, grouped_items
from cocoedit.actors.items import ItemError, center_crop_resize, load_item, read_item
from cocoedit.actors.manifests import Problem
from cocoedit.actors.synth import synthetic_items, write_synthetic_dataset
from cocoedit.actors.types import ItemRef
from cocoedit.cluster.cli import main


def _png(path: Path, array: np.ndarray) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path.name


def _rgb(h: int, w: int, value: int = 100) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


def _mask(h: int, w: int, box: tuple[int, int, int, int], inside: int = 255) -> np.ndarray:
    m = np.full((h, w), 255 - inside, np.uint8)
    y0, y1, x0, x1 = box
    m[y0:y1, x0:x1] = inside
    return m


def _write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _broken_manifest(tmp_path: Path) -> Path:
    _png(tmp_path / "a.png", _rgb(16, 16))
    _png(tmp_path / "a_mask.png", _mask(16, 16, (4, 8, 4, 8)))
    _png(tmp_path / "small_mask.png", _mask(8, 8, (2, 4, 2, 4)))
    ok = {"id": "ok", "source": "a.png", "instruction": "make it red", "mask": "a_mask.png"}
    return _write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            json.dumps(ok),
            json.dumps({**ok, "id": "missing", "source": "nope.png"}),
            json.dumps({**ok, "id": "small", "mask": "small_mask.png"}),
            json.dumps({**ok, "id": "empty", "instruction": "  "}),
            '{"id": "broken", "source": ',
        ],
    )


def test_check_lists_every_problem_with_its_line_number(tmp_path, capsys):
    manifest = _broken_manifest(tmp_path)
    assert main(["data", "check", str(manifest)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"line 2: source: file not found: {tmp_path / 'nope.png'}"
    assert lines[1] == "line 3: mask: mask is 8x8 but source is 16x16"
    assert lines[2] == "line 4: instruction: is empty"
    assert lines[3].startswith("line 5: json: not valid JSON")
    assert "4 problem(s)" in lines[4]
    with pytest.raises(ValueError) as err:
        load_edit_data(manifest, "manifest", image_size=8)
    for n in (2, 3, 4, 5):
        assert f"line {n}: " in str(err.value)


def test_validation_reports_duplicates_unknown_fields_missing_fields_and_unreadable_images(tmp_path):
    _png(tmp_path / "a.png", _rgb(16, 16))
    _png(tmp_path / "m.png", _mask(16, 16, (0, 8, 0, 8)))
    _png(tmp_path / "t.png", _rgb(12, 16))
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    _png(tmp_path / "blank.png", np.zeros((16, 16), np.uint8))
    ok = {"id": "x", "source": "a.png", "instruction": "do it", "mask": "m.png"}
    manifest = _write_jsonl(
        tmp_path / "m.jsonl",
        [
            json.dumps(ok),
            json.dumps(ok),
            json.dumps({**ok, "id": "y", "colour": "red"}),
            json.dumps({"id": "z", "source": "a.png", "mask": "m.png"}),
            json.dumps({**ok, "id": "w", "source": "junk.png"}),
            json.dumps({**ok, "id": "v", "target": "t.png"}),
            "[1, 2]",
            "",
            json.dumps({**ok, "id": "u", "group": "g1", "task": "recolour"}),
            json.dumps({**ok, "id": "t", "mask": "blank.png"}),
        ],
    )
    problems = scan(DataConfig(manifest=str(manifest)), validate="full").problems
    assert [(p.line, p.field) for p in problems] == [
        (2, "id"),
        (3, "colour"),
        (4, "instruction"),
        (5, "source"),
        (6, "target"),
        (7, "json"),
        (10, "mask"),
    ]
    assert "first on line 1" in problems[0].reason
    assert "unknown field" in problems[1].reason and "missing" in problems[2].reason
    assert (
        "cannot read image" in problems[3].reason
        and "target is 16x12 but source is 16x16" == problems[4].reason
    )
    assert problems[6].reason.startswith("marks no pixel to edit with mask_polarity=edit_white")
    assert str(Problem(3, "f", "r")) == "line 3: f: r"


def test_crop_resize_keeps_image_and_mask_aligned():
    # 60 x 90 -> centre square (cols 15..74) -> 30 x 30: a box on even pixels maps exactly
    image = torch.zeros(3, 60, 90, dtype=torch.uint8)
    mask = torch.zeros(1, 60, 90)
    image[:, 10:30, 25:55] = 255
    mask[:, 10:30, 25:55] = 1
    img, m = center_crop_resize(image, mask, 30)
    assert img.shape == (3, 30, 30) and img.dtype == torch.uint8 and m.shape == (1, 30, 30)
    expected = torch.zeros(1, 30, 30)
    expected[:, 5:15, 5:20] = 1
    assert torch.equal(m, expected)
    assert torch.equal((img[0] > 127).float(), expected[0])

    # an awkward ratio: mask stays binary and lines up with the image's bright blob
    image = torch.zeros(3, 80, 64, dtype=torch.uint8)
    mask = torch.zeros(1, 80, 64)
    image[:, 30:50, 10:28] = 255
    mask[:, 30:50, 10:28] = 1
    img, m = center_crop_resize(image, mask, 24)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    weights = img[0].float() / 255
    grid = torch.stack(torch.meshgrid(torch.arange(24.0), torch.arange(24.0), indexing="ij"))
    centroid_img = (grid * weights).sum((1, 2)) / weights.sum()
    centroid_mask = (grid * m[0]).sum((1, 2)) / m.sum()
    assert torch.allclose(centroid_img, centroid_mask, atol=0.5)
    assert abs(float(m.sum()) - float(weights.sum())) <= 6  # same area, up to boundary pixels


def test_cocoedit40k_flips_keep_white_masks_and_warns_when_polarity_looks_inverted(tmp_path):
    _png(tmp_path / "imgs" / "0.png", _rgb(20, 30, 50))
    # CoCoEdit-40K masks: white = KEEP; the object to edit is the black box
    _png(tmp_path / "masks" / "0.png", np.repeat(_mask(20, 30, (5, 10, 10, 15), inside=0)[..., None], 3, 2))
    metadata = _write_jsonl(
        tmp_path / "metadata.jsonl",
        [json.dumps({"prompt": "remove the box", "image": "imgs/0.png", "mask": "masks/0.png", "extra": 1})],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (item,) = load_edit_data(metadata, "cocoedit40k", image_size=20)
    assert item.item_id == "000001-0" and item.instruction == "remove the box"
    expected = torch.zeros(1, 20, 20)
    expected[:, 5:10, 5:10] = 1  # the crop drops 5 columns on the left
    assert torch.equal(item.edit_mask, expected)
    with pytest.warns(UserWarning, match="probably inverted: try mask_polarity=keep_white"):
        load_edit_data(metadata, "cocoedit40k", image_size=20, mask_polarity="edit_white")
    assert main(["data", "check", str(metadata), "--format", "cocoedit40k"]) == 0


def test_benchmask_folder_reader(tmp_path, capsys):
    _png(tmp_path / "0001.png", _rgb(16, 16, 10))
    _png(tmp_path / "0001_mask.png", _mask(16, 16, (0, 4, 0, 4)))
    Image.fromarray(_rgb(16, 24, 200)).save(tmp_path / "0002.jpg", quality=95)
    _png(tmp_path / "0002_mask.png", _mask(16, 24, (8, 16, 8, 16)))
    lines = [
        json.dumps({"key": "0001", "instruction": "remove the cup", "task_type": "remove"}),
        json.dumps({"key": "0002", "instruction": "add a hat", "edit_type": "add", "language": "en"}),
    ]
    _write_jsonl(tmp_path / "instructions.jsonl", lines)
    items = load_edit_data(tmp_path, "benchmask", image_size=8)
    assert [(it.item_id, it.task) for it in items] == [("0001", "remove"), ("0002", "add")]
    assert items[0].edit_mask.sum() == 4 and items[1].source_image.shape == (3, 8, 8)
    assert items[1].edit_mask[0, 4:8, 2:6].sum() == 16  # rows 8..16, cols 8..16 -> crop cols 4..20 -> /2
    from_file = load_edit_data(tmp_path / "instructions.jsonl", "benchmask", image_size=8)
    assert [it.item_id for it in from_file] == ["0001", "0002"]

    (tmp_path / "0002_mask.png").unlink()
    assert main(["data", "check", str(tmp_path), "--format", "benchmask"]) == 1
    assert capsys.readouterr().out.startswith("line 2: mask: file not found")


def test_index_synthetic_in_memory_and_through_a_written_manifest(tmp_path):
    cfg = DataConfig(image_size=32, synth_num=8, synth_seed=5)
    in_memory = [load_item(ref) for ref in load_index(cfg).values()]  # SynthRefs, generated here
    assert len(in_memory) == 8 and in_memory[0].source_image.shape == (3, 32, 32)
    manifest = write_synthetic_dataset(tmp_path / "d", 8, 32, seed=5)
    index = load_index(DataConfig(manifest=str(manifest), image_size=32))
    assert list(index) == [it.item_id for it in in_memory]  # file order
    assert all(isinstance(ref, ItemRef) for ref in index.values())  # the driver holds no pixels
    for a, ref in zip(in_memory, index.values(), strict=True):  # PNG round trip is lossless
        b = read_item(ref)
        assert (a.item_id, a.instruction, a.task) == (b.item_id, b.instruction, b.task)
        assert torch.equal(a.source_image, b.source_image) and torch.equal(a.edit_mask, b.edit_mask)
        assert torch.equal(a.target_image, b.target_image)
    sampler = EpochSampler(list(index), n_items=2, group_size=2, seed=0)
    grouped = grouped_items(sampler.next_epoch(), index)
    assert [g.group_id for g in grouped][::2] == [f"0:{g.item.item_id}" for g in grouped][::2]
    assert grouped[0].item is grouped[1].item and isinstance(grouped[0].item, ItemRef)
    small = read_item(next(iter(load_index(DataConfig(manifest=str(manifest), image_size=16)).values())))
    assert small.source_image.shape == (3, 16, 16) and set(small.edit_mask.unique().tolist()) <= {0, 1}


def _epochs(sampler: EpochSampler, n: int) -> list[list[tuple[str, str, str, int]]]:
    return [[(d.item_id, d.group_id, d.edit_id, d.seed) for d in sampler.next_epoch()] for _ in range(n)]


def test_sampler_groups_determinism_passes_and_resume():
    ids = [f"i{k}" for k in range(10)]
    sampler = EpochSampler(ids, n_items=4, group_size=3, seed=7)
    epochs = _epochs(sampler, 5)
    assert epochs == _epochs(EpochSampler(ids, 4, 3, seed=7), 5)
    assert epochs != _epochs(EpochSampler(ids, 4, 3, seed=8), 5)
    seeds = [s for epoch in epochs for *_, s in epoch]
    assert len(set(seeds)) == len(seeds)  # distinct noise in a group, and across the run
    for e, epoch in enumerate(epochs):
        assert len(epoch) == 12
        items = [item for item, *_ in epoch]
        assert len(set(items)) == 4 and all(items.count(i) == 3 for i in set(items))
        assert all(g == f"{e}:{i}" for i, g, *_ in epoch)
        assert len({edit for _, _, edit, _ in epoch}) == 12
    # shuffled passes: 10 items, 4 per epoch -> the first 20 draws cover every item twice
    walk = [item for epoch in epochs[:5] for item, *_ in epoch[::3]]
    assert sorted(walk[:10]) == sorted(ids) and sorted(walk[10:20]) == sorted(ids)

    first = EpochSampler(ids, 4, 3, seed=7)
    _epochs(first, 2)
    state = json.loads(json.dumps(first.state_dict()))  # checkpoints store it as JSON
    resumed = EpochSampler(ids, 4, 3, seed=7)
    resumed.load_state_dict(state)
    assert _epochs(resumed, 3) == epochs[2:]
    with pytest.raises(ValueError, match="n_items"):
        EpochSampler(ids, 5, 3, seed=7).load_state_dict(state)


def test_sampler_bans_items_and_fails_loudly_when_too_few_remain():
    ids = [f"i{k}" for k in range(6)]
    sampler = EpochSampler(ids, n_items=2, group_size=2, seed=0)
    sampler.ban(["i0", "i1", "i2"])
    drawn = {d.item_id for _ in range(10) for d in sampler.next_epoch()}
    assert drawn == {"i3", "i4", "i5"}
    with pytest.raises(ValueError, match="leaves 1 of 6 items but data.n_items=2"):
        sampler.ban(["i3", "i4"])
    with pytest.raises(ValueError, match="unknown item ids"):
        sampler.ban(["nope"])
    with pytest.raises(ValueError, match="between 1 and the 6 items"):
        EpochSampler(ids, n_items=7, group_size=2)

    items = {it.item_id: it for it in synthetic_items(3, 32, seed=0)}
    sampler = EpochSampler(list(items), n_items=3, group_size=2, seed=0)
    grouped = grouped_items(sampler.next_epoch(), items)
    assert len(grouped) == 6 and all(g.group_id == f"0:{g.item.item_id}" for g in grouped)
    with pytest.raises(KeyError, match="not in the index"):
        grouped_items(sampler.next_epoch(), dict(list(items.items())[:1]))


def test_peek_shows_the_next_epoch_without_drawing_it():
    ids = [f"i{k}" for k in range(5)]
    sampler = EpochSampler(ids, n_items=3, group_size=2, seed=3)
    for _ in range(4):  # crosses pass boundaries
        peeked = sampler.peek_epoch()
        state = sampler.state_dict()
        assert sampler.peek_epoch() == peeked and sampler.state_dict() == state
        assert sampler.next_epoch() == peeked


def _dataset(tmp_path: Path, n: int) -> Path:
    lines = []
    for k in range(n):
        _png(tmp_path / f"s{k}.png", _rgb(16, 24, 8 * k))
        _png(tmp_path / f"m{k}.png", _mask(16, 24, (2, 6, 2, 6)))
        lines.append(
            json.dumps({"id": f"i{k}", "source": f"s{k}.png", "instruction": "do", "mask": f"m{k}.png"})
        )
    return _write_jsonl(tmp_path / "manifest.jsonl", lines)


def test_validate_checks_every_item_a_sample_or_none(tmp_path):
    manifest = _dataset(tmp_path, 30)
    cfg = DataConfig(manifest=str(manifest), image_size=8, validate_sample=5)
    assert scan(cfg).checked == 5 and len(scan(cfg).refs) == 30
    assert scan(cfg, validate="full").checked == 30 and scan(cfg, validate="off").checked == 0
    assert scan(dataclasses.replace(cfg, validate_sample=30)).checked == 30  # small sets: every item

    (tmp_path / "s7.png").unlink()  # a broken item that a sample may miss: the worker names it
    off = load_index(dataclasses.replace(cfg, validate="off"))
    with pytest.raises(ItemError, match=r"manifest.jsonl line 8 \(item 'i7'\): source: file not found"):
        read_item(off["i7"])
    with pytest.raises(ValueError, match="line 8: source: file not found"):
        load_index(dataclasses.replace(cfg, validate="full"))


def test_index_holds_a_few_hundred_bytes_per_item(tmp_path):
    index = load_index(DataConfig(manifest=str(_dataset(tmp_path, 20)), validate="off"))
    per_item = len(pickle.dumps(list(index.values()))) / len(index)
    assert per_item < 300, per_item  # what a shard of refs costs on the wire; the driver holds the same


def _header_only_png(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height (its pixel data is a few bytes: never decoded here)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_paths_that_leave_the_dataset_are_listed_problems(tmp_path, capsys):
    ds, outside = tmp_path / "ds", tmp_path / "outside"
    _png(outside / "a.png", _rgb(16, 16))
    _png(outside / "m.png", _mask(16, 16, (0, 8, 0, 8)))
    _png(ds / "a.png", _rgb(16, 16))
    _png(ds / "m.png", _mask(16, 16, (0, 8, 0, 8)))
    (ds / "link.png").symlink_to(outside / "a.png")
    (ds / "sub").symlink_to(outside)
    ok = {"id": "ok", "source": "a.png", "instruction": "do", "mask": "m.png"}
    manifest = _write_jsonl(
        ds / "manifest.jsonl",
        [
            json.dumps(ok),
            json.dumps({**ok, "id": "up", "source": "../outside/a.png"}),
            json.dumps({**ok, "id": "abs", "mask": str(outside / "m.png")}),
            json.dumps({**ok, "id": "link", "source": "link.png"}),
            json.dumps({**ok, "id": "dir", "target": "sub/a.png"}),
            json.dumps({**ok, "id": "etc", "source": "../../../../../../../../etc/passwd"}),
            json.dumps({**ok, "id": "inside", "source": "sub/../a.png"}),
        ],
    )
    problems = scan(DataConfig(manifest=str(manifest)), validate="full").problems
    assert [(p.line, p.field) for p in problems] == [
        (2, "source"),
        (3, "mask"),
        (4, "source"),
        (5, "target"),
        (6, "source"),
    ]
    assert "leaves the dataset root" in problems[0].reason and "absolute path" in problems[1].reason
    assert f"resolves to {outside / 'a.png'}, outside the dataset root {ds}" in problems[2].reason
    assert (
        "outside the dataset root" in problems[3].reason and "leaves the dataset root" in problems[4].reason
    )

    # data.root: paths are relative to it, and it is the boundary
    lists = tmp_path / "lists"
    lists.mkdir()
    other = _write_jsonl(
        lists / "m.jsonl", [json.dumps(ok), json.dumps({**ok, "id": "x", "source": "../ds/a.png"})]
    )
    problems = scan(DataConfig(manifest=str(other), root=str(ds)), validate="full").problems
    assert [(p.line, p.field) for p in problems] == [(2, "source")]
    assert main(["data", "check", str(other), "--root", str(ds)]) == 1
    assert capsys.readouterr().out.startswith("line 2: source: '../ds/a.png' leaves the dataset root")

    # benchmask keys become paths: a key cannot climb out either
    _write_jsonl(ds / "instructions.jsonl", [json.dumps({"key": "../outside/a", "instruction": "do"})])
    problems = scan(DataConfig(manifest=str(ds), format="benchmask"), validate="full").problems
    assert [(p.line, p.field) for p in problems] == [(1, "key")]


def test_files_must_be_regular_and_within_the_size_limits(tmp_path):
    _png(tmp_path / "a.png", _rgb(16, 16))
    _png(tmp_path / "m.png", _mask(16, 16, (0, 8, 0, 8)))
    _png(tmp_path / "big.png", _rgb(64, 64))
    (tmp_path / "folder.png").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    _header_only_png(tmp_path / "bomb.png", 14000, 14000)  # over Pillow's own 179 Mpx refusal
    ok = {"id": "ok", "source": "a.png", "instruction": "do", "mask": "m.png"}
    manifest = _write_jsonl(
        tmp_path / "manifest.jsonl",
        [
            json.dumps(ok),
            json.dumps({**ok, "id": "folder", "source": "folder.png"}),
            json.dumps({**ok, "id": "pipe", "target": "pipe.png"}),
            json.dumps({**ok, "id": "bomb", "source": "bomb.png"}),
            json.dumps({**ok, "id": "pixels", "target": "big.png"}),
        ],
    )
    cfg = DataConfig(manifest=str(manifest), max_image_pixels=32 * 32)
    problems = scan(cfg, validate="full").problems
    assert [(p.line, p.field) for p in problems] == [
        (2, "source"),
        (3, "target"),
        (4, "source"),
        (5, "target"),
    ]
    assert problems[0].reason.endswith("folder.png is not a regular file")
    assert problems[1].reason.endswith("pipe.png is not a regular file")
    assert "196000000 pixels" in problems[2].reason and "data.max_image_pixels=1024" in problems[2].reason
    assert "is 64x64 = 4096 pixels" in problems[3].reason
    size = (tmp_path / "a.png").stat().st_size
    problems = scan(dataclasses.replace(cfg, max_file_bytes=size - 1), validate="full").problems
    assert f"a.png is {size} bytes, over data.max_file_bytes={size - 1}" in problems[0].reason


def test_the_data_file_is_read_with_a_bound(tmp_path, monkeypatch):
    import cocoedit.actors.manifests as manifests

    (tmp_path / "zero.jsonl").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.jsonl")
    for name in ("zero.jsonl", "pipe.jsonl"):
        (problem,) = scan(DataConfig(manifest=str(tmp_path / name))).problems
        assert (problem.line, problem.field) == (0, "file") and problem.reason.endswith(
            "is not a regular file"
        )
    manifest = _dataset(tmp_path, 3)
    size = manifest.stat().st_size
    (problem,) = scan(DataConfig(manifest=str(manifest), max_manifest_bytes=size - 1)).problems
    assert problem.reason.endswith(f"is {size} bytes, over data.max_manifest_bytes={size - 1}; raise it")
    monkeypatch.setattr(manifests, "MAX_LINE_BYTES", 90)
    long = json.dumps({"id": "i9", "source": "s0.png", "instruction": "x" * 100, "mask": "m0.png"})
    manifest.write_text(manifest.read_text() + long + "\n")
    result = scan(DataConfig(manifest=str(manifest)))
    assert [str(p) for p in result.problems] == ["line 4: json: line longer than 90 bytes"]
    assert len(result.refs) == 3


def test_epoch_items_come_with_the_next_epoch_to_prefetch():
    index = {it.item_id: it for it in synthetic_items(5, 32, seed=0)}
    sampler = EpochSampler(list(index), n_items=2, group_size=3, seed=1)
    items, upcoming = epoch_items(sampler, index)
    again, _ = epoch_items(sampler, index)
    assert len(items) == 6 and [(g.group_id, g.seed) for g in again] == [
        (g.group_id, g.seed) for g in upcoming
    ]

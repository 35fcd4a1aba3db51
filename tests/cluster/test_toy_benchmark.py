"""A new benchmark is one reader module plus one line in BENCHMARKS.

This test module is the toy benchmark's reader: a `toy.csv` (key, task, instruction, image path) with
masks `masks/<key>_mask.png`, scored by the ImgEdit judge protocol. With its one registry line,
`cocoedit eval --bench toy` accepts it, reads it as EditItems and runs a whole (source-edit) evaluation
grouped by its tasks, and `eval.judge=auto` picks its protocol; no other file names it.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Optional

import pytest

from cocoedit.actors.types import EditItem
from cocoedit.cluster.cli import main
from cocoedit.cluster.config import load_config
from cocoedit.cluster.eval.benchmarks import BENCHMARKS, Benchmark, load_benchmark
from cocoedit.cluster.eval.benchmarks.benchmask import check_masks, load_rows, mask_for
from cocoedit.cluster.eval.scores import judge_protocol

SIZE = 32


def items(
    data: Path, work_dir: Path, image_size: int, mask_polarity: Optional[str], language: str
) -> list[EditItem]:
    """The toy benchmark's reader."""
    with open(data / "toy.csv", newline="") as f:
        records = list(csv.DictReader(f))
    rows = [
        {
            "key": r["key"],
            "original": r["key"],
            "instruction": r["instruction"],
            "task": r["task"],
            "image": data / r["image"],
            "mask": mask_for(data, r["key"], r["key"]),
        }
        for r in records
    ]
    check_masks(rows, data, "toy")
    return load_rows(rows, work_dir, image_size, mask_polarity)


@pytest.fixture
def toy_bench(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The toy benchmark registered, and a folder of it (3 items of `cocoedit data synth`)."""
    monkeypatch.setitem(BENCHMARKS, "toy", Benchmark("toy", __name__, protocol="imgedit"))  # the one line
    synth = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(synth), "--num", "3", "--size", str(SIZE)]) == 0
    records = [json.loads(line) for line in (synth / "manifest.jsonl").read_text().splitlines()]
    data = tmp_path / "toy"
    (data / "masks").mkdir(parents=True)
    with open(data / "toy.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["key", "task", "instruction", "image"])
        for n, r in enumerate(records):
            shutil.copy(synth / r["source"], data / f"img{n}.png")
            shutil.copy(synth / r["mask"], data / "masks" / f"t{n}_mask.png")
            writer.writerow([f"t{n}", ["recolour", "remove"][n % 2], r["instruction"], f"img{n}.png"])
    return data


def test_unknown_benchmark_names_the_registry(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"--bench 'toy' is unknown; expected one of \['gedit', 'imgedit'"):
        load_benchmark("toy", tmp_path, tmp_path, SIZE)


def test_a_registered_benchmark_is_read_judged_and_evaluated(toy_bench: Path, tmp_path: Path) -> None:
    """~10 s: read, the protocol under eval.judge=auto, one whole `cocoedit eval` with source edits."""
    read = load_benchmark("toy", toy_bench, tmp_path / "work", SIZE, max_items=2)
    assert [i.item_id for i in read] == ["t0", "t1"] and [i.task for i in read] == ["recolour", "remove"]
    assert read[0].source_image.shape == (3, SIZE, SIZE) and read[0].edit_mask.sum() > 0
    cfg = load_config(None, []).eval
    assert judge_protocol("toy", cfg, judge_enabled=False) == "imgedit"

    out = tmp_path / "run"
    argv = ["eval", "--bench", "toy", "--data", str(toy_bench), "--out", str(out), "--edits", "source"]
    assert main([*argv, f"eval.image_size={SIZE}", "eval.judge=none"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["bench"] == "toy" and sorted(results["groups"]) == ["recolour", "remove"]
    assert results["edits"] == "source" and len(results["items"]) == 3

"""`cocoedit data curate` on Ray Data without the MLLM (masks, pixel filters, duplicates, balance,
resume, report), and the input layouts. The MLLM path runs in test_curate_mllm.py (slow).

Input: 24 synthetic pairs at 64 px (6 per edit type) with JPEG targets, +-3% colour, a 1 px shift on a
third, plus an exact duplicate, a repeated id and an item whose target file is missing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from cocoedit.actors.config import DataConfig
from cocoedit.actors.data import scan
from cocoedit.actors.synth import synthetic_example
from cocoedit.cluster.config import load_config
from cocoedit.cluster.curate.filters import FILTERS
from cocoedit.cluster.curate.inputs import LAYOUTS, detect_layout, plan_shards, read_shard
from cocoedit.cluster.curate.mask_eval import Degradation, degrade_pair
from cocoedit.cluster.curate.masks import mask_iou
from cocoedit.cluster.curate.pipeline import curate, make_plan, prepare_shards
from tests.browser import open_in_chromium

ROOT = Path(__file__).resolve().parents[2]
SIZE, NUM, SHARD = 64, 24, 8


def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.jsonl (our layout, image paths) + images; truth.json maps id -> exact mask file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("curate_in")
    (root / "img").mkdir()
    rng = np.random.default_rng(0)
    rows, truth = [], {}
    for i in range(NUM):
        item = synthetic_example(i, SIZE, seed=11).item
        source = item.source_image.permute(1, 2, 0).numpy()
        target = item.target_image.permute(1, 2, 0).numpy()
        _, target = degrade_pair(source, target, rng, Degradation(jpeg_quality=90), shift=i % 3 == 0)
        _png(root / "img" / f"{i}_s.png", source)
        Image.fromarray(target).save(root / "img" / f"{i}_t.jpg", quality=95)
        _png(root / "img" / f"{i}_m.png", (item.edit_mask[0].numpy() * 255).astype(np.uint8))
        truth[item.item_id] = f"img/{i}_m.png"
        rows.append(
            {
                "id": item.item_id,
                "source": f"img/{i}_s.png",
                "target": f"img/{i}_t.jpg",
                "instruction": item.instruction,
                "task": item.task,
            }
        )
    rows.append({**rows[1], "id": "copy-of-1"})  # exact duplicate
    rows.append({**rows[2], "source": rows[5]["source"], "target": rows[5]["target"]})  # repeated id 2
    rows.append({**rows[3], "id": "broken", "target": "img/missing.png"})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "truth.json").write_text(json.dumps(truth))
    return root


def _cfg(*overrides: str):  # type: ignore[no-untyped-def]
    return load_config(None, ["curate.mllm=false", f"curate.shard_size={SHARD}", *overrides])


@pytest.fixture(scope="module")
def finished(dataset: Path, tmp_path_factory: pytest.TempPathFactory, ray_local) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("curate_out") / "run"
    return out, curate(_cfg(), [dataset / "data.jsonl"], out)


def _check(path: Path, fmt: str = "manifest"):  # type: ignore[no-untyped-def]
    """Every item of a written data file checked as training reads it."""
    return scan(DataConfig(manifest=str(path), format=fmt), validate="full")  # type: ignore[arg-type]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "curated.jsonl").read_text().splitlines()]


def test_curated_manifest_passes_check_and_its_masks_match_the_truth(finished, dataset: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    out, summary = finished
    manifest = out / "manifest.jsonl"
    result = _check(manifest)
    assert result.problems == [] and len(result.refs) == summary["kept"] > 0
    truth = json.loads((dataset / "truth.json").read_text())
    ious = []
    for rec in result.refs:
        with Image.open(out / rec.mask) as m, Image.open(dataset / truth[rec.item_id]) as t:
            ious.append(mask_iou(np.asarray(m) >= 128, np.asarray(t) >= 128))
        assert rec.target is not None and rec.target.endswith(".jpg")  # the JPEG is copied, not re-encoded
    assert np.mean(ious) >= 0.9, ious
    # the background edits are global (area > max_area): dropped, and the rest balanced
    tasks = {r.task for r in result.refs}
    assert tasks == {"recolour", "remove", "add"}


def test_funnel_counts_every_item_once_and_names_the_reasons(finished) -> None:  # type: ignore[no-untyped-def]
    out, summary = finished
    records = _records(out)
    assert len(records) == NUM + 3 == summary["rows"]
    funnel = summary["funnel"]
    assert list(funnel) == list(FILTERS)
    names = list(FILTERS)
    for a, b in zip(names, names[1:], strict=False):
        assert funnel[a]["passed"] == funnel[b]["reached"]
    assert funnel["readable"]["reached"] == NUM + 3 and funnel["balance"]["passed"] == summary["kept"]
    # no judge in this run (curate.mllm=false): the judge filter checked nothing, its rate is not 100 %
    assert (
        funnel["judge"]["reached"] > 0 and funnel["judge"]["checked"] == 0 and funnel["judge"]["rate"] is None
    )
    assert funnel["mask_area"]["checked"] == funnel["mask_area"]["reached"]
    assert funnel["mask_area"]["rate"] == funnel["mask_area"]["passed"] / funnel["mask_area"]["reached"] < 1
    by_id = {}
    for r in records:
        by_id.setdefault(r["id"], []).append(r)
    (broken,) = by_id["broken"]
    assert broken["rejected_by"] == "readable" and "file not found" in broken["error"]
    assert by_id["copy-of-1"][0]["rejected_by"] == "exact_duplicate"
    assert by_id["copy-of-1"][0]["duplicate_of"] == records[1]["id"]
    assert [r["rejected_by"] for r in by_id[records[2]["id"]]][1] == "unique_id"
    backgrounds = [r for r in records if r["task"] == "background" and r["id"] != "broken"]
    assert backgrounds and all(r["rejected_by"] == "mask_area" for r in backgrounds)
    assert all(r["area"] > 0.6 for r in backgrounds)
    manifest_ids = [json.loads(line)["id"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(manifest_ids) == sorted(r["id"] for r in records if r["rejected_by"] is None)


def test_report_has_funnel_histograms_failures_and_gallery(finished) -> None:  # type: ignore[no-untyped-def]
    out, summary = finished

    class Dom(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.tags: dict[str, int] = {}
            self.imgs: list[str] = []
            self.text = ""

        def handle_starttag(self, tag: str, attrs: list) -> None:
            self.tags[tag] = self.tags.get(tag, 0) + 1
            if tag == "img":
                self.imgs.append(dict(attrs)["src"])

        def handle_data(self, data: str) -> None:
            self.text += data

    dom = Dom()
    dom.feed((out / "report.html").read_text())
    assert dom.tags["svg"] == 3 and dom.tags["table"] >= 5
    assert all(src.startswith("data:image/png;base64,") for src in dom.imgs) and len(dom.imgs) >= 12
    for name in FILTERS:
        assert name in dom.text
    assert "dropped by: exact_duplicate of" in dom.text and "file not found" in dom.text
    assert f"{summary['funnel']['mask_area']['passed']}" in dom.text
    assert "judge" in dom.text and "off (checked none)" in dom.text


def test_report_opens_in_headless_chromium(finished) -> None:  # type: ignore[no-untyped-def]
    out, _ = finished
    dom = open_in_chromium(out / "report.html")
    images = (out / "report.html").read_text().count("<img ")
    assert f'data-images="{images}"' in dom and 'data-broken-images="0"' in dom


def test_cocoedit40k_output_and_balanced_num_from_the_finished_shards(finished, dataset: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    out, _ = finished
    # a rerun into a finished OUT reuses every shard (no Ray work) and only re-selects and re-writes
    again = curate(_cfg(), [dataset / "data.jsonl"], out, num=6, fmt="cocoedit40k")
    assert again["shards_processed"] == [] and again["shards_done_before"] == [0, 1, 2, 3]
    result = _check(out / "metadata.jsonl", "cocoedit40k")
    assert result.problems == [] and len(result.refs) == 6
    by_id = {r["id"]: r for r in _records(out)}
    assert (
        sorted(by_id[r.item_id]["task"] for r in result.refs)
        == ["add"] * 2 + ["recolour"] * 2 + ["remove"] * 2
    )
    for rec in result.refs:  # white = keep: the inverse of our edit mask
        with Image.open(out / rec.mask) as keep, Image.open(out / by_id[rec.item_id]["mask"]) as edit:
            assert np.array_equal(np.asarray(keep) >= 128, np.asarray(edit) < 128)
    curate(_cfg(), [dataset / "data.jsonl"], out)  # back to the module's manifest for the other tests


def test_a_rerun_with_other_settings_is_refused(finished, dataset: Path) -> None:  # type: ignore[no-untyped-def]
    out, _ = finished
    with pytest.raises(ValueError, match=r"mask.min_delta_e: 10.0 -> 12.0"):
        curate(_cfg("curate.mask.min_delta_e=12"), [dataset / "data.jsonl"], out)


def test_interrupted_run_resumes_with_only_the_remaining_shards(
    dataset: Path, tmp_path: Path, ray_local
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run"

    class Interrupt(Exception):
        pass

    def stop_after_first(index: int) -> None:
        raise Interrupt(f"stopped after shard {index}")

    with pytest.raises(Interrupt):
        curate(_cfg(), [dataset / "data.jsonl"], out, on_commit=stop_after_first)
    done = sorted(p.name for p in (out / "shards").glob("*.jsonl"))
    assert len(done) == 1
    first = out / "shards" / done[0]
    stamp = first.stat().st_mtime_ns
    summary = curate(_cfg(), [dataset / "data.jsonl"], out)
    assert summary["shards_done_before"] == [int(done[0][:5])]
    assert sorted(summary["shards_processed"]) == sorted({0, 1, 2, 3} - {int(done[0][:5])})
    assert first.stat().st_mtime_ns == stamp  # the finished shard was not redone
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert [len(r["todo"]) for r in runs] == [4, 3] and len(runs[0]["committed"]) == 1
    assert _check(out / "manifest.jsonl").problems == [] and summary["rows"] == NUM + 3


def test_layouts_jsonl_paths_and_parquet_bytes_give_the_same_records(dataset: Path, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (dataset / "data.jsonl").read_text().splitlines()][:6]
    table = pa.table(
        {
            "img_id": [r["id"] for r in rows],
            "turn_index": [1] * len(rows),
            "source_img": [{"bytes": (dataset / r["source"]).read_bytes(), "path": None} for r in rows],
            "target_img": [{"bytes": (dataset / r["target"]).read_bytes(), "path": None} for r in rows],
            "mask_img": [{"bytes": b"", "path": None} for _ in rows],
            "instruction": [r["instruction"] for r in rows],
        }
    )
    pq.write_table(table, tmp_path / "mb.parquet", row_group_size=4)
    assert detect_layout(tmp_path / "mb.parquet", "auto") == "magicbrush"
    assert detect_layout(dataset / "data.jsonl", "auto") == "ours"
    with pytest.raises(ValueError, match="lacks the hqedit layout's columns"):
        detect_layout(dataset / "data.jsonl", "hqedit")
    shards = plan_shards([tmp_path / "mb.parquet"], shard_size=3)
    assert [(s.row_group, s.offset, s.count, s.first_row) for s in shards] == [
        (0, 0, 3, 0),
        (0, 3, 1, 3),
        (1, 0, 2, 4),
    ]
    assert [r["id"] for s in shards for r in read_shard(s, "magicbrush")] == [f"{r['id']}-1" for r in rows]
    cfg = _cfg().curate
    from_parquet = [
        json.loads(x) for s in shards
        for x in prepare_shards({"shard": [json.dumps(dataclasses.asdict(s))]}, cfg, str(tmp_path / "a"), "magicbrush")["record"]
    ]  # fmt: skip
    (jsonl_shard,) = plan_shards([dataset / "data.jsonl"], shard_size=6)[:1]
    from_jsonl = [
        json.loads(x)
        for x in prepare_shards(
            {"shard": [json.dumps(dataclasses.asdict(jsonl_shard))]}, cfg, str(tmp_path / "b"), "ours"
        )["record"]
    ]
    assert len(from_parquet) == len(from_jsonl) == 6
    for p, j in zip(from_parquet, from_jsonl, strict=True):
        assert p["error"] is None and j["error"] is None
        assert (p["area"], p["psnr"], p["digest"], p["hashes"]) == (
            j["area"],
            j["psnr"],
            j["digest"],
            j["hashes"],
        )
        assert p["target"].endswith(".jpg")  # embedded bytes are written as they came


def test_bad_inputs_are_refused_with_the_fix(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "odd.jsonl").write_text(json.dumps({"image": "a.png", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match="match no known layout"):
        make_plan(_cfg(), [tmp_path / "odd.jsonl"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_plan(_cfg(), [tmp_path / "nope.jsonl"], tmp_path / "out")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="expected a .jsonl or .parquet"):
        make_plan(_cfg(), [tmp_path / "a.txt"], tmp_path / "out")
    # a row that is not JSON and a huge image are item errors, not crashes
    big = tmp_path / "big.png"
    _png(big, np.zeros((300, 300, 3), np.uint8))
    lines = ["{not json", json.dumps({"source": str(big), "target": str(big), "instruction": "x"})]
    (tmp_path / "rows.jsonl").write_text("\n".join(lines) + "\n")
    (shard,) = plan_shards([tmp_path / "rows.jsonl"], 10)
    cfg = _cfg("curate.max_image_pixels=1000").curate
    recs = [
        json.loads(x)
        for x in prepare_shards(
            {"shard": [json.dumps(dataclasses.asdict(shard))]}, cfg, str(tmp_path / "o"), "ours"
        )["record"]
    ]
    assert "not valid JSON" in recs[0]["error"] and "exceeds curate.max_image_pixels=1000" in recs[1]["error"]
    assert set(LAYOUTS) == {"ours", "magicbrush", "instructpix2pix", "hqedit", "gedit"}


@pytest.mark.slow
def test_killed_cli_run_resumes_with_only_the_remaining_shards(dataset: Path, tmp_path: Path) -> None:
    """The real thing: `cocoedit data curate` SIGKILLed with its local Ray cluster mid-run, then rerun
    (about a minute: two Ray start-ups). Run: pytest -m slow tests/cluster/test_curate.py -k killed"""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "cocoedit.cluster.cli", "data", "curate", "--input", str(dataset / "data.jsonl"),
           "--out", str(out), "curate.mllm=false", "curate.shard_size=2", "run.ray_num_cpus=1"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list((out / "shards").glob("*.jsonl"))) < 2:
            time.sleep(0.2)
        done_first = sorted(p.name for p in (out / "shards").glob("*.jsonl"))
        assert len(done_first) >= 2
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_first = sorted(p.name for p in (out / "shards").glob("*.jsonl"))
    total = 14  # 27 rows in shards of 2
    assert 2 <= len(done_first) < total, "the run finished before it could be interrupted"
    stamps = {n: (out / "shards" / n).stat().st_mtime_ns for n in done_first}
    rerun = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"{len(done_first)} of {total} shards finished before" in rerun.stderr
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert sorted(runs[-1]["committed"]) == sorted(set(range(total)) - {int(n[:5]) for n in done_first})
    assert all((out / "shards" / n).stat().st_mtime_ns == s for n, s in stamps.items())
    assert _check(out / "manifest.jsonl").problems == []

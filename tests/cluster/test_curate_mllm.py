"""`cocoedit data curate` with the MLLM stage: a Ray Data actor holding the tiny Qwen2.5-VL judge on
vLLM refines instructions and judges targets, and grounds the items that have no target. The tiny
judge is untrained: its refinement and grounding answers do not parse, and must be counted and listed
with their answers, the original instruction kept, target-less items dropped, nothing guessed.

Slow (an engine start inside a Ray actor, 20-50 s on CPU, plus the answers):
    pytest -m slow tests/cluster/test_curate_mllm.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cocoedit.actors.config import DataConfig
from cocoedit.actors.data import scan
from cocoedit.actors.synth import synthetic_example
from cocoedit.cluster.config import load_config
from cocoedit.cluster.curate.pipeline import curate

ROOT = Path(__file__).resolve().parents[2]
PAIRS, NO_TARGET = 12, 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("curate_mllm_in")
    rows = []
    for i in range(PAIRS + NO_TARGET):
        item = synthetic_example(i, 64, seed=21).item
        Image.fromarray(item.source_image.permute(1, 2, 0).numpy()).save(root / f"{i}_s.png")
        row = {"id": item.item_id, "source": f"{i}_s.png", "instruction": item.instruction, "task": item.task}
        if i < PAIRS:
            Image.fromarray(item.target_image.permute(1, 2, 0).numpy()).save(root / f"{i}_t.png")
            row["target"] = f"{i}_t.png"
        rows.append(row)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.slow
def test_curate_with_the_tiny_vllm_judge_counts_every_failure(
    inputs: Path, tmp_path: Path, ray_local
) -> None:  # type: ignore[no-untyped-def]
    from cocoedit.rewards.tiny_judge import build_tiny_judge

    judge_dir = build_tiny_judge(tmp_path / "tiny_judge")
    cfg = load_config(
        ROOT / "cluster/configs/tiny_cpu_vllm.yaml",
        [
            f"rewards.mllm.model_path={judge_dir}",
            "rewards.mllm.generate_timeout_s=600",
            "curate.shard_size=8",
            "curate.mllm_batch=8",
            "curate.annotate.refine_max_tokens=24",
            "curate.annotate.ground_max_tokens=24",
            "curate.filters.min_judge_score=0.5",
        ],
    )
    out = tmp_path / "run"
    summary = curate(cfg, [inputs / "data.jsonl"], out)
    records = [json.loads(line) for line in (out / "curated.jsonl").read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    with_target = [r for r in records if r["target"]]
    asked = [r for r in with_target if r["mllm_todo"]]
    assert asked and all(r["task"] != "background" for r in asked)  # global edits never reach the MLLM

    ref = summary["refinement"]
    assert ref["attempted"] == len(asked) and ref["parsed"] + ref["failed"] == ref["attempted"]
    assert ref["parsed"] == 0  # the tiny judge does not write the JSON object
    assert {f["id"] for f in ref["failures"]} == {r["id"] for r in asked}
    assert all(f["error"].startswith("parse failure") for f in ref["failures"])
    assert summary["judge"]["scored"] == len(asked) and summary["judge"]["failed"] == 0

    ground = summary["grounding"]
    assert ground["attempted"] == NO_TARGET and ground["parsed"] == 0 and ground["failed"] == NO_TARGET
    for r in records:
        if not r["target"]:
            assert r["rejected_by"] == "readable" and r["error"].startswith("grounding failed: parse failure")
            assert r["ground_answer"] is not None

    for r in asked:
        assert 0.0 <= r["judge_score"] <= 1.0 and r["judge_instruction"] == r["instruction"]
        if r["rejected_by"] is None:
            assert r["judge_score"] >= 0.5
        elif r["judge_score"] < 0.5:
            assert r["rejected_by"] == "judge"
    kept = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(kept) == summary["kept"] == summary["funnel"]["balance"]["passed"]
    for entry in kept:  # failed refinement: the original instruction, unchanged
        assert entry["instruction"] == by_id[entry["id"]]["instruction"]
    assert scan(DataConfig(manifest=str(out / "manifest.jsonl")), validate="full").problems == []
    report = (out / "report.html").read_text()
    assert (
        f"Refinement failures ({ref['failed']})" in report and f"Grounding failures ({NO_TARGET})" in report
    )
    assert np.isfinite([r["judge_score"] for r in asked]).all()

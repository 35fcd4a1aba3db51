"""`cocoedit data curate`: editing datasets -> region-masked training sets, on Ray Data.

    cocoedit data curate --config FILE --input IN [IN ...] --out DIR [--num N]
                         [--format manifest|cocoedit40k] [key=value ...]

IN: JSONL or Parquet files (or folders of them) of (source, target, instruction[, id, task]) in one of
the LAYOUTS (images as paths relative to the file, absolute paths, embedded bytes, Hugging Face image
structs {"bytes", "path"}, or data: URIs). Runs on the Ray cluster of $RAY_ADDRESS (`ray job submit`) or
a local one on 127.0.0.1 (`run.ray_num_cpus`).

1. Plan: the inputs are cut into shards of `curate.shard_size` rows (JSONL byte offsets, Parquet row
   groups); only file metadata is read. OUT/plan.json pins the inputs and settings.
2. Ray Data: one task per shard reads its rows (never the whole dataset in one process), copies the
   images to OUT/items/<shard>/, computes the edit mask from the pair (cluster/curate/masks.py), its area, the
   keep-region PSNR/SSIM of the target (rewards/metrics.py) and the hashes for deduplication; then
   (`curate.mllm`) actors each holding one vLLM engine (rewards/annotate.py) refine the instruction and
   judge the target, or ground items without a target (box masks), for the items that passed the
   cheap filters.
3. The driver writes each shard's records to OUT/shards/<shard>.jsonl as soon as all its items are
   back; that file is the shard's commit. A rerun skips committed shards, so an interrupted run
   resumes with the remaining ones.
4. Finish: per-item filters (mask area, keep PSNR/SSIM, judge score), duplicate ids, exact and near
   duplicates, then a sample balanced over edit types; OUT/manifest.jsonl (or metadata.jsonl with
   keep-white masks for `--format cocoedit40k`), OUT/curated.jsonl (every item, its numbers and why it
   was dropped), OUT/summary.json and OUT/report.html.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from cocoedit.cluster.curate.filters import (
    edit_type,
    final_instruction,
    select,
)
from cocoedit.cluster.curate.inputs import (
    Shard,
    detect_layout,
    input_files,
    plan_shards,
)
from cocoedit.cluster.curate.stages import (
    AnnotateStage,
    prepare_shards,
)

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

log = logging.getLogger("cocoedit.curate")

PLAN_FILE = "plan.json"


def _settings(cfg: Config) -> dict[str, Any]:
    """What a record depends on: a rerun into the same OUT must have the same."""
    from cocoedit.cluster.config import to_dict

    c = cfg.curate
    pinned: dict[str, Any] = {
        "layout": c.layout,
        "shard_size": c.shard_size,
        "max_image_pixels": c.max_image_pixels,
        "mask": to_dict(c.mask),
        "filters_before_mllm": {
            k: v
            for k, v in to_dict(c.filters).items()
            if k in ("min_area", "max_area", "min_keep_psnr_db", "min_keep_ssim")
        },
        "mllm": c.mllm,
    }
    if c.mllm:
        judge = to_dict(cfg.rewards.mllm)
        pinned["annotate"] = to_dict(c.annotate)
        pinned["ground_margin"] = c.ground_margin
        pinned["judge"] = {
            k: judge[k]
            for k in (
                "model_path",
                "score_mode",
                "prompt_version",
                "seed",
                "dtype",
                "image_size",
                "logprobs_k",
            )
        }
    return pinned


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} -> {b!r}"]


def _write_json_atomic(path: Path, value: Any, lines: bool = False) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    text = "".join(json.dumps(v) + "\n" for v in value) if lines else json.dumps(value, indent=1)
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_plan(
    cfg: Config, inputs: Sequence[str | Path], out: Path
) -> tuple[list[Shard], str, dict[str, Any]]:
    """(shards, resolved layout, plan) for a run into `out`; a rerun must find the same plan there."""
    files = input_files(inputs)
    layouts = {detect_layout(f, cfg.curate.layout) for f in files}
    if len(layouts) != 1:
        raise ValueError(f"the inputs have different layouts {sorted(layouts)}; curate them separately")
    layout = layouts.pop()
    shards = plan_shards(files, cfg.curate.shard_size)
    if not shards:
        raise ValueError(f"the inputs {[str(f) for f in files]} hold no rows")
    plan = {
        "inputs": [
            {"path": str(f), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files
        ],
        "layout": layout,
        "shards": len(shards),
        "rows": sum(s.count for s in shards),
        "settings": _settings(cfg),
    }
    path = out / PLAN_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        changes = _diff(old, plan)
        if changes:
            listing = "\n  ".join(changes[:20])
            raise ValueError(
                f"{out} holds a curation run with other inputs or settings; use a new --out, or delete {out} "
                f"to start over. Differences:\n  {listing}"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        _write_json_atomic(path, plan)
    return shards, layout, plan


def _shard_file(out: Path, index: int) -> Path:
    return out / "shards" / f"{index:05d}.jsonl"


def run_shards(
    cfg: Config,
    shards: Sequence[Shard],
    layout: str,
    out: Path,
    committed: list[int],
    on_commit: Optional[Callable[[int], None]] = None,
) -> None:
    """Process `shards` on Ray Data and commit each as its records come back, appending its index to
    `committed` (which thus holds what was done even when the run is interrupted). `on_commit(index)`
    runs after each commit (progress, tests)."""
    import ray
    from tqdm import tqdm

    c = cfg.curate
    (out / "shards").mkdir(parents=True, exist_ok=True)
    ds: ray.data.Dataset = ray.data.from_items(
        [{"shard": json.dumps(dataclasses.asdict(s))} for s in shards], override_num_blocks=len(shards)
    )
    ds = ds.map_batches(
        prepare_shards,  # type: ignore[arg-type]  # Ray types fn with one argument; fn_kwargs pass the rest
        batch_size=1,
        fn_kwargs={"cfg": c, "out": str(out), "layout": layout},
        num_cpus=c.cpus_per_task,
    )
    if c.mllm:
        judge = cfg.rewards.mllm
        ds = ds.map_batches(
            AnnotateStage,
            batch_size=c.mllm_batch,
            fn_constructor_kwargs={"judge_cfg": judge, "cfg": c, "out": str(out)},
            concurrency=c.mllm_actors,
            num_cpus=judge.scaling.cpus_per_replica,
            num_gpus=judge.scaling.gpus_per_replica or None,
        )
    expected = {s.index: s.count for s in shards}
    pending: dict[int, list[dict[str, Any]]] = {}
    with tqdm(total=len(shards), desc="shards", unit="shard", disable=None) as bar:
        for row in ds.iter_rows():
            rec = json.loads(row["record"])
            got = pending.setdefault(rec["shard"], [])
            got.append(rec)
            if len(got) == expected[rec["shard"]]:
                index = rec["shard"]
                _write_json_atomic(_shard_file(out, index), sorted(got, key=lambda r: r["row"]), lines=True)
                del pending[index]
                committed.append(index)
                bar.update(1)
                if on_commit is not None:
                    on_commit(index)


def load_records(out: Path, shards: Sequence[Shard]) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    for shard in shards:
        with open(_shard_file(out, shard.index), encoding="utf-8") as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def write_outputs(records: list[dict[str, Any]], kept: Sequence[str], out: Path, fmt: str) -> Path:
    """The manifest (edit = white masks) or CoCoEdit-40K metadata.jsonl (keep = white masks written
    to OUT/masks_keep_white) of the kept items, and curated.jsonl of every item; returns the data file."""
    from PIL import Image

    by_id = {r["id"]: r for r in records if r["rejected_by"] is None}
    lines = []
    for item_id in kept:
        rec = by_id[item_id]
        if fmt == "manifest":
            entry = {
                "id": rec["id"],
                "source": rec["source"],
                "instruction": final_instruction(rec),
                "mask": rec["mask"],
            }
            if rec["target"]:
                entry["target"] = rec["target"]
            if edit_type(rec) != "unknown":
                entry["task"] = edit_type(rec)
        else:
            keep_mask = Path("masks_keep_white") / Path(rec["mask"]).name
            (out / keep_mask).parent.mkdir(exist_ok=True)
            with Image.open(out / rec["mask"]) as m:
                Image.fromarray(255 - np.asarray(m.convert("L"))).save(out / keep_mask)
            entry = {
                "id": rec["id"],
                "prompt": final_instruction(rec),
                "image": rec["source"],
                "mask": str(keep_mask),
            }
        lines.append(entry)
    data = out / ("manifest.jsonl" if fmt == "manifest" else "metadata.jsonl")
    _write_json_atomic(data, lines, lines=True)
    _write_json_atomic(out / "curated.jsonl", records, lines=True)
    return data


def summarize(
    records: list[dict[str, Any]],
    selection: dict[str, Any],
    plan: dict[str, Any],
    cfg: Config,
    fmt: str,
    num: Optional[int],
) -> dict[str, Any]:
    """Everything the report shows, as JSON: funnel, counts, refinement / grounding / judge outcomes."""
    from cocoedit.cluster.config import to_dict
    from cocoedit.cluster.eval.evaluate import versions

    def failures(key: str) -> list[dict[str, Any]]:
        return [
            {"id": r["id"], "error": r[f"{key}_error"], "answer": (r.get(f"{key}_answer") or "")[:300]}
            for r in records
            if r.get(f"{key}_error")
        ]

    refine_tried = [r for r in records if "refine_answer" in r or "refine_error" in r]
    ground_tried = [r for r in records if "ground_answer" in r or "ground_error" in r]
    judged = [r for r in records if r.get("judged")]
    kept_ids = set(selection["kept"])
    tasks_in = Counter(edit_type(r) for r in records)
    tasks_kept = Counter(edit_type(r) for r in records if r["id"] in kept_ids and r["rejected_by"] is None)
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "inputs": plan["inputs"],
        "layout": plan["layout"],
        "rows": len(records),
        "kept": len(selection["kept"]),
        "num": num,
        "format": fmt,
        "funnel": selection["funnel"],
        "rejected": dict(Counter(r["rejected_by"] for r in records if r["rejected_by"])),
        "errors": [{"id": r["id"], "error": r["error"]} for r in records if r.get("error")][:200],
        "refinement": {
            "attempted": len(refine_tried),
            "parsed": sum(1 for r in refine_tried if r.get("refined")),
            "failed": len(failures("refine")),
            "failures": failures("refine"),
        },
        "grounding": {
            "attempted": len(ground_tried),
            "parsed": sum(1 for r in ground_tried if r.get("boxes")),
            "failed": len(failures("ground")),
            "failures": failures("ground"),
        },
        "judge": {
            "scored": sum(1 for r in judged if r.get("judge_score") is not None),
            "failed": len(failures("judge")),
            "failures": failures("judge"),
        },
        "tasks": {t: {"in": tasks_in[t], "kept": tasks_kept.get(t, 0)} for t in sorted(tasks_in)},
        "mask_from": dict(Counter(r.get("mask_from") or "none" for r in records)),
        "config": to_dict(cfg.curate),
        "settings": plan["settings"],
        "versions": versions(),
    }


def curate(
    cfg: Config,
    inputs: Sequence[str | Path],
    out: str | Path,
    num: Optional[int] = None,
    fmt: Optional[str] = None,
    on_commit: Optional[Callable[[int], None]] = None,
) -> dict[str, Any]:
    """A whole curation run into `out` (resuming one that was interrupted); returns its summary, with
    `shards_done_before` and `shards_processed` (this run) added. Ray must be initialised by the caller
    when shards remain (cli_curate starts or joins it)."""
    from cocoedit.cluster.curate.report import write_report

    out = Path(out)
    num = num if num is not None else cfg.curate.num
    fmt = fmt or cfg.curate.output_format
    if fmt not in ("manifest", "cocoedit40k"):
        raise ValueError(f"--format {fmt!r} must be 'manifest' or 'cocoedit40k'")
    shards, layout, plan = make_plan(cfg, inputs, out)
    done = [s for s in shards if _shard_file(out, s.index).is_file()]
    todo = [s for s in shards if not _shard_file(out, s.index).is_file()]
    if done:
        log.info(
            "%s: %d of %d shards finished before; processing the other %d",
            out,
            len(done),
            len(shards),
            len(todo),
        )
    processed: list[int] = []
    runs = out / "runs.jsonl"
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        if todo:
            run_shards(cfg, todo, layout, out, processed, on_commit)
    finally:
        with open(runs, "a", encoding="utf-8") as f:
            entry = {"started": started, "todo": [s.index for s in todo], "committed": processed}
            f.write(json.dumps(entry) + "\n")
    records = load_records(out, shards)
    selection = select(records, cfg.curate, num)
    data = write_outputs(records, selection["kept"], out, fmt)
    summary = summarize(records, selection, plan, cfg, fmt, num)
    summary["data"] = str(data)
    _write_json_atomic(out / "summary.json", summary)
    write_report(summary, records, out, cfg.curate.gallery_size)
    summary["shards_done_before"] = [s.index for s in done]
    summary["shards_processed"] = processed
    return summary


def summary_text(summary: dict[str, Any]) -> str:
    """The funnel and outcome counts as fixed-width text (what the command prints)."""
    lines = [f"{'filter':<18} {'reached':>8} {'checked':>8} {'passed':>8} {'rate':>7}"]
    for name, f in summary["funnel"].items():
        rate = f"{f['rate']:.1%}" if f["rate"] is not None else ("off" if f["reached"] else "n/a")
        lines.append(f"{name:<18} {f['reached']:>8} {f['checked']:>8} {f['passed']:>8} {rate:>7}")
    r, g, j = summary["refinement"], summary["grounding"], summary["judge"]
    lines.append(f"refinement: {r['attempted']} attempted, {r['parsed']} parsed, {r['failed']} failed")
    lines.append(f"grounding: {g['attempted']} attempted, {g['parsed']} parsed, {g['failed']} failed")
    lines.append(f"judge: {j['scored']} scored, {j['failed']} failed")
    lines.append(
        "kept per edit type: " + ", ".join(f"{t} {v['kept']}/{v['in']}" for t, v in summary["tasks"].items())
    )
    return "\n".join(lines)


def check_judge_fits(cfg: Config) -> None:
    """Ray Data waits forever for an actor the cluster has no GPU for: refuse that at once instead."""
    import ray

    gpus = cfg.rewards.mllm.scaling.gpus_per_replica
    have = ray.cluster_resources().get("GPU", 0.0)
    if cfg.curate.mllm and gpus > have:
        raise ValueError(
            f"curate.mllm runs the judge with rewards.mllm.scaling.gpus_per_replica={gpus:g} GPU per actor and "
            f"this cluster has {have:g}: set rewards.mllm.scaling.gpus_per_replica=0 (on CPU, e.g. the tiny judge "
            "of cluster/configs/tiny_cpu_vllm.yaml) or curate.mllm=false (masks and pixel filters only)"
        )


def cli_curate(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit data curate --input IN [IN ...] --out DIR [--num N] [--format F] [key=value ...]`."""
    from cocoedit.cluster.runtime.launch import init_ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if cfg.curate.mllm and cfg.rewards.mllm.model_path is None and not cfg.run.tiny:
        print(
            "data curate: rewards.mllm.model_path is not set; point it at a local Qwen2.5-VL-Instruct directory, "
            "set run.tiny=true for the tiny judge, or curate.mllm=false for masks and pixel filters only",
            file=sys.stderr,
        )
        return 1
    try:
        files = input_files(args.input)
        init_ray(cfg.run)
        check_judge_fits(cfg)
        summary = curate(cfg, files, args.out, args.num, args.format)
    except (ValueError, FileNotFoundError) as e:
        print(f"data curate: {e}", file=sys.stderr)
        return 1
    print(summary_text(summary))
    print(f"wrote {summary['kept']} items to {summary['data']}; report: {Path(args.out) / 'report.html'}")
    return 0

"""Benchmark evaluation: generate an edit per item, score it, write results.json and report.html.

    cocoedit eval --config FILE --bench gedit|imgedit|manifest --data DIR [--lora FILE|DIR ...] [--out DIR]
                  [--edits policy|target|source] [key=value ...]
    cocoedit eval compare RUN_A RUN_B [--out FILE.html]

1. Items: the benchmark layout is read (cluster/eval/benchmarks/, one reader per benchmark: GEdit-Bench parquet/JSON, ImgEdit basic
   JSON, our manifest), masks `<key>_mask.png`; GEdit/ImgEdit items are written once as a benchmask
   folder under OUT/bench and loaded through actors.data (same validation, same mask-polarity check as
   training data).
2. Edits (cluster/eval/generate.py, actors/generate.py): the policy samples one edit per item with the
   stock pipeline settings (eval.* config), on the local process or sharded over `eval.num_workers` Ray
   actors when a Ray cluster is there. Each edit is written atomically as OUT/edits/<key>.png, so a rerun
   after a crash generates only the missing ones (OUT/edits/settings.json pins the settings; a rerun
   with different settings is refused). `--edits target|source` writes the known targets / the
   untouched sources instead (oracle bounds).
3. Scores (cluster/eval/scores.py): masked PSNR/SSIM in both conventions (keep-only, pie; PSNR capped
   at 80 dB by the 1e-8 MSE floor of rewards.metrics), the exact synthetic instruction score when the
   items carry targets, and the MLLM judge (GEdit VIEScore SC/PQ/O 0-10 or ImgEdit 1-5 criteria) when
   eval.judge is not none. Judge answers are cached in OUT/judge.jsonl (keyed by edit bytes and judge
   settings).
4. Reports (cluster/eval/report.py): OUT/results.json (items, group tables, overall, settings,
   versions) and OUT/report.html.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.actors.generate import item_seed, lora_file
from cocoedit.actors.types import EditItem
from cocoedit.cluster.eval.benchmarks import safe_key
from cocoedit.cluster.eval.config import EvalConfig
from cocoedit.cluster.eval.generate import SETTINGS_FILE, generate_edits, read_png, sha256_file, write_atomic
from cocoedit.cluster.eval.scores import PSNR_CAP_DB, judge_protocol, pixel_scores, run_judge
from cocoedit.cluster.runtime.provenance import versions

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

log = logging.getLogger("cocoedit.eval")


def load_bench(bench: str, data: str | Path, cfg: EvalConfig, work_dir: Path) -> list[EditItem]:
    """The benchmark's items as EditItems (task = group / edit type), sized and limited by `cfg`."""
    from cocoedit.cluster.eval.benchmarks import load_benchmark

    if cfg.image_size is None:
        raise ValueError(
            "eval.image_size is unresolved: run_eval sets it to the editor's data.image_size first"
        )
    return load_benchmark(
        bench, data, work_dir, cfg.image_size, cfg.mask_polarity, cfg.language, cfg.max_items
    )


def evaluate(
    config: Config,
    bench: str,
    data: str | Path,
    out_dir: str | Path,
    lora: Optional[str] = None,
    edits: str = "policy",
    progress: bool = False,
) -> dict[str, Any]:
    """Generate (resumably), score and report one run; returns the results dict (also results.json)."""
    from cocoedit.cluster.eval.report import aggregate, write_html

    if lora is not None:
        lora = str(lora_file(lora))  # what `cocoedit edit --lora` takes: a file or a directory
    if config.eval.image_size is None:  # the editor's own resolution
        config = dataclasses.replace(
            config, eval=dataclasses.replace(config.eval, image_size=config.data.image_size)
        )
    cfg = config.eval
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    items = load_bench(bench, data, cfg, out)
    policy_cfg = None
    if edits == "policy":
        from cocoedit.cluster.runtime.launch import resolve_models

        config = resolve_models(
            dataclasses.replace(config, rewards=dataclasses.replace(config.rewards, weights={}))
        )
        policy_cfg = config.policy
    use_ray = edits == "policy" and _ray_available(config)
    counts = generate_edits(items, out, policy_cfg, cfg, lora, edits, use_ray, progress)
    log.info("edits: %d generated, %d already there", counts["generated"], counts["skipped"])

    edit_paths = [out / "edits" / f"{i.item_id}.png" for i in items]
    edit_bytes = [p.read_bytes() for p in edit_paths]
    edited = [read_png(p) for p in edit_paths]
    for item, e in zip(items, edited, strict=True):
        if e.shape != item.source_image.shape:
            raise ValueError(
                f"edit {item.item_id}.png is {tuple(e.shape)} but the source is {tuple(item.source_image.shape)}"
            )
    rows = pixel_scores(items, edited)

    protocol = judge_protocol(bench, cfg, config.rewards.mllm.enabled)
    judge_info = None
    if protocol is not None:
        judge_cfg = config.rewards.mllm
        if judge_cfg.model_path is None and not config.run.tiny:
            raise ValueError(
                "the judge needs rewards.mllm.model_path (a local Qwen2.5-VL-Instruct directory), or "
                "run.tiny=true for the tiny judge, or eval.judge=none"
            )
        judged, judge_info = run_judge(
            items, edited, edit_bytes, protocol, judge_cfg, cfg, out / "judge.jsonl"
        )
        for r, j in zip(rows, judged, strict=True):
            r.update(j.scores)
            if j.error:
                r["judge_error"] = j.error

    per_item = [
        {
            "id": item.item_id,
            "group": item.task or "(none)",
            "instruction": item.instruction,
            "edit": f"edits/{item.item_id}.png",
            "seed": item_seed(cfg.seed, item.item_id) if edits == "policy" else None,
            "edit_fraction": float(item.edit_mask.mean()),
            **row,
        }
        for item, row in zip(items, rows, strict=True)
    ]
    results = {
        "schema": 1,
        "bench": bench,
        "data": str(Path(data).resolve()),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "edits": edits,
        "model": None
        if policy_cfg is None
        else {"family": policy_cfg.family, "model_path": policy_cfg.model_path, "dtype": policy_cfg.dtype},
        "lora": None
        if lora is None
        else {"path": str(Path(lora).resolve()), "sha256": sha256_file(Path(lora))},
        "settings": json.loads((out / "edits" / SETTINGS_FILE).read_text()),
        "eval_config": dataclasses.asdict(cfg),
        "judge": judge_info,
        "metrics": {
            "keep": "keep-only: statistics over kept pixels (edit_mask < 0.5); SSIM map of scikit-image "
            "(Gaussian sigma 1.5) averaged over kept pixels",
            "pie": "pie: both images multiplied by the keep mask, then full-image PSNR / mean SSIM (PIE-Bench)",
            "psnr_cap_db": PSNR_CAP_DB,
            "synthetic": "clip(1 - MSE_E(edit, target) / MSE_E(source, target), 0, 1) inside the edit mask",
        },
        "generation": counts,
        "versions": versions(),
        "items": per_item,
    }
    results.update(aggregate(per_item, protocol))
    write_atomic(out / "results.json", json.dumps(results, indent=2).encode())
    write_html(results, items, edited, out / "report.html", gallery_size=cfg.gallery_size)
    return results


def _ray_available(config: Config) -> bool:
    import ray

    if ray.is_initialized():
        return True
    if config.run.ray_address or os.environ.get("RAY_ADDRESS"):
        from cocoedit.cluster.runtime.launch import init_ray

        init_ray(config.run)
        return True
    return False


def cli_eval(args: argparse.Namespace, config: Config) -> int:
    """`cocoedit eval [run] --bench B --data DIR [--lora FILE|DIR ...] [--out DIR] [--edits E] [key=value ...]`."""
    from cocoedit.cluster.eval.report import summary_text

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data:
        print("eval: --data DIR is required (the benchmark folder or manifest)", file=sys.stderr)
        return 2
    out = Path(args.out or Path(config.run.run_dir) / "eval" / args.bench)
    loras: list[Optional[str]] = list(args.lora) or [None]
    edits = getattr(args, "edits", "policy")
    if edits != "policy" and args.lora:
        print(f"eval: --lora has no effect with --edits {edits}", file=sys.stderr)
        return 2
    runs = []
    for lora in loras:
        # several LoRAs: one run each, side by side under OUT/<lora file stem>
        # (a directory such as RUN_DIR/lora by its last two parts: every run's is named lora)
        name = "_".join(Path(lora).parts[-2:]) if lora and Path(lora).is_dir() else Path(str(lora)).stem
        run_out = out if len(loras) == 1 else out / safe_key(name)
        results = evaluate(config, args.bench, args.data, run_out, lora, edits, progress=True)
        print(summary_text(results))
        print(f"results: {run_out / 'results.json'}\nreport:  {run_out / 'report.html'}")
        runs.append(run_out)
    if len(runs) > 1:
        from cocoedit.cluster.eval.report import compare_runs

        for other in runs[1:]:
            text, _ = compare_runs(runs[0], other, out / f"compare_{runs[0].name}_vs_{other.name}.html")
            print(text)
    return 0


def cli_compare(args: argparse.Namespace) -> int:
    """`cocoedit eval compare RUN_A RUN_B [--out FILE.html]`: per-group deltas (B - A), text + HTML."""
    from cocoedit.cluster.eval.report import compare_runs

    a, b = Path(args.run_a), Path(args.run_b)
    out = Path(args.out) if args.out else b / f"compare_{a.name}_vs_{b.name}.html"
    try:
        text, path = compare_runs(a, b, out)
    except (FileNotFoundError, ValueError) as e:
        print(f"eval compare: {e}", file=sys.stderr)
        return 1
    print(text)
    print(f"html: {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from cocoedit.cluster.cli import main as cli_main

    return cli_main(["eval", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())

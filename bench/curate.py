"""Data curation: mask quality against exact masks, mask-stage speed per CPU, and the Ray Data
pipeline against a plain loop over the same items, all measured in this one run.

    .venv/bin/python bench/curate.py [--iou-size 256] [--iou-per-task 25] [--size 512] [--items 48]
                                     [--cpus 2] [--shard-size 4]

Prints
  (1) mean / min mask IoU per edit type of `edit_mask` (default MaskConfig) against the synthetic task's
      exact masks, clean and degraded (JPEG 70, +-3% per-channel gain, 1 px shift on half the pairs);
  (2) the mask stage (edit_mask alone) in items/s on one CPU (this process, BLAS/OpenMP threads 1);
  (3) the curation stage 1 (read, copy, mask, keep PSNR/SSIM, hashes; `curate.mllm=false`) over the
      same items: a plain loop in this process vs Ray Data on a local cluster of --cpus CPUs, and the
      ratio. Ray start-up is excluded; the Ray Data run includes its planning and scheduling.
Absolute times depend on the load of the machine; the ratios are measured back to back.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # (2) and the plain loop are per CPU

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocoedit.actors.synth import TASKS, synthetic_example  # noqa: E402
from cocoedit.cluster.curate.mask_eval import Degradation, degrade_pair, iou_by_task  # noqa: E402
from cocoedit.cluster.curate.masks import MaskConfig, edit_mask  # noqa: E402


def examples(n: int, size: int, seed: int) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    out = []
    for i in range(n):
        item = synthetic_example(i, size, seed).item
        out.append(
            (
                item.task,
                item.source_image.permute(1, 2, 0).numpy(),
                item.target_image.permute(1, 2, 0).numpy(),
                item.edit_mask[0].numpy() > 0.5,
            )
        )
    return out


def iou_table(per_task: int, size: int) -> None:
    data = examples(per_task * len(TASKS), size, seed=7)
    print(f"(1) mask IoU vs exact masks, {per_task} pairs per edit type at {size} px (mean / min)")
    print(f"    {'edit type':<12} {'clean':>15} {'degraded':>15}")
    clean = iou_by_task(data, MaskConfig())
    degraded = iou_by_task(data, MaskConfig(), Degradation(), seed=0)
    for task in TASKS:
        c, d = clean[task], degraded[task]
        print(f"    {task:<12} {np.mean(c):>8.4f} / {np.min(c):.3f} {np.mean(d):>8.4f} / {np.min(d):.3f}")
    every_c, every_d = sum(clean.values(), []), sum(degraded.values(), [])
    print(
        f"    {'all':<12} {np.mean(every_c):>8.4f} / {np.min(every_c):.3f} {np.mean(every_d):>8.4f} / {np.min(every_d):.3f}"
    )


def write_dataset(folder: Path, n: int, size: int) -> Path:
    """n degraded synthetic pairs (JPEG targets) as our JSONL layout with image paths."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i, (task, source, target, _) in enumerate(examples(n, size, seed=8)):
        source, target = degrade_pair(source, target, rng, Degradation(), shift=i % 2 == 1)
        Image.fromarray(source).save(folder / f"{i}_s.jpg", quality=95)
        Image.fromarray(target).save(folder / f"{i}_t.jpg", quality=95)
        rows.append(
            {
                "id": f"b{i}",
                "source": f"{i}_s.jpg",
                "target": f"{i}_t.jpg",
                "instruction": "edit",
                "task": task,
            }
        )
    path = folder / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--iou-size", type=int, default=256)
    parser.add_argument("--iou-per-task", type=int, default=25)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--items", type=int, default=48)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=4)
    args = parser.parse_args()

    iou_table(args.iou_per_task, args.iou_size)

    pairs = [(s, t) for _, s, t, _ in examples(args.items, args.size, seed=9)]
    rng = np.random.default_rng(1)
    pairs = [degrade_pair(s, t, rng, Degradation(), shift=i % 2 == 1) for i, (s, t) in enumerate(pairs)]
    edit_mask(*pairs[0], MaskConfig())  # imports and first-call set-up out of the timing
    t0 = time.perf_counter()
    for s, t in pairs:
        edit_mask(s, t, MaskConfig())
    mask_s = time.perf_counter() - t0
    print(
        f"(2) mask stage at {args.size} px, one CPU: {len(pairs) / mask_s:.2f} items/s ({1000 * mask_s / len(pairs):.0f} ms/item)"
    )

    from cocoedit.cluster.config import load_config
    from cocoedit.cluster.curate.pipeline import plan_shards, prepare_shards, run_shards
    from cocoedit.cluster.runtime.launch import init_ray

    work = Path(tempfile.mkdtemp(prefix="cocoedit_bench_curate_"))
    try:
        data = write_dataset(work, args.items, args.size)
        cfg = load_config(
            None,
            ["curate.mllm=false", f"curate.shard_size={args.shard_size}", f"run.ray_num_cpus={args.cpus}"],
        )
        shards = plan_shards([data], args.shard_size)
        t0 = time.perf_counter()
        for shard in shards:
            prepare_shards(
                {"shard": [json.dumps(dataclasses.asdict(shard))]}, cfg.curate, str(work / "loop"), "ours"
            )
        loop_s = time.perf_counter() - t0
        init_ray(cfg.run)
        run_shards(cfg, shards[:1], "ours", work / "warm", [])  # worker start-up out of the timing
        t0 = time.perf_counter()
        committed: list[int] = []
        run_shards(cfg, shards, "ours", work / "ray", committed)
        ray_s = time.perf_counter() - t0
        assert sorted(committed) == [s.index for s in shards]
        n = args.items
        print(f"(3) stage 1 over {n} items at {args.size} px in {len(shards)} shards:")
        print(f"    plain loop, 1 process:        {n / loop_s:6.2f} items/s")
        print(f"    Ray Data, {args.cpus} CPUs:             {n / ray_s:6.2f} items/s")
        print(f"    Ray Data / plain loop:        {loop_s / ray_s:6.2f}x")
        load = os.getloadavg()[0]
        print(
            f"    1-minute load average at the end: {load:.1f} on {os.cpu_count()} cores (other jobs share them)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

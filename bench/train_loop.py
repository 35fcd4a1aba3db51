"""Time per epoch of the tiny training loop, split by stage, and the speed-up of sampling the next
batch while the current one is scored and trained on (rollout.max_staleness=1) over strictly
sequential stages (max_staleness=0). Both runs happen in this one process, on one Ray cluster.

    .venv/bin/python bench/train_loop.py [--epochs 8] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from cocoedit.cluster.config import load_config
from cocoedit.cluster.launch import init_ray
from cocoedit.cluster.train import train

STAGES = ("time/sample_s", "time/score_s", "time/update_s", "time/sync_s", "time/epoch_s")


def run(overrides: list[str], staleness: int, epochs: int, run_dir: str) -> dict[str, float]:
    cfg = load_config(
        None,
        [
            *overrides,
            f"run.epochs={epochs}",
            f"rollout.max_staleness={staleness}",
            f"run.run_dir={run_dir}",
            "run.image_every=0",
            "run.checkpoint_every=0",
        ],
    )
    history = train(cfg, progress=False)[1:]  # epoch 0 includes actor start-up
    return {k: float(np.mean([h[k] for h in history])) for k in STAGES} | {"epochs": len(history)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    init_ray(load_config(None, args.overrides).run)
    with tempfile.TemporaryDirectory() as tmp:
        seq = run(args.overrides, 0, args.epochs, f"{tmp}/seq")
        asy = run(args.overrides, 1, args.epochs, f"{tmp}/async")
    print(
        f"{'stage':<16}{'sequential':>12}{'async(1)':>12}   (mean seconds per epoch, epochs 1..{args.epochs - 1})"
    )
    for k in STAGES:
        print(f"{k:<16}{seq[k]:>12.3f}{asy[k]:>12.3f}")
    print(
        f"speed-up of the asynchronous path (sequential / async epoch time): {seq['time/epoch_s'] / asy['time/epoch_s']:.2f}x"
    )


if __name__ == "__main__":
    main()

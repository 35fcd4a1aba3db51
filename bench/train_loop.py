"""Time per epoch of the tiny training loop, split by stage, and what sampling the next batch while the
current one is scored and trained on (rollout.max_staleness=1) gains over strictly sequential stages
(max_staleness=0), on the same cores twice:

  contended  the rollout worker and the learner rank share every core (each sized to its CPU ask)
  separated  run.pin_cpus: the learner rank and the rollout worker pinned to disjoint cores

All four runs happen in this one process, on one Ray cluster; the figures are ratios within the run.

    .venv/bin/python bench/train_loop.py [--epochs 8] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile

import numpy as np

from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.launch import init_ray
from cocoedit.cluster.train.loop import run_epochs, start_run

STAGES = ("time/sample_s", "time/score_s", "time/update_s", "time/sync_s", "time/epoch_s")
LAYOUTS = {"contended": [], "separated": ["run.pin_cpus=true"]}


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
            "run.eval_every=0",
        ],
    )
    with start_run(cfg) as loop:
        rows = [row for epoch, row in run_epochs(loop) if epoch > 0]  # epoch 0 includes actor start-up
    return {k: float(np.mean([row[k] for row in rows])) for k in STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    init_ray(load_config(None, args.overrides).run)
    results: dict[tuple[str, int], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layout, extra in LAYOUTS.items():
            for staleness in (0, 1):
                results[layout, staleness] = run(
                    [*args.overrides, *extra], staleness, args.epochs, f"{tmp}/{layout}_{staleness}"
                )
    columns = [(layout, s) for layout in LAYOUTS for s in (0, 1)]
    print(
        f"mean seconds per epoch, epochs 1..{args.epochs - 1} (absolute times: upper bounds on a shared machine)"
    )
    print(f"{'stage':<16}" + "".join(f"{f'{layout} s={s}':>17}" for layout, s in columns))
    for k in STAGES:
        print(f"{k:<16}" + "".join(f"{results[c][k]:>17.3f}" for c in columns))
    for layout in LAYOUTS:
        seq, asy = results[layout, 0]["time/epoch_s"], results[layout, 1]["time/epoch_s"]
        print(f"overlap speed-up, {layout:<10} (max_staleness 0 / 1 epoch time): {seq / asy:.2f}x")


if __name__ == "__main__":
    main()

"""The change a run made on its fixed evaluation sets, per run and over runs (seeds), as a Markdown table.

Reads each run directory's `eval/summary.json` (written at the end of `cocoedit train`: per metric, the
first -> last evaluation, paired per item, with its 95% interval; cluster/train/evaluation.py) and prints
one row per run and set, then per set the mean change over the runs with its 95% t-interval over runs
(the seeds are the independent replicates; the per-run intervals are over items).

    .venv/bin/python scripts/seed_table.py runs/seed0 runs/seed1 runs/seed2 [--metrics reward,synthetic,pixel/psnr]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
from scipy import stats

SETS = {"eval": "held-out", "eval_train": "training items"}


def load(run_dir: Path) -> dict[str, dict[str, dict]]:
    path = run_dir / "eval" / "summary.json"
    if not path.exists():
        raise SystemExit(f"{path} does not exist: give run directories of finished `cocoedit train` runs")
    data = json.loads(path.read_text())
    return {name: {c["metric"]: c for c in changes} for name, changes in data.items()}


def cell(c: dict | None, digits: int) -> str:
    if c is None:
        return "-"
    return f"{c['first']:.{digits}f} -> {c['last']:.{digits}f} ({c['diff']:+.{digits}f} +- {c['half']:.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--metrics", default="reward,synthetic,pixel/psnr")
    args = parser.parse_args(argv)
    metrics = args.metrics.split(",")
    runs = {r: load(r) for r in args.runs}
    digits = {m: 2 if m.endswith("psnr") else 4 for m in metrics}
    print("| run | set | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for run, data in runs.items():
        for name, title in SETS.items():
            if data.get(name):
                row = [cell(data[name].get(m), digits[m]) for m in metrics]
                print(f"| {run.name} | {title} | " + " | ".join(row) + " |")
    print()
    print(f"Mean change over {len(runs)} runs, 95% t-interval over runs:")
    for name, title in SETS.items():
        parts = []
        for m in metrics:
            d = [data[name][m]["diff"] for data in runs.values() if m in data.get(name, {})]
            if len(d) < 2:
                continue
            half = stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
            parts.append(f"{m} {np.mean(d):+.{digits[m]}f} +- {half:.{digits[m]}f}")
        if parts:
            print(f"  {title}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

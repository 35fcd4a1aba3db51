"""The change a run made on its fixed evaluation sets, per run and over runs (seeds), as a Markdown table.

Reads each run directory's `eval/summary.json` (written at the end of `cocoedit train`: per metric, the
first -> last evaluation, paired per item, with its 95% interval; cluster/train/evaluation.py) and prints
one row per run and set, then per set the mean change over the runs with its 95% t-interval over runs
(the seeds are the independent replicates; the per-run intervals are over items).

    .venv/bin/python scripts/seed_table.py runs/seed0 runs/seed1 runs/seed2 [--metrics reward,synthetic,pixel/psnr]

`--against REF_RUN...` (as many as the runs, in the same seed order) adds the difference of each run's
last held-out value from its reference run's (a setting against no regularizer, say), paired per seed,
mean over seeds with its 95% t-interval: how a sweep's or search's confirmation is read.
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


def t_half(d: list[float]) -> float:
    """Half-width of the 95% t-interval of the mean of `d` (nan for fewer than 2)."""
    if len(d) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d)))


def against(runs: list[dict], refs: list[dict], metrics: list[str], digits: dict[str, int]) -> list[str]:
    """Per metric: mean over seeds of (run's last held-out value - its reference's), +- the 95% interval."""
    parts = []
    for m in metrics:
        pairs = [
            (r.get("eval", {}).get(m), f.get("eval", {}).get(m)) for r, f in zip(runs, refs, strict=True)
        ]
        if pairs and all(a and b for a, b in pairs):
            d = [a["last"] - b["last"] for a, b in pairs]
            parts.append(f"{m} {np.mean(d):+.{digits[m]}f} +- {t_half(d):.{digits[m]}f}")
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--metrics", default="reward,synthetic,pixel/psnr")
    parser.add_argument("--against", nargs="+", type=Path, default=[], metavar="REF_RUN")
    args = parser.parse_args(argv)
    if args.against and len(args.against) != len(args.runs):
        parser.error(
            f"--against gives {len(args.against)} reference runs for {len(args.runs)} runs: give one per run, in the same seed order"
        )
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
            parts.append(f"{m} {np.mean(d):+.{digits[m]}f} +- {t_half(d):.{digits[m]}f}")
        if parts:
            print(f"  {title}: " + ", ".join(parts))
    if args.against:
        parts = against(list(runs.values()), [load(r) for r in args.against], metrics, digits)
        print(f"Last held-out value minus the reference run's, paired per seed, over {len(runs)} seeds:")
        print("  " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

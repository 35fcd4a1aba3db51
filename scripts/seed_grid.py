"""Settings x seeds of `cocoedit train`, one run at a time, and a table of their final held-out evaluation.

Each trial is a full `cocoedit train` with the setting's overrides and `data.seed=S learner.seed=S`
(epoch sampling, rollout noise, LoRA init), into OUT/<setting>/seed<S>/. A finished trial is skipped when
the command is run again, so an interrupted grid resumes. The table (OUT/report.md, also printed) gives per
setting the mean +- 95% t-interval over seeds of the last fixed-set evaluation (`eval/*` of
metrics.jsonl), its change from the first evaluation (the starting editor), and the difference from the
first setting paired by seed.

    .venv/bin/python scripts/seed_grid.py --out runs/grid --seeds 3 \\
        --setting no_reg "learner.lam_pos=0 learner.lam_neg=0" \\
        --setting flux "learner.lam_pos=0.02 learner.lam_neg=0.02" \\
        [--config FILE] [key=value ...]    # overrides common to every trial
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("eval/synthetic", "eval/pixel/psnr", "eval/pixel/ssim", "eval/reward")


def run_trial(trial_dir: Path, config: str | None, overrides: list[str], seed: int) -> dict:
    """Train one trial (unless trial_dir/done.json exists); returns its done.json record."""
    done = trial_dir / "done.json"
    if done.exists():
        return json.loads(done.read_text())
    trial_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cocoedit.cluster.cli", "train"]
    cmd += ["--config", config] if config else []
    cmd += [*overrides, f"data.seed={seed}", f"learner.seed={seed}", f"run.run_dir={trial_dir / 'run'}"]
    start = time.perf_counter()
    with open(trial_dir / "train.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise RuntimeError(f"trial {trial_dir} failed (exit {code}); see {trial_dir / 'train.log'}")
    rows = [json.loads(line) for line in (trial_dir / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/reward" in r]
    record = {
        "command": cmd,
        "seconds": time.perf_counter() - start,
        "epochs": len(rows),
        "first": {k: evals[0][k] for k in METRICS},
        "last": {k: evals[-1][k] for k in METRICS},
    }
    done.write_text(json.dumps(record, indent=2))
    return record


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval); half-width nan for a single value."""
    from scipy.stats import t

    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def fmt(values: list[float], digits: int) -> str:
    mean, half = interval(values)
    return f"{mean:.{digits}f}" + ("" if math.isnan(half) else f" +- {half:.{digits}f}")


def report(results: dict[str, list[dict]]) -> str:
    """Markdown: final metrics, change from the start, and paired difference from the first setting."""
    names = list(results)
    base = results[names[0]]
    head = "| setting | seeds | " + " | ".join(METRICS) + " | " + " | ".join(f"d {m}" for m in METRICS[:2])
    head += f" | vs {names[0]}: " + " | ".join(METRICS[:2]) + " |"
    lines = [head, "|" + "---|" * (2 + len(METRICS) + 4)]
    for name in names:
        recs = results[name]
        digits = {m: 2 if "psnr" in m else 3 for m in METRICS}
        cells = [fmt([r["last"][m] for r in recs], digits[m]) for m in METRICS]
        cells += [fmt([r["last"][m] - r["first"][m] for r in recs], digits[m]) for m in METRICS[:2]]
        paired = len(recs) == len(base)
        cells += [
            fmt([r["last"][m] - b["last"][m] for r, b in zip(recs, base, strict=True)], digits[m])
            if paired
            else ""
            for m in METRICS[:2]
        ]
        lines.append(f"| {name} | {len(recs)} | " + " | ".join(cells) + " |")
    start = base[0]["first"]
    lines.append("")
    lines.append("starting editor (first evaluation): " + ", ".join(f"{m} {start[m]:.3f}" for m in METRICS))
    lines.append("mean +- 95% t-interval over seeds; d = last - first evaluation; vs = paired by seed")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--config", default=None)
    parser.add_argument("--setting", nargs=2, action="append", metavar=("NAME", "OVERRIDES"), required=True)
    parser.add_argument("overrides", nargs="*", help="key=value overrides common to every trial")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        raise SystemExit(f"--seeds={args.seeds} must be >= 1")
    results: dict[str, list[dict]] = {name: [] for name, _ in args.setting}
    # seed-major: an interrupted grid has every setting at the same number of seeds
    for seed in range(args.seeds):
        for name, extra in args.setting:
            record = run_trial(
                args.out / name / f"seed{seed}", args.config, [*args.overrides, *extra.split()], seed
            )
            print(f"{name} seed {seed}: {record['seconds']:.0f} s, last {record['last']}", flush=True)
            results[name].append(record)
    table = report(results)
    (args.out / "report.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

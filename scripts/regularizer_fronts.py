"""The regularizer searches of both image sizes in one plot: each setting's final held-out instruction score
and keep-region PSNR minus its no-regularizer reference's, the region a setting must reach to dominate it
(keep PSNR at least +0.5 dB at an instruction score at most 0.01 lower), the search's trials (one seed,
tuning items) and the confirmations (paired per seed against the reference, 95% t-interval, unseen items).

    .venv/bin/python scripts/regularizer_fronts.py --search 32=runs/search32 --search 64=runs/search64 \\
        --confirm 32=runs/search32-confirm --confirm 64=runs/search64-confirm --out docs/regularizer_fronts.png

Reads each run's `eval/summary.json` and `config.yaml` (a search's reference is named in its search.json;
a confirmation's is the run with `learner.lam_pos=0`). Prints the numbers it plots.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after the backend)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seed_table import load, t_half  # noqa: E402 (a script beside this one)

METRICS = ("synthetic", "pixel/psnr")
KEEP_DB, INSTR = 0.5, -0.01  # the dominance margin of docs/experiments.md
XLIM, YLIM = (-0.07, 0.015), (-0.3, 1.6)  # the confirmed settings and the region; far trials are counted


def last(run: Path) -> tuple[float, float]:
    changes = load(run)["eval"]
    return changes[METRICS[0]]["last"], changes[METRICS[1]]["last"]


def label(run: Path) -> str:
    """A short name of the run's regularizer setting, from the config it ran with."""
    lr = yaml.safe_load((run / "config.yaml").read_text())["learner"]
    if not lr["lam_pos"]:
        return "none"
    target = "released" if lr["reg_pos_target"] == "sample" else "anchor"
    sched = lr.get("lam_schedule", "constant")
    return f"{target} {lr['lam_pos']:g}" + ("" if sched == "constant" else f", {sched} ramp")


def search_points(out: Path) -> list[tuple[str, float, float]]:
    ref = out / "runs" / ",".join(json.loads((out / "search.json").read_text())["reference"]) / "seed0"
    ri, rp = last(ref)
    points = []
    for run in sorted((out / "runs").glob("*/seed0")):
        if run != ref and (run / "eval" / "summary.json").exists():
            i, p = last(run)
            points.append((label(run), i - ri, p - rp))
    return points


def confirm_points(dirs: list[Path]) -> list[tuple[str, float, float, float, float]]:
    """(label, instruction change, its half-width, keep change, its half-width) per setting, paired per seed."""
    settings = {d: sorted(d.glob("seed*")) for out in dirs for d in sorted((out / "runs").glob("*"))}
    ref = next(seeds for d, seeds in settings.items() if d.name.startswith("learner.lam_pos=0,"))
    refs = {s.name: last(s) for s in ref}
    rows = []
    for seeds in settings.values():
        if seeds is ref or not seeds:
            continue
        di = [last(s)[0] - refs[s.name][0] for s in seeds]
        dp = [last(s)[1] - refs[s.name][1] for s in seeds]
        rows.append((label(seeds[0]), float(np.mean(di)), t_half(di), float(np.mean(dp)), t_half(dp)))
    return rows


def pairs(values: list[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for v in values:
        size, _, path = v.partition("=")
        if not path:
            raise SystemExit(f"{v!r} must be SIZE=DIR, e.g. 32=runs/search32")
        out.setdefault(size, []).append(Path(path))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--search", action="append", default=[], metavar="SIZE=DIR")
    parser.add_argument("--confirm", action="append", default=[], metavar="SIZE=DIR")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    colors = {}
    outside = 0
    for size, dirs in pairs(args.search).items():
        for out in dirs:
            pts = search_points(out)
            colors[size] = ax.plot(
                [p[1] for p in pts],
                [p[2] for p in pts],
                "o",
                alpha=0.45,
                label=f"{size} px search (1 seed, tuning items)",
            )[0].get_color()
            outside += sum(not (XLIM[0] <= i <= XLIM[1] and YLIM[0] <= p <= YLIM[1]) for _, i, p in pts)
            for name, i, p in pts:
                print(f"{size} px search  {name:28s} instruction {i:+.4f}  keep {p:+.2f} dB")
    for size, dirs in pairs(args.confirm).items():
        rows = confirm_points(dirs)
        kw = {"color": colors[size]} if size in colors else {}
        ax.errorbar(
            [r[1] for r in rows], [r[3] for r in rows], xerr=[r[2] for r in rows], yerr=[r[4] for r in rows],
            fmt="s", capsize=3, label=f"{size} px confirmed (3 seeds, unseen items, 95% CI)", **kw,
        )  # fmt: skip
        for k, (name, i, hi, p, hp) in enumerate(rows):
            side = (6, 10 - 9 * k) if size == "32" else (-8, 8 + 9 * k)
            ax.annotate(
                f"{name} ({size})", (i, p), textcoords="offset points", xytext=side, fontsize=7,
                ha="left" if size == "32" else "right", arrowprops={"arrowstyle": "-", "lw": 0.4},
            )  # fmt: skip
            print(
                f"{size} px confirm {name:28s} instruction {i:+.4f} +- {hi:.4f}  keep {p:+.2f} +- {hp:.2f} dB"
            )
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    (x0, x1), (y0, y1) = XLIM, YLIM
    if outside:
        ax.text(
            x0 + 0.001,
            y1 - 0.05,
            f"{outside} search trial(s) further left, off the plot",
            fontsize=7,
            va="top",
        )
    ax.fill_between(
        [INSTR, x1], KEEP_DB, y1, color="tab:green", alpha=0.12, label="would dominate no regularizer"
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("held-out instruction score minus no regularizer's")
    ax.set_ylabel("held-out keep-region PSNR minus no regularizer's (dB)")
    ax.set_title("the regularizer searched at 32 and 64 px: every setting against no regularizer")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

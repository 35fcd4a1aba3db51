"""The report of a training run, written at the end of every run into its directory:

run_dir/report.png    curves per epoch: reward and its parts, the fixed evaluation set's reward with
                      its 95 % interval, the learner's loss terms, seconds of each stage
run_dir/report.html   self-contained page (rendered from cluster/templates/run_report.html): the
                      curves, first vs last epoch, the evaluation table, the last validation image

python -m cocoedit.cluster.train.report RUN_DIR      # (re)write it for any run directory, finished or not
"""

from __future__ import annotations

import base64
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from cocoedit.cluster.report_html import render

# reward/* keys that count edits rather than score them (kept out of the reward panel)
_COUNTS = ("reward/dropped_edits", "reward/dropped_fraction", "reward/fallback_fraction")


def load_rows(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl as one row per epoch, in epoch order (a later line for an epoch replaces an earlier)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the run directory of a `cocoedit train` run")
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            by_epoch[int(row["epoch"])] = row
    return [by_epoch[e] for e in sorted(by_epoch)]


def _series(rows: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(epochs, values) where `key` holds a finite number."""
    pairs = [
        (r["epoch"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
    ]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def _keys(rows: list[dict[str, Any]], prefix: str, suffix: str = "") -> list[str]:
    keys = sorted({k for r in rows for k in r if k.startswith(prefix) and k.endswith(suffix)})
    return [k for k in keys if _series(rows, k)[0]]


def panels(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """The keys drawn in each panel of the figure."""
    reward = [k for k in _keys(rows, "reward/") if k not in _COUNTS and k.count("/") == 1]
    evals = [
        k for k in _keys(rows, "eval/") if k.count("/") == 1 and not k.endswith(("_ci95", "_se"))
    ] + _keys(rows, "eval_train/reward", "reward")  # the training items' reward: the overfitting gap
    return {
        "reward (training batch)": reward,
        "fixed evaluation set": [k for k in evals if k != "eval/dropped_edits"],
        "loss terms": _keys(rows, "loss/"),
        "seconds per stage": _keys(rows, "time/", "_s"),
    }


def write_figure(rows: list[dict[str, Any]], path: Path, title: str) -> Path:
    """The 2x2 figure of `panels` as a PNG; eval/reward with error bars of eval/reward_ci95."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    for ax, (name, keys) in zip(axes.flat, panels(rows).items(), strict=True):
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("epoch", fontsize=9)
        ax.grid(alpha=0.3)
        for key in keys:
            epochs, values = _series(rows, key)
            if key == "eval/reward":
                half = {e: h for e, h in zip(*_series(rows, "eval/reward_ci95"), strict=True)}
                err = [half.get(e, 0.0) for e in epochs]
                ax.errorbar(epochs, values, yerr=err, marker="o", capsize=3, label="eval/reward (95 % CI)")
            else:
                ax.plot(epochs, values, marker="." if len(epochs) < 30 else None, label=key)
        if keys:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "not logged in this run", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()


def write_run_report(run_dir: Path, name: Optional[str] = None) -> tuple[Path, Path]:
    """run_dir/report.png and run_dir/report.html from its metrics.jsonl (and its last validation image)."""
    run_dir = Path(run_dir)
    rows = load_rows(run_dir)
    if not rows:
        raise ValueError(f"{run_dir / 'metrics.jsonl'} holds no epoch yet: nothing to report")
    name = name or run_dir.name
    png = write_figure(rows, run_dir / "report.png", f"{name}: epochs {rows[0]['epoch']}-{rows[-1]['epoch']}")
    first, last = rows[0], rows[-1]
    keys = [k for keys in panels(rows).values() for k in keys if k != "eval/reward"]
    summary = [(k, _number(first.get(k)), _number(last.get(k))) for k in keys]
    evals = [
        (e, v, _number(r.get("eval/reward_ci95")))
        for r in rows
        for e, v in [(r["epoch"], r.get("eval/reward"))]
        if v is not None
    ]
    images = sorted((run_dir / "images").glob("epoch_*.png"))
    page = render(
        "run_report.html",
        name=name,
        info=[
            ("run directory", str(run_dir.resolve())),
            ("epochs logged", f"{len(rows)} ({rows[0]['epoch']}-{rows[-1]['epoch']})"),
            ("config", str(run_dir / "config.yaml")),
            ("written", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ],
        png_name=png.name,
        curves_uri=_uri(png),
        first_epoch=first["epoch"],
        last_epoch=last["epoch"],
        summary=summary,
        evals=evals,
        validation_uri=_uri(images[-1]) if images else None,
        validation_name=f"images/{images[-1].name}" if images else "",
    )
    html_path = run_dir / "report.html"
    html_path.write_text(page, encoding="utf-8")
    return png, html_path


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m cocoedit.cluster.train.report RUN_DIR", file=sys.stderr)
        return 2
    try:
        png, page = write_run_report(Path(args[0]))
    except (FileNotFoundError, ValueError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {png} and {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

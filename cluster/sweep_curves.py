"""Learning curves of a sweep: per setting, the mean over its seeds of each epoch's held-out
instruction score, keep-region PSNR and training reward, with the 95 % interval over seeds.

Read from each trial's own run directory (OUT/runs/<setting>/seed<k>/metrics.jsonl); drawn into
OUT/curves.png and the sweep's report.html (cluster/sweep_report.py).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from cocoedit.cluster.run_report import load_rows
from cocoedit.cluster.sweep_report import PSNR, SettingSummary, Stat, TrialOutcome, stat

TRAIN_REWARD = "reward/mean"


def setting_curves(
    out: Path, rows: Sequence[SettingSummary], outcomes: Sequence[TrialOutcome], key: str
) -> dict[str, list[tuple[int, Stat]]]:
    """{setting label: [(epoch, Stat of `key` over the seeds that logged it at that epoch)]}; trials
    without a metrics.jsonl (failed before the first epoch) count nowhere."""
    curves: dict[str, list[tuple[int, Stat]]] = {}
    for r in rows:
        per_epoch: dict[int, list[float]] = {}
        for o in outcomes:
            path = out / "runs" / o.key
            if o.setting != r.setting or not (path / "metrics.jsonl").is_file():
                continue
            for row in load_rows(path):
                value = row.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    per_epoch.setdefault(int(row["epoch"]), []).append(float(value))
        if per_epoch:
            curves[r.label] = [(e, stat(v)) for e, v in sorted(per_epoch.items())]
    return curves


def curves_png(
    out: Path, rows: Sequence[SettingSummary], outcomes: Sequence[TrialOutcome], ikey: str
) -> Optional[bytes]:
    """Three panels (held-out instruction score, held-out keep PSNR, training reward) of every setting's
    mean curve with its 95 % band over seeds, as PNG bytes; None when no trial logged an epoch."""
    keys = [
        (ikey, f"held-out {ikey}"),
        (PSNR, "held-out keep PSNR (dB)"),
        (TRAIN_REWARD, "training reward/mean"),
    ]
    panels = [(title, setting_curves(out, rows, outcomes, key)) for key, title in keys]
    if not any(curves for _, curves in panels):
        return None
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0), dpi=100)
    for ax, (title, curves) in zip(axes, panels, strict=True):
        _draw(ax, curves)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle("learning curves per setting (mean over seeds, band: 95% CI)", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def _draw(ax: Any, curves: dict[str, list[tuple[int, Stat]]]) -> None:
    for label, points in curves.items():
        epochs = [e for e, _ in points]
        means = [s.mean for _, s in points]
        (line,) = ax.plot(epochs, means, marker="." if len(points) < 30 else None, label=label)
        low = [s.mean - s.ci95 if s.n > 1 else s.mean for _, s in points]
        high = [s.mean + s.ci95 if s.n > 1 else s.mean for _, s in points]
        ax.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    if curves:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)

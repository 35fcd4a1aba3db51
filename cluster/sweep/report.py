"""The report of a `cocoedit sweep`: per setting, the final held-out metrics over seeds, and a Pareto plot.

    OUT/report.md    the table (Markdown): per setting, mean +- 95% CI over seeds (Student t) of the final
                     held-out instruction score and keep-region PSNR / SSIM, and whether it is on the front;
                     then the failed trials, each with the first line of its error
    OUT/report.png   instruction score (x) vs keep PSNR (y), one point per setting with its 95% CIs,
                     the Pareto front (no other setting is at least as good on both and better on one)
    OUT/curves.png   learning curves per setting over epochs, mean and 95% band over seeds (setting_curves)
    OUT/report.html  self-contained page (cluster/templates/sweep_report.html): the table, the plot and the
                     curves (embedded PNGs), every trial and its error

"Final" is the last evaluation of the run (the loop evaluates the held-out set at the last epoch).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cocoedit.cluster.train.report import load_rows

PSNR, SSIM = "eval/pixel/psnr", "eval/pixel/ssim"
# the instruction judge of the run: the MLLM in production, the exact synthetic judge in the tiny mode
INSTRUCTION_KEYS = ("eval/mllm", "eval/synthetic")


@dataclass(frozen=True)
class TrialOutcome:
    """What one trial ended with: its last reported metrics (Tune's) and its error, if it failed."""

    key: str  # Trial.key, "<setting slug>/seed<k>"
    setting: str  # Setting.name
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    error: Optional[str] = None
    finished: bool = False  # ran its last epoch (an interrupted trial has not)
    first: dict[str, float] = field(default_factory=dict)  # its first evaluation's metrics (the start)

    @property
    def status(self) -> str:
        return "failed" if self.error is not None else ("done" if self.finished else "unfinished")


@dataclass(frozen=True)
class Stat:
    """Mean and 95% confidence half-width over n seeds (half-width NaN for n < 2)."""

    mean: float
    ci95: float
    n: int

    def __str__(self) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean:.3f}" if math.isnan(self.ci95) else f"{self.mean:.3f} +- {self.ci95:.3f}"


def stat(values: Sequence[float]) -> Stat:
    """Mean +- t_{0.975, n-1} * s / sqrt(n) of the finite values."""
    from scipy.stats import t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return Stat(math.nan, math.nan, 0)
    if len(v) == 1:
        return Stat(float(v[0]), math.nan, 1)
    half = float(t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return Stat(float(v.mean()), half, len(v))


@dataclass(frozen=True)
class SettingSummary:
    label: str  # S1, S2, ... (the plot's labels)
    setting: str
    instruction: Stat
    psnr: Stat
    ssim: Stat
    d_instruction: Stat  # final - first evaluation, paired per seed: what training changed
    d_psnr: Stat
    done: int  # trials with final metrics
    failed: int
    unfinished: int
    on_front: bool = False


def instruction_key(outcomes: Sequence[TrialOutcome]) -> str:
    """The instruction score the trials report: eval/mllm if any does, else eval/synthetic."""
    for key in INSTRUCTION_KEYS:
        if any(key in o.metrics for o in outcomes):
            return key
    return INSTRUCTION_KEYS[-1]


def summarize(settings: Sequence[str], outcomes: Sequence[TrialOutcome]) -> list[SettingSummary]:
    """One summary per setting (in `settings` order) over its finished trials, with the Pareto front."""
    ikey = instruction_key(outcomes)
    rows = []
    for i, name in enumerate(settings):
        mine = [o for o in outcomes if o.setting == name]
        done = [o for o in mine if o.status == "done" and PSNR in o.metrics]
        ok = [o.metrics for o in done]
        rows.append(
            SettingSummary(
                label=f"S{i + 1}",
                setting=name,
                instruction=stat([m.get(ikey, math.nan) for m in ok]),
                psnr=stat([m[PSNR] for m in ok]),
                ssim=stat([m.get(SSIM, math.nan) for m in ok]),
                d_instruction=stat([_change(o, ikey) for o in done]),
                d_psnr=stat([_change(o, PSNR) for o in done]),
                done=len(ok),
                failed=sum(o.status == "failed" for o in mine),
                unfinished=sum(o.status == "unfinished" for o in mine),
            )
        )
    front = pareto_front([(r.instruction.mean, r.psnr.mean) for r in rows])
    return [SettingSummary(**{**r.__dict__, "on_front": i in front}) for i, r in enumerate(rows)]


def _change(o: TrialOutcome, key: str) -> float:
    return o.metrics.get(key, math.nan) - o.first.get(key, math.nan)


def start_point(outcomes: Sequence[TrialOutcome], ikey: str) -> tuple[float, float]:
    """Mean (instruction, keep PSNR) of the trials' first evaluations: where training started from."""
    firsts = [o.first for o in outcomes if PSNR in o.first and ikey in o.first]
    if not firsts:
        return math.nan, math.nan
    return float(np.mean([f[ikey] for f in firsts])), float(np.mean([f[PSNR] for f in firsts]))


def pareto_front(points: Sequence[tuple[float, float]]) -> set[int]:
    """Indices of the points no other point dominates (>= on both coordinates, > on one); NaN never wins."""
    finite = [i for i, (x, y) in enumerate(points) if math.isfinite(x) and math.isfinite(y)]
    front = set()
    for i in finite:
        xi, yi = points[i]
        dominated = any(
            points[j][0] >= xi and points[j][1] >= yi and (points[j][0] > xi or points[j][1] > yi)
            for j in finite
            if j != i
        )
        if not dominated:
            front.add(i)
    return front


def markdown_table(rows: Sequence[SettingSummary], ikey: str) -> str:
    header = (
        f"| | setting | seeds | {ikey} | keep PSNR (dB) | keep SSIM | change of {ikey} | "
        "change of keep PSNR (dB) | front |"
    )
    lines = [header, "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = _seeds(r)
        lines.append(
            f"| {r.label} | `{r.setting}` | {seeds} | {r.instruction} | {_fmt_db(r.psnr)} | {r.ssim} | "
            f"{_signed(r.d_instruction, 3)} | {_signed(r.d_psnr, 2)} | {'yes' if r.on_front else ''} |"
        )
    return "\n".join(lines)


def _seeds(r: SettingSummary) -> str:
    more = [f"{n} {what}" for n, what in ((r.failed, "failed"), (r.unfinished, "unfinished")) if n]
    return f"{r.done}" + (f" ({', '.join(more)})" if more else "")


def _signed(s: Stat, digits: int) -> str:
    """`+0.12 +- 0.05`: a change, its sign always shown."""
    if s.n == 0:
        return "n/a"
    mean = f"{s.mean:+.{digits}f}"
    return mean if math.isnan(s.ci95) else f"{mean} +- {s.ci95:.{digits}f}"


def _fmt_db(s: Stat) -> str:
    if s.n == 0:
        return "n/a"
    return f"{s.mean:.2f}" if math.isnan(s.ci95) else f"{s.mean:.2f} +- {s.ci95:.2f}"


def pareto_png(
    rows: Sequence[SettingSummary],
    ikey: str,
    title: str = "",
    start: tuple[float, float] = (math.nan, math.nan),
) -> bytes:
    """The Pareto plot as PNG bytes: instruction score vs keep PSNR, 95% CI bars, front dashed, and
    `start` (the mean first evaluation) as a grey star."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    shown = [r for r in rows if r.psnr.n > 0 and math.isfinite(r.instruction.mean)]
    for r in shown:
        ax.errorbar(
            r.instruction.mean,
            r.psnr.mean,
            xerr=0 if math.isnan(r.instruction.ci95) else r.instruction.ci95,
            yerr=0 if math.isnan(r.psnr.ci95) else r.psnr.ci95,
            fmt="o",
            color="#c0504d" if r.on_front else "#4a7bd0",
            capsize=3,
        )
    for xy, label in point_labels(shown).items():
        ax.annotate(label, xy, textcoords="offset points", xytext=(5, 5))
    front = sorted((r.instruction.mean, r.psnr.mean) for r in shown if r.on_front)
    if len(front) > 1:
        ax.plot(*zip(*front, strict=True), "--", color="#c0504d", linewidth=1, label="Pareto front")
    if all(math.isfinite(v) for v in start):
        ax.plot(*start, "*", color="#777777", markersize=12, label="start (first evaluation)")
    if len(front) > 1 or all(math.isfinite(v) for v in start):
        ax.legend(loc="best", fontsize=8)
    _min_span(ax, 0.02, 0.2)
    ax.set_xlabel(f"held-out instruction score ({ikey}), higher is better")
    ax.set_ylabel("held-out keep-region PSNR (dB)")
    ax.set_title(title or "final held-out metrics per setting (mean, 95% CI over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def point_labels(rows: Sequence[SettingSummary]) -> dict[tuple[float, float], str]:
    """The plot's label per point: settings that end at the same point share one ("S3, S5")."""
    names: dict[tuple[float, float], list[str]] = {}
    for r in rows:
        names.setdefault((r.instruction.mean, r.psnr.mean), []).append(r.label)
    return {xy: ", ".join(labels) for xy, labels in names.items()}


def _min_span(ax: Any, x_span: float, y_span: float) -> None:
    """Axes at least this wide, in plain numbers: settings that nearly tie are shown as a tie, not as a
    magnified rounding difference under an offset."""
    for get, put, span in ((ax.get_xlim, ax.set_xlim, x_span), (ax.get_ylim, ax.set_ylim, y_span)):
        lo, hi = get()
        if hi - lo < span:
            mid = (lo + hi) / 2
            put(mid - span / 2, mid + span / 2)
    ax.ticklabel_format(useOffset=False)


def report_html(
    rows: Sequence[SettingSummary],
    outcomes: Sequence[TrialOutcome],
    ikey: str,
    png: bytes,
    command: str,
    curves: Optional[bytes] = None,
) -> str:
    """The self-contained page (cluster/templates/sweep_report.html): the settings table, the embedded
    Pareto plot and learning curves (when any trial logged an epoch), every trial."""
    from cocoedit.cluster.report_html import render

    settings = [
        {
            "label": r.label,
            "setting": r.setting,
            "seeds": _seeds(r),
            "instruction": str(r.instruction),
            "psnr": _fmt_db(r.psnr),
            "ssim": str(r.ssim),
            "d_instruction": _signed(r.d_instruction, 3),
            "d_psnr": _signed(r.d_psnr, 2),
            "on_front": r.on_front,
        }
        for r in rows
    ]
    trials = [
        {
            "key": o.key,
            "seed": o.seed,
            "status": o.status,
            "epoch": _num(o.metrics.get("epoch")),
            "instruction": _num(o.metrics.get(ikey)),
            "psnr": _num(o.metrics.get(PSNR)),
            "ssim": _num(o.metrics.get(SSIM)),
            "error": o.error or "",
        }
        for o in outcomes
    ]
    return render(
        "sweep_report.html",
        command=command,
        ikey=ikey,
        settings=settings,
        trials=trials,
        pareto_uri=_png_uri(png),
        curves_uri=_png_uri(curves) if curves else None,
    )


def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _num(v: Any) -> str:
    return "" if v is None else f"{v:.4g}"


@dataclass(frozen=True)
class Report:
    text: str  # the Markdown table, then each failed trial's error (first line)
    markdown: Path
    png: Path
    html: Path
    rows: list[SettingSummary]


def write_report(
    out: Path, settings: Sequence[str], outcomes: Sequence[TrialOutcome], command: str = ""
) -> Report:
    """OUT/report.md, report.png and report.html of a sweep's `settings` (Setting.name, in grid order)
    from its trials' outcomes."""
    ikey = instruction_key(outcomes)
    rows = summarize(settings, outcomes)
    failed = [f"- `{o.key}`: {o.error.splitlines()[0]}" for o in outcomes if o.error]
    text = markdown_table(rows, ikey) + ("\n\nFailed trials:\n" + "\n".join(failed) if failed else "")
    png = pareto_png(rows, ikey, start=start_point(outcomes, ikey))
    curves = curves_png(out, rows, outcomes, ikey)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "report.md", out / "report.png", out / "report.html"
    paths[0].write_text(text + "\n")
    paths[1].write_bytes(png)
    if curves is not None:
        (out / "curves.png").write_bytes(curves)
    paths[2].write_text(report_html(rows, outcomes, ikey, png, command, curves), encoding="utf-8")
    return Report(text, *paths, rows)


# Learning curves: per setting, the mean over its seeds of each logged epoch (each trial's own
# OUT/runs/<setting>/seed<k>/metrics.jsonl), with the 95% interval over seeds as a band.
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

"""`cocoedit rate report STUDY`: STUDY/report.{json,html} and STUDY/ratings.csv (every answer).

    report = write_report(Path("STUDY"), truth_rater="oracle")

Raters the exclusion rule excludes (cluster/rate/analysis.py) and the truth rater (an oracle that
knows the right answer, e.g. the synthetic task's exact targets) are left out of the human statistics;
the truth rater is then the reference for the humans' and the scorers' accuracy.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cocoedit.cluster.rate import analysis as an
from cocoedit.cluster.rate.design import load_design, plan_text
from cocoedit.cluster.rate.store import DB_FILE, Store

CSV_FIELDS = ["id", "rater", "pos", "kind", "ref", "item", "criterion", "left_image", "right_image",
              "left_system", "right_system", "choice", "score", "time_ms", "created", "undone"]  # fmt: skip


# The columns of a scorer-agreement table (against the human majority, and against the truth rater).
SCORER_COLUMNS = [
    "scorer",
    "criterion",
    "pairs",
    "decided",
    "accuracy",
    "acc_lo",
    "acc_hi",
    "tau",
    "tau_lo",
    "tau_hi",
]


def build_report(study: Path, truth_rater: Optional[str] = None, n_boot: int = 500) -> dict[str, Any]:
    design = load_design(study)
    answers = Store(Path(study) / DB_FILE).answers()
    if not answers:
        raise ValueError(f"{study} has no ratings yet: raters rate at `cocoedit rate serve {study}`")
    names = {a["rater"] for a in answers}
    if truth_rater is not None and truth_rater not in names:
        raise ValueError(f"--truth-rater {truth_rater!r} has no answers; raters: {sorted(names)}")
    quality = an.rater_quality(answers, design)
    kept = [a for a in answers if a["rater"] != truth_rater and not quality[a["rater"]]["excluded"]]
    systems = list(design["systems"])
    crits = [c["name"] for c in design["criteria"]]
    rows = an.oriented(kept, design)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Kendall's tau of a constant vector is NaN, reported as such
        report: dict[str, Any] = {
            "plan": plan_text(design, raters=max(1, len({a["rater"] for a in kept}))),
            "raters": quality,
            "truth_rater": truth_rater,
            "rule": f"excluded: attention-check accuracy < {an.MIN_CHECK_ACCURACY:.0%}, or agreement with "
            f"one's own first answer on repeated questions < {an.MIN_REPEAT_AGREEMENT:.0%}",
            "included": sorted({a["rater"] for a in kept}),
            "wtl": an.wtl(rows),
            "strengths": {
                c: an.bradley_terry(systems, [r for r in rows if r["criterion"] == c], n_boot)
                for c in crits
                if any(r["criterion"] == c for r in rows)
            },  # fmt: skip
            "alpha": {c: an.alpha([r for r in rows if r["criterion"] == c]) for c in crits},
            "scorers": an.scorer_agreement(rows, design, n_boot=n_boot * 2),
        }
        if truth_rater is not None:
            truth_rows = an.oriented([a for a in answers if a["rater"] == truth_rater], design)
            report["truth"] = {
                "scorers": an.scorer_agreement(truth_rows, design, n_boot=n_boot * 2),
                "humans": _humans_vs_truth(rows, truth_rows),
            }
    return report


def _humans_vs_truth(rows: list[dict], truth_rows: list[dict]) -> list[dict[str, Any]]:
    """Per criterion: how often the human majority picks the truth's side (questions where the truth is
    not a tie), with a 95% bootstrap interval over questions."""
    truth = an.majority(truth_rows)
    maj = an.majority(rows)
    out = []
    for crit in sorted({k[1] for k in truth}):
        keys = [k for k in truth if k[1] == crit and truth[k]["majority"] != 0 and k in maj]
        if not keys:
            continue
        hit = np.array(
            [
                0.5 if maj[k]["majority"] == 0 else float(maj[k]["majority"] == truth[k]["majority"])
                for k in keys
            ]
        )
        rng = np.random.default_rng(0)
        boots = [hit[rng.integers(0, len(hit), len(hit))].mean() for _ in range(1000)]
        lo, hi = np.percentile(boots, [2.5, 97.5])
        out.append(
            {
                "criterion": crit,
                "questions": len(keys),
                "accuracy": float(hit.mean()),
                "lo": float(lo),
                "hi": float(hi),
            }
        )
    return out


def write_csv(study: Path, path: Path) -> int:
    """Every answer (undone ones included, marked) with the systems shown on each side; rows written."""
    design = load_design(study)
    answers = Store(Path(study) / DB_FILE).answers(include_undone=True)
    system = {path: name for i in design["items"] for name, path in i["edits"].items()}
    checks = {c["id"]: c for c in design["checks"]}
    pairs = {p["id"]: p for p in design["pairs"]}
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        for a in answers:
            if a["kind"] == "check":
                c = checks[a["ref"]]
                side = {c["good"]: "check:good", c["bad"]: "check:bad"}
                item = c["item"]
            else:
                side, item = system, pairs[a["ref"]]["item"]
            w.writerow({**{k: a[k] for k in CSV_FIELDS if k in a}, "item": item,
                        "left_system": side.get(a["left_image"]), "right_system": side.get(a["right_image"])})  # fmt: skip
    return len(answers)


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _plots(report: dict[str, Any]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}
    crits = list(report["strengths"])
    if crits:
        fig, axes = plt.subplots(1, len(crits), figsize=(4 * len(crits), 3), squeeze=False)
        for ax, c in zip(axes[0], crits, strict=True):
            st = report["strengths"][c]
            names = list(st)
            y = [st[s]["strength"] for s in names]
            err = [
                [y[k] - st[s]["lo"] for k, s in enumerate(names)],
                [st[s]["hi"] - y[k] for k, s in enumerate(names)],
            ]
            ax.errorbar(range(len(names)), y, yerr=err, fmt="o", capsize=4)
            ax.set_xticks(range(len(names)), names)
            ax.axhline(0, color="grey", lw=0.5)
            ax.set_title(c)
            ax.set_ylabel("Bradley-Terry strength (log-odds)")
        plots["strengths"] = _png(fig)
    sc = report["scorers"]
    if sc:
        fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(sc)), 3.2))
        labels = [f"{r['scorer']}\n{r['criterion']}" for r in sc]
        acc = np.array([r["accuracy"] for r in sc], dtype=float)
        acc_err = np.array(
            [[r["accuracy"] - r["acc_lo"] for r in sc], [r["acc_hi"] - r["accuracy"] for r in sc]]
        )
        ax.bar(range(len(sc)), acc, yerr=np.nan_to_num(acc_err), capsize=3, color="#69c")
        ax.axhline(0.5, color="grey", ls="--", lw=0.8)
        ax.set_xticks(range(len(sc)), labels, rotation=60, fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_ylabel("agreement with human majority")
        plots["scorers"] = _png(fig)
    return plots


def _table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if np.isnan(v) else f"{v:.3f}"
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_html(report: dict[str, Any], path: Path) -> None:
    plots = _plots(report)
    img = lambda k, alt: f'<img src="data:image/png;base64,{plots[k]}" alt="{alt}">' if k in plots else ""  # noqa: E731
    strengths = [
        {"criterion": c, "system": s, **v} for c, st in report["strengths"].items() for s, v in st.items()
    ]
    alphas = [{"criterion": c, **(v or {"alpha": None})} for c, v in report["alpha"].items()]
    raters = [{"rater": k, **v} for k, v in report["raters"].items()]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>rating report</title><style>"
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
        "padding:2px 6px}</style></head><body><h1>Rating study report</h1>",
        f"<h2>Plan</h2><pre>{html.escape(report['plan'])}</pre>",
        f"<h2>Raters</h2><p>{html.escape(report['rule'])}; truth rater: {html.escape(str(report['truth_rater']))}</p>",
        _table(
            raters,
            [
                "rater",
                "answers",
                "checks",
                "check_accuracy",
                "repeats",
                "repeat_agreement",
                "median_s",
                "excluded",
                "reason",
            ],
        ),
        "<h2>Win / tie / loss</h2>",
        _table(report["wtl"], ["criterion", "a", "b", "a_wins", "ties", "b_wins", "n", "a_share"]),
        "<h2>Bradley-Terry strengths (first system = 0; 95% item bootstrap)</h2>",
        _table(strengths, ["criterion", "system", "strength", "lo", "hi"]),
        img("strengths", "Bradley-Terry strengths per criterion"),
        "<h2>Rater agreement (Krippendorff's alpha, ordinal)</h2>",
        _table(alphas, ["criterion", "alpha", "lo", "hi", "questions", "raters"]),
        "<h2>Scorers vs the human majority</h2><p>accuracy on pairs with a non-tie majority (scorer tie = "
        "half); Kendall's tau-b of the score difference against the human margin; 95% bootstrap over pairs</p>",
        _table(
            report["scorers"],
            SCORER_COLUMNS,
        ),
        img("scorers", "scorer agreement with the human majority"),
    ]
    if "truth" in report:
        parts += [
            "<h2>Against the truth rater</h2><h3>human majority</h3>",
            _table(report["truth"]["humans"], ["criterion", "questions", "accuracy", "lo", "hi"]),
            "<h3>scorers</h3>",
            _table(
                report["truth"]["scorers"],
                SCORER_COLUMNS,
            ),
        ]
    parts.append("<p>Every rating: <a href='ratings.csv'>ratings.csv</a></p></body></html>")
    path.write_text("\n".join(parts))


def write_report(study: Path, truth_rater: Optional[str] = None, n_boot: int = 500) -> dict[str, Any]:
    """Write STUDY/report.json, STUDY/report.html and STUDY/ratings.csv; returns the report."""
    study = Path(study)
    report = build_report(study, truth_rater, n_boot)
    write_csv(study, study / "ratings.csv")
    (study / "report.json").write_text(json.dumps(report, indent=1, default=float))
    write_html(report, study / "report.html")
    return report


def summary_text(report: dict[str, Any]) -> str:
    lines = [f"raters included: {', '.join(report['included'])}"]
    excluded = [k for k, v in report["raters"].items() if v["excluded"]]
    if excluded:
        why = [f"{k} ({report['raters'][k]['reason']})" for k in excluded]
        lines.append(f"excluded: {', '.join(why)}")
    for c, st in report["strengths"].items():
        lines.append(
            f"{c}: "
            + ", ".join(f"{s} {v['strength']:+.2f} [{v['lo']:+.2f}, {v['hi']:+.2f}]" for s, v in st.items())
        )
    for c, a in report["alpha"].items():
        if a:
            lines.append(
                f"alpha {c}: {a['alpha']:.3f} [{a['lo']:.3f}, {a['hi']:.3f}] ({a['questions']} questions)"
            )
    for r in report["scorers"]:
        lines.append(f"{r['scorer']} vs humans on {r['criterion']}: accuracy {r['accuracy']:.3f} "
                     f"[{r['acc_lo']:.3f}, {r['acc_hi']:.3f}] of {r['decided']}, tau {r['tau']:.3f}")  # fmt: skip
    return "\n".join(lines)

"""`cocoedit rate new|serve|report|simulate`: a blinded pairwise rating study of edit sets.

cocoedit rate new --out STUDY --edits before=RUN_A/eval after=RUN_B/eval [--max-items N] [--raters a,b]
cocoedit rate serve STUDY [--host 127.0.0.1] [--port 8765] [--raters c,d]
cocoedit rate report STUDY [--truth-rater NAME]
cocoedit rate simulate STUDY --url URL [--raters N] [--careless K] [--oracle NAME]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cocoedit.cluster.rate.store import DB_FILE


def _names(values: list[str]) -> list[str]:
    return [n for v in values for n in v.split(",") if n]


def _links(study: Path, names: list[str], base: str) -> None:
    from cocoedit.cluster.rate.store import Store

    store = Store(study / DB_FILE)
    for name in names:
        print(f"rater {name}: {base}/rate?token={store.add_rater(name)}")


def cli_new(args: argparse.Namespace) -> int:
    from cocoedit.cluster.rate.design import build_study, plan_text
    from cocoedit.cluster.rate.store import Store

    runs = {}
    for spec in args.edits:
        name, sep, folder = spec.partition("=")
        if not sep or not folder:
            print(
                f"rate new: --edits takes NAME=RUN_DIR (a `cocoedit eval` output), got {spec!r}",
                file=sys.stderr,
            )
            return 2
        if name in runs:
            print(f"rate new: system name {name!r} given twice", file=sys.stderr)
            return 2
        runs[name] = Path(folder)
    out = Path(args.out)
    try:
        design = build_study(out, runs, max_items=args.max_items, repeats=args.repeats, checks=args.checks,
                             seed=args.seed)  # fmt: skip
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"rate new: {e}", file=sys.stderr)
        return 1
    Store(out / DB_FILE).put_design(design)
    print(plan_text(design, raters=max(1, len(_names(args.raters))) if args.raters else 5))
    print(f"study: {out}  (serve it: cocoedit rate serve {out})")
    _links(out, _names(args.raters), "http://127.0.0.1:8765")
    return 0


def cli_serve(args: argparse.Namespace) -> int:
    from cocoedit.cluster.rate.app import serve

    study = Path(args.study)
    if not (study / DB_FILE).is_file():
        print(
            f"rate serve: {study} is not a study (no {DB_FILE}); make one with `cocoedit rate new`",
            file=sys.stderr,
        )
        return 1
    _links(study, _names(args.raters), f"http://{args.host}:{args.port}")
    return serve(study, args.host, args.port)


def cli_report(args: argparse.Namespace) -> int:
    from cocoedit.cluster.rate.report import summary_text, write_report

    try:
        report = write_report(Path(args.study), args.truth_rater, n_boot=args.bootstrap)
    except (ValueError, FileNotFoundError) as e:
        print(f"rate report: {e}", file=sys.stderr)
        return 1
    print(summary_text(report))
    print(f"report: {Path(args.study) / 'report.html'}\nratings: {Path(args.study) / 'ratings.csv'}")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `rate` subcommand group (wired by cluster/cli.py)."""
    rate = sub.add_parser("rate", help="blinded pairwise human rating of edit sets: study, page, report")
    rsub = rate.add_subparsers(dest="rate_command", required=True)
    new = rsub.add_parser("new", help="a study from two or more `cocoedit eval` runs of the same items")
    new.add_argument("--out", required=True, help="study folder (images, design.json, ratings.sqlite)")
    new.add_argument(
        "--edits", nargs="+", required=True, metavar="NAME=RUN_DIR", help="an eval run per system"
    )
    new.add_argument("--max-items", type=int, default=None, help="only the first N shared items")
    new.add_argument("--repeats", type=int, default=4, help="pairs each rater sees twice (sides swapped)")
    new.add_argument("--checks", type=int, default=4, help="attention checks with a known answer per rater")
    new.add_argument("--seed", type=int, default=0)
    new.add_argument(
        "--raters", action="append", default=[], help="names (comma-separated): print their links"
    )
    serve = rsub.add_parser("serve", help="the rating page (127.0.0.1 unless --host; elsewhere tokens only)")
    serve.add_argument("study")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765, help="0 = a free port (printed)")
    serve.add_argument(
        "--raters", action="append", default=[], help="names (comma-separated): print their links"
    )
    report = rsub.add_parser(
        "report", help="win/tie/loss, Bradley-Terry, agreement, judge vs humans; HTML + CSV"
    )
    report.add_argument("study")
    report.add_argument(
        "--truth-rater", default=None, help="a rater who knows the answer (the oracle): the reference"
    )
    report.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples for the intervals")
    sim = rsub.add_parser("simulate", help="simulated raters (and an oracle) rate a served study over HTTP")
    sim.add_argument("study")
    sim.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8765")
    sim.add_argument("--raters", type=int, default=5, help="noisy raters modelled on the oracle")
    sim.add_argument("--careless", type=int, default=1, help="raters answering at random")
    sim.add_argument("--oracle", default=None, help="also rate as the exact oracle under this name")
    sim.add_argument("--seed", type=int, default=0)

"""`cocoedit search`: its space, the verdict against a reference, refusals before Ray starts, and a real
search on Ray Tune with Optuna's sampler (known points first, values inside the space, resumable) in the
slow test."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.config import load_config
from cocoedit.cluster.sweep.report import PSNR, TrialOutcome
from cocoedit.cluster.sweep.search import Dimension, Search, dominates, parse_dimension, unseen_items, verdict
from tests.cluster.test_train import TINY

INSTR = "eval/synthetic"


def test_dimensions_parse_into_tune_domains() -> None:
    lam = parse_dimension("learner.lam_pos=log:0.03:3")
    assert lam == Dimension("learner.lam_pos", "log", (0.03, 3.0))
    assert lam.spec == "learner.lam_pos=log:0.03:3.0"
    radius = parse_dimension("learner.erode_radius=int:0:2")
    target = parse_dimension("learner.reg_pos_target=choice:sample,source")
    assert target.args == ("sample", "source")
    assert parse_dimension("learner.ring_weight=uniform:0:1").args == (0.0, 1.0)
    # Tune's domains draw inside the space; an int's upper end is included
    drawn = {radius.domain().sample() for _ in range(200)}
    assert drawn == {0, 1, 2}
    assert all(0.03 <= lam.domain().sample() <= 3.0 for _ in range(100))
    assert {target.domain().sample() for _ in range(50)} == {"sample", "source"}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("learner.lam_pos", "must look like KEY=log:LO:HI"),
        ("learner.lam_pos=gauss:0:1", "must look like KEY=log:LO:HI"),
        ("learner.lam_pos=log:0:1", "needs LO < HI and LO > 0"),
        ("learner.lam_pos=uniform:2:1", "needs LO < HI"),
        ("learner.lam_pos=log:a:1", "must look like"),
        ("learner.reg_pos_target=choice:sample", "two or more different values"),
        ("data.seed=int:0:3", "the search sets"),
    ],
)
def test_bad_dimensions_are_refused_with_the_fix(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_dimension(spec)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--space", "learner.lam_pos=log:0:1"], "needs LO < HI and LO > 0"),
        (["--space", "learner.lam_pos=log:0.1:1", "--trials", "0"], "--trials 0 must be >= 1"),
        (
            ["--space", "learner.lam_pos=log:0.1:1", "--start", "learner.tau_pos=0.1"],
            r"'learner.tau_pos'\] is not a --space key",
        ),
        (["--space", "learner.lam_pos=log:0.1:1", "--reference", "nonsense"], "must be KEY=VALUE pairs"),
        (
            ["--space", "learner.erode_radius=choice:1,x"],
            "search setting .*learner.erode_radius=x.*must be an integer",
        ),
        (
            ["--space", "learner.lam_pos=log:0.1:1", "--reference", "learner.lam_neg=-1"],
            "search setting 'learner.lam_neg=-1'",
        ),
    ],
)
def test_bad_search_input_exits_1_before_ray_starts(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["search", "--out", str(tmp_path / "out"), *argv]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def _outcome(setting: str, instr: float, psnr: float) -> TrialOutcome:
    key = setting.replace(" ", ",") + "/seed0"
    return TrialOutcome(key, setting, 0, {INSTR: instr, PSNR: psnr, "epoch": 1.0}, None, True)


def test_verdict_finds_the_front_and_what_dominates_the_reference(tmp_path: Path) -> None:
    assert dominates((0.70, 21.6), (0.70, 21.1), (0.5, 0.01))
    assert dominates((0.691, 21.6), (0.70, 21.1), (0.5, 0.01))
    assert not dominates((0.689, 30.0), (0.70, 21.1), (0.5, 0.01))  # 0.011 lower: too much instruction lost
    assert not dominates((0.80, 21.5), (0.70, 21.1), (0.5, 0.01))  # +0.4 dB: not enough keep PSNR
    search = Search(
        None,
        ("run.epochs=2",),
        (parse_dimension("learner.lam_pos=log:0.01:10"),),
        3,
        tmp_path / "s",
        reference=("learner.lam_pos=0", "learner.lam_neg=0"),
    )
    trials = [
        _outcome("learner.lam_pos=0 learner.lam_neg=0", 0.78, 21.1),
        _outcome("learner.lam_pos=0.05", 0.775, 21.7),  # dominates: +0.6 dB at -0.005
        _outcome("learner.lam_pos=1", 0.62, 23.8),  # on the front, does not dominate
        _outcome("learner.lam_pos=3", 0.60, 23.0),  # dominated by lam_pos=1
    ]
    failed = TrialOutcome("x/seed0", "learner.lam_pos=7", 0, {}, "ValueError: boom", False)
    text, front = verdict(search, [t.setting for t in trials] + [failed.setting], [*trials, failed])
    assert front == ["learner.lam_pos=0.05", "learner.lam_pos=1"]
    rows = {
        ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[2:-1]]
        for ln in text.splitlines()
        if ln.startswith("| learner")
    }
    assert rows["learner.lam_pos=0 learner.lam_neg=0"] == ["0.7800", "21.10", "yes", "reference"]
    assert rows["learner.lam_pos=0.05"] == ["0.7750", "21.70", "yes", "yes"]
    assert rows["learner.lam_pos=1"] == ["0.6200", "23.80", "yes", "no"]
    assert rows["learner.lam_pos=3"] == ["0.6000", "23.00", "", "no"]
    assert "learner.lam_pos=7" not in rows  # a failed trial has no final evaluation
    assert "1 setting(s) dominate the reference on this one seed" in text
    # the confirmation command: the front nearest to dominating first, then the reference, at three seeds
    # on items never searched on; a key a setting leaves out takes its config's value (tiny_cpu: 0.02)
    command = next(ln for ln in text.splitlines() if "cocoedit sweep" in ln)
    assert (
        "--grid 'learner.lam_neg+learner.lam_pos=0.02+0.05,0.02+1,0+0'" in command and "--seeds 3" in command
    )
    assert command.rstrip().endswith("run.epochs=2 data.synth_seed=1")  # the search's items: synth_seed 0
    trials[1] = _outcome("learner.lam_pos=0.05", 0.76, 21.7)
    assert (
        "No searched setting dominates the reference."
        in verdict(search, [t.setting for t in trials], trials)[0]
    )


# A small real search: 2 epochs per trial, evaluated at the end on 4 held-out edits.
SEARCH_OVERRIDES = [
    *TINY,
    "run.image_every=0",
    "run.checkpoint_every=2",
    "run.eval_every=2",
    "run.eval_items=4",
    "run.eval_seeds=1",
    "run.eval_train=false",
]


@pytest.mark.slow
def test_search_on_tune_runs_known_points_first_stays_in_its_space_and_resumes(tmp_path: Path) -> None:
    """`cocoedit search` in a subprocess (its own local Ray cluster): a reference, a known start point,
    then sampled settings inside the space; the report, verdict and front are written; the same command
    again runs nothing twice. About 4 minutes on 2 busy cores:
    `pytest -m slow tests/cluster/test_search.py -k resumes`."""
    out = tmp_path / "search"
    env = {**os.environ, "COCOEDIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)
    argv = [sys.executable, "-m", "cocoedit.cluster.cli", "search", "--out", str(out), "--trials", "3"]
    argv += ["--startup", "1", "--space", "learner.lam_pos=log:0.03:3"]
    argv += ["--space", "learner.reg_pos_target=choice:sample,source"]
    argv += ["--reference", "learner.lam_pos=0,learner.lam_neg=0"]
    argv += ["--start", "learner.lam_pos=0.8,learner.reg_pos_target=source", *SEARCH_OVERRIDES]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]

    runs = sorted(p.parent.parent.name for p in (out / "runs").glob("*/seed0/metrics.jsonl"))
    assert "learner.lam_pos=0,learner.lam_neg=0" in runs
    assert "learner.lam_pos=0.8,learner.reg_pos_target=source" in runs  # the known point, as given
    sampled = [dict(o.split("=") for o in r.split(",")) for r in runs if "learner.reg_pos_target" in r]
    assert 2 <= len(sampled) <= 3  # 3 trials: the start point and 2 draws (two equal draws share a run)
    for params in sampled:
        assert 0.03 <= float(params["learner.lam_pos"]) <= 3.0
        assert params["learner.reg_pos_target"] in ("sample", "source")
    for run in runs:  # every run trained 2 epochs and evaluated its start and its end
        rows = [
            json.loads(ln) for ln in (out / "runs" / run / "seed0" / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["epoch"] for r in rows] == [0, 1]
        assert "eval_start/pixel/psnr" in rows[0] and math.isfinite(rows[-1][PSNR])
    (trial,) = (out / "tune").glob("search_trial_*_1_*/result.json")  # trial 1 was the known point
    assert json.loads(trial.read_text().splitlines()[-1])["setting"] == (
        "learner.lam_pos=0.8 learner.reg_pos_target=source"
    )
    text = (out / "search.md").read_text()
    assert "| learner.lam_pos=0 learner.lam_neg=0 |" in text and "reference |" in text
    front = json.loads((out / "front.json").read_text())
    assert front and all(s.replace(" ", ",") in runs for s in front)
    assert "cocoedit sweep" in text and (out / "report.png").stat().st_size > 10_000

    before = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")}
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert {
        p: p.stat().st_mtime_ns for p in (out / "runs").rglob("metrics.jsonl")
    } == before  # nothing re-ran
    assert (out / "search.md").read_text() == text


def test_the_confirmation_draws_items_the_search_never_saw() -> None:
    """The synthetic task's next seed after the search's own (a search on data.synth_seed=1 was told to
    confirm on synth_seed=1, its own items); a data file cannot be re-drawn: the user names another."""
    assert unseen_items(load_config(None, [])) == ("data.synth_seed=1", "")
    assert unseen_items(load_config(None, ["data.synth_seed=1"]))[0] == "data.synth_seed=2"
    override, how = unseen_items(load_config(None, ["data.manifest=/data/items.jsonl"]))
    assert override == "data.manifest=UNSEEN"
    assert "a data file of items not in /data/items.jsonl" in how

"""`cocoedit sweep`: the grid, the trial's resources inside a Tune placement group, the report, and a
real sweep on Ray Tune (a failing trial, an interrupted sweep that resumes) in the slow test."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.config import load_config
from cocoedit.cluster.runtime.placement import Placement, run_bundles
from cocoedit.cluster.sweep.report import (
    SettingSummary,
    TrialOutcome,
    pareto_front,
    point_labels,
    setting_curves,
    stat,
    summarize,
    write_report,
)
from cocoedit.cluster.sweep.tune import (
    SEED_KEYS,
    Setting,
    Sweep,
    Trial,
    check_resumable,
    grid_settings,
)
from cocoedit.learner.checkpoint import latest_checkpoint
from tests.browser import open_in_chromium
from tests.cluster.test_train import TINY


def test_grid_is_the_product_of_its_axes_and_tied_keys_move_together() -> None:
    settings = grid_settings(
        ["learner.lam_pos+learner.lam_neg=0+0,0.8+0.5", "rewards.weights.pixel=0.1,0.2,0.3"]
    )
    assert len(settings) == 6
    assert settings[0].overrides == ("learner.lam_pos=0", "learner.lam_neg=0", "rewards.weights.pixel=0.1")
    assert settings[5].overrides == (
        "learner.lam_pos=0.8",
        "learner.lam_neg=0.5",
        "rewards.weights.pixel=0.3",
    )
    assert settings[5].slug == "learner.lam_pos=0.8,learner.lam_neg=0.5,rewards.weights.pixel=0.3"
    assert Setting(("data.manifest=/a b/m.jsonl",)).slug == "data.manifest=_a_b_m.jsonl"
    # every setting's overrides load as a config
    cfg = load_config(None, list(settings[5].overrides))
    assert (cfg.learner.lam_pos, cfg.learner.lam_neg, cfg.rewards.weights["pixel"]) == (0.8, 0.5, 0.3)


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["learner.lam_pos"], "must look like KEY=V1,V2"),
        (["learner.lam_pos="], "must look like KEY=V1,V2"),
        (["learner.lam_pos+learner.lam_neg=0+0,0.8"], "must give 2 '\\+'-separated values"),
        (["learner.lam_pos=0,0"], "repeats a value"),
        (["learner.lam_pos=0,1", "learner.lam_pos+learner.lam_neg=0+0"], "on more than one axis"),
    ],
)
def test_bad_grids_are_refused_with_the_fix(specs: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        grid_settings(specs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--grid", "learner.no_such_key=0,1"],
            "--grid setting 'learner.no_such_key=0': .*unknown key learner.no_such_key",
        ),
        (
            ["--grid", "learner.lam_pos=0,abc"],
            "--grid setting 'learner.lam_pos=abc': .*must be a number, got 'abc'",
        ),
        (["--grid", "learner.lam_pos=0,1", "--seeds", "0"], "--seeds 0 must be >= 1"),
        (["--grid", "data.seed=0,1"], "the sweep sets .*'data.seed'.* vary the seeds with --seeds"),
        (["--grid", "learner.lam_pos=0,1", "--max-concurrent", "-1"], "--max-concurrent -1 must be >= 0"),
        (["--grid", "learner.lam_pos=0,1", "run.pin_cpus=true"], "set run.pin_cpus=false for a sweep"),
    ],
)
def test_bad_sweep_input_exits_1_before_ray_starts(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli_main(["sweep", "--out", str(tmp_path / "out"), *argv]) == 1
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out").exists()  # refused before Ray and before anything was written


def test_trial_sets_every_seed_and_its_own_run_directory(tmp_path: Path) -> None:
    sweep = Sweep(None, ("run.epochs=3",), tuple(grid_settings(["learner.lam_pos=0,0.8"])), 2, tmp_path)
    assert [t.key for t in sweep.trials] == [
        "learner.lam_pos=0/seed0",
        "learner.lam_pos=0/seed1",
        "learner.lam_pos=0.8/seed0",
        "learner.lam_pos=0.8/seed1",
    ]
    cfg = sweep.trial_config(Trial(sweep.settings[1], 1))
    assert (cfg.data.seed, cfg.rollout.seed, cfg.learner.seed) == (1, 1, 1) and len(SEED_KEYS) == 3
    assert cfg.learner.lam_pos == 0.8 and cfg.run.epochs == 3
    assert Path(cfg.run.run_dir) == (tmp_path / "runs" / "learner.lam_pos=0.8" / "seed1").resolve()


def test_a_relative_config_is_the_one_beside_the_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune starts each trial in its own folder: a --config given relative to where `cocoedit sweep` ran
    must still load there (it once failed every trial with "config file ... does not exist")."""
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "mine.yaml").write_text("run:\n  epochs: 7\n")
    monkeypatch.chdir(tmp_path)
    sweep = Sweep("cfgs/mine.yaml", (), tuple(grid_settings(["learner.lam_pos=0,0.8"])), 1, Path("out"))
    assert sweep.config == str(tmp_path / "cfgs" / "mine.yaml") and sweep.workdir == tmp_path
    elsewhere = tmp_path / "trial_dir"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as Tune does
    cfg = sweep.trial_config(sweep.trials[0])
    assert cfg.run.epochs == 7


def test_resuming_with_another_grid_is_refused(tmp_path: Path) -> None:
    sweep = Sweep(None, (), tuple(grid_settings(["learner.lam_pos=0,0.8"])), 1, tmp_path)
    (tmp_path / "sweep.json").write_text(json.dumps(sweep.to_json()))
    check_resumable(sweep)  # the same sweep: fine
    other = Sweep(None, (), tuple(grid_settings(["learner.lam_pos=0,0.02"])), 1, tmp_path)
    with pytest.raises(ValueError, match="run the same command to resume it, or give a new --out"):
        check_resumable(other)


def test_confidence_interval_and_pareto_front_by_hand() -> None:
    s = stat([1.0, 2.0, 3.0])  # s = 1, t(0.975, 2) = 4.3027
    assert s.mean == 2.0 and s.ci95 == pytest.approx(4.302653 / math.sqrt(3), rel=1e-5) and s.n == 3
    assert math.isnan(stat([5.0]).ci95) and stat([]).n == 0 and str(stat([])) == "n/a"
    # (0.5, 20) is dominated by (0.6, 21); (0.7, 19) and (0.6, 21) trade off; NaN is never on the front
    assert pareto_front([(0.5, 20.0), (0.6, 21.0), (0.7, 19.0), (math.nan, 30.0)]) == {1, 2}
    assert pareto_front([(0.5, 20.0), (0.5, 20.0)]) == {0, 1}  # equal points do not dominate each other


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows = 0
        self.img_src: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.rows += tag == "tr"
        if tag == "img":
            self.img_src.append(dict(attrs)["src"] or "")


def _outcomes(sweep: Sweep) -> list[TrialOutcome]:
    """Seeds of S1 at psnr 20, 21, 22 and score 0.5; S2 one finished seed and one failed; every trial
    started (first evaluation) at psnr 22 and score 0.4."""
    out = []
    for t in sweep.trials:
        if t.setting == sweep.settings[1] and t.seed == 1:
            out.append(TrialOutcome(t.key, t.setting.name, t.seed, {}, "FileNotFoundError: no such file"))
            continue
        psnr = 20.0 + t.seed if t.setting == sweep.settings[0] else 25.0
        metrics = {"eval/synthetic": 0.5, "eval/pixel/psnr": psnr, "eval/pixel/ssim": 0.9, "epoch": 4.0}
        first = {"eval/synthetic": 0.4, "eval/pixel/psnr": 22.0, "epoch": 0.0}
        out.append(TrialOutcome(t.key, t.setting.name, t.seed, metrics, finished=True, first=first))
    return out


def _write_trial_metrics(out: Path, outcomes: list[TrialOutcome]) -> None:
    """Each trial's metrics.jsonl as a run writes it: 5 epochs, evaluations at epochs 0 and 4 (the
    outcome's first and final metrics), training reward/mean 0.1 * (epoch + seed); the failed trial none."""
    for o in outcomes:
        if o.error:
            continue
        run = out / "runs" / o.key
        run.mkdir(parents=True)
        rows = [{"epoch": e, "reward/mean": 0.1 * (e + o.seed)} for e in range(5)]
        rows[0] |= {k: v for k, v in o.first.items() if k != "epoch"}
        rows[4] |= {k: v for k, v in o.metrics.items() if k != "epoch"}
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def report_dir(tmp_path: Path) -> Path:
    sweep = Sweep(None, (), tuple(grid_settings(["learner.lam_pos=0,0.8"])), 3, tmp_path)
    outcomes, settings = _outcomes(sweep), [s.name for s in sweep.settings]
    rows = summarize(settings, outcomes)
    assert rows[0].psnr.mean == 21.0 and rows[0].psnr.ci95 == pytest.approx(2.484, abs=1e-3)
    assert (rows[1].done, rows[1].failed, rows[1].psnr.mean) == (2, 1, 25.0)
    assert [r.on_front for r in rows] == [False, True]
    twin = SettingSummary(**{**rows[1].__dict__, "label": "S3"})  # ends where S2 does: one label for both
    assert point_labels([*rows, twin]) == {(0.5, 21.0): "S1", (0.5, 25.0): "S2, S3"}
    _write_trial_metrics(tmp_path, outcomes)
    report = write_report(
        tmp_path, settings, outcomes, command="cocoedit sweep --grid learner.lam_pos=0,0.8 --seeds 3"
    )
    assert (rows[0].d_psnr.mean, rows[1].d_psnr.mean) == (-1.0, 3.0)  # paired per seed: final - first
    assert rows[0].d_instruction.mean == pytest.approx(0.1)
    assert (
        "| S1 | `learner.lam_pos=0` | 3 | 0.500 +- 0.000 | 21.00 +- 2.48 | 0.900 +- 0.000 | " in report.text
    )
    assert "| +0.100 +- 0.000 | -1.00 +- 2.48 |" in report.text
    assert "| S2 | `learner.lam_pos=0.8` | 2 (1 failed) |" in report.text
    assert report.text.endswith(
        "Failed trials:\n- `learner.lam_pos=0.8/seed1`: FileNotFoundError: no such file"
    )
    return tmp_path


def test_report_table_plot_and_page(report_dir: Path) -> None:
    from PIL import Image

    with Image.open(report_dir / "report.png") as png:
        assert png.size == (640, 440)
    dom = _Dom()
    page = (report_dir / "report.html").read_text()
    dom.feed(page)
    assert dom.rows == (1 + 2) + (1 + 6)  # settings table, trials table
    assert len(dom.img_src) == 2 and all(src.startswith("data:image/png;base64,") for src in dom.img_src)
    with Image.open(report_dir / "curves.png") as png:
        assert png.size == (1350, 400)
    assert "FileNotFoundError: no such file" in page


def test_learning_curves_are_means_over_seeds_per_epoch(report_dir: Path) -> None:
    sweep = Sweep(None, (), tuple(grid_settings(["learner.lam_pos=0,0.8"])), 3, report_dir)
    outcomes = _outcomes(sweep)
    rows = summarize([s.name for s in sweep.settings], outcomes)
    psnr = setting_curves(report_dir, rows, outcomes, "eval/pixel/psnr")
    assert [(e, s.mean, s.n) for e, s in psnr["S1"]] == [(0, 22.0, 3), (4, 21.0, 3)]
    assert psnr["S1"][1][1].ci95 == pytest.approx(2.484, abs=1e-3)  # seeds at 20, 21, 22
    assert [(e, s.mean, s.n) for e, s in psnr["S2"]] == [(0, 22.0, 2), (4, 25.0, 2)]  # seed 1 failed: none
    reward = setting_curves(report_dir, rows, outcomes, "reward/mean")
    assert [round(s.mean, 6) for _, s in reward["S1"]] == [0.1, 0.2, 0.3, 0.4, 0.5]  # seeds 0, 1, 2


def test_report_opens_in_headless_chromium(report_dir: Path) -> None:
    dom = open_in_chromium(report_dir / "report.html")
    assert 'data-images="2"' in dom and 'data-broken-images="0"' in dom


def test_run_bundles_lay_out_every_role() -> None:
    cfg = load_config(None, ["rollout.num_workers=2", "rewards.pixel.scaling.replicas=2"])
    assert run_bundles(cfg) == [{"CPU": 0.5}] + [{"CPU": 0.5}] * 2 + [{"CPU": 0.25}] * 3
    scaling = load_config(
        None, ["rewards.pixel.scaling.target_score_s=1.0", "rewards.pixel.scaling.max_replicas=3"]
    )
    assert run_bundles(scaling).count({"CPU": 0.25}) == 3 + 1  # pixel up to max_replicas, synthetic 1
    colocated = load_config(
        None,
        [
            "run.colocate=true",
            "rollout.num_workers=2",
            "learner.world_size=2",
            "rollout.gpus_per_worker=0.5",
            "learner.gpus_per_rank=0.5",
        ],
    )
    assert run_bundles(colocated)[:2] == [{"CPU": 1.0, "GPU": 1.0}] * 2


def test_a_run_inside_a_tune_trial_takes_the_trials_bundles(ray_local, tmp_path: Path) -> None:  # noqa: ANN001
    """Real Ray Tune, two trials with the resources of `cfg`: in one the run's Placement takes the trial's
    bundles by index (the reward replicas theirs, after every other role), an actor started without a
    placement lands in the group too (Tune captures it),
    and closing leaves the trial's group alone; in the other a run of another layout is refused."""
    from ray import tune

    from cocoedit.cluster.sweep.tune import trial_resources

    cfg = load_config(None, ["rollout.num_workers=2"])
    other = load_config(None, ["rollout.num_workers=1"])

    def trial(params: dict) -> None:
        import ray

        placement = Placement(cfg if params["case"] == "same" else other)
        group = ray.util.get_current_placement_group()

        @ray.remote(num_cpus=0.25)
        class Replica:
            def group(self) -> str:
                return ray.util.get_current_placement_group().id.hex()

        strategy = placement.rollout(1)["scheduling_strategy"]
        learner_index = placement.learner(0)["scheduling_strategy"].placement_group_bundle_index
        replicas = sorted(b for n in ("pixel", "synthetic") for b in placement.replica_bundles(n))
        placement.close()  # the trial's group is Tune's: it stays
        tune.report(
            {
                "learner_index": learner_index,
                "replica_bundles": replicas,
                "rollout_index": strategy.placement_group_bundle_index,
                "same_group": float(strategy.placement_group == group),
                "replica_in_group": float(ray.get(Replica.remote().group.remote()) == group.id.hex()),
                "owned": float(placement.owned),
                "kept": float(ray.util.placement_group_table(group)["state"] == "CREATED"),
            }
        )

    tuner = tune.Tuner(
        tune.with_resources(trial, trial_resources(cfg)),
        param_space={"case": tune.grid_search(["same", "other"])},
        run_config=tune.RunConfig(storage_path=str(tmp_path), name="t", verbose=0),
    )
    results = {r.config["case"]: r for r in tuner.fit()}
    same, mismatched = results["same"], results["other"]
    assert same.error is None, same.error
    m = same.metrics
    assert (m["learner_index"], m["rollout_index"]) == (0, 2)  # learner rank 0; rollout workers at 1, 2
    assert m["replica_bundles"] == [3, 4]  # the reward replicas' own bundles, after every other role's
    assert m["same_group"] == 1.0 and m["replica_in_group"] == 1.0 and (m["owned"], m["kept"]) == (0.0, 1.0)
    assert mismatched.error is not None and "are not the run's" in str(mismatched.error)


# A real sweep: 2 settings x 1 seed and a setting whose data file is broken (it fails in the run, not in
# the config), 3 epochs each (one to interrupt), with the test-sized tiny editor of tests/cluster/test_train.py.
# enough epochs that the interrupt lands before the second trial ends even when an epoch takes a fraction
# of a second (with 3 the window between its first checkpoint and its second epoch was missed on a quiet
# machine)
SWEEP_EPOCHS = 5
SWEEP_OVERRIDES = [
    *TINY,
    f"run.epochs={SWEEP_EPOCHS}",
    "run.image_every=0",
    "run.eval_seeds=1",
    "rollout.num_steps=2",
]


def _files(run_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_sweep_on_tune_survives_a_failed_trial_and_resumes_after_an_interrupt(tmp_path: Path) -> None:
    """`cocoedit sweep` in a subprocess (its own local Ray cluster), interrupted with SIGINT once the first
    trial has finished and the second has checkpointed its first epoch (Tune lets it finish the epoch in
    flight), then run again with the same command: the first is not run again, the second continues from
    its checkpoint, the broken one fails without stopping them. About 5 minutes on 2 busy cores:
    `pytest -m slow tests/cluster/test_sweep.py -k tune_survives`."""
    out, broken = tmp_path / "sweep", tmp_path / "broken.jsonl"
    broken.write_text('{"id": "a", "source": "missing.png"}\n')
    env = {**os.environ, "COCOEDIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_ADDRESS", None)  # its own local cluster, never another one on the machine
    grid = f"learner.lam_pos+data.manifest=0+null,0.8+null,0+{broken}"
    argv = [sys.executable, "-m", "cocoedit.cluster.cli", "sweep", "--grid", grid, "--out", str(out)]
    argv += SWEEP_OVERRIDES
    first = out / "runs" / "learner.lam_pos=0,data.manifest=null" / "seed0"
    second = out / "runs" / "learner.lam_pos=0.8,data.manifest=null" / "seed0"

    def lines(run_dir: Path) -> list[str]:
        path = run_dir / "metrics.jsonl"
        return path.read_text().splitlines() if path.exists() else []

    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if lines(second) and latest_checkpoint(second) is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves the experiment state and stops the trials
    interrupted_log = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1 and "run the same command again to resume" in interrupted_log
    assert len(lines(first)) == SWEEP_EPOCHS and 1 <= len(lines(second)) < SWEEP_EPOCHS, interrupted_log[
        -3000:
    ]
    first_files, second_before = _files(first), lines(second)

    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "resuming the sweep" in log
    assert _files(first) == first_files  # the finished trial did not run again: not one file touched
    # continued from its checkpoint: the epochs run before the interrupt are kept, each epoch ran once
    assert lines(second)[: len(second_before)] == second_before
    assert [json.loads(ln)["epoch"] for ln in lines(second)] == list(range(SWEEP_EPOCHS))
    # Tune holds every epoch of both (the resumed trial's earlier epochs reported again at its restart)
    for trial in ("00000", "00001"):
        (result,) = (out / "tune").glob(f"run_trial_*_{trial}_*/result.json")
        rows = [json.loads(ln) for ln in result.read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(SWEEP_EPOCHS)) and all(
            "reward/mean" in r for r in rows
        )
        assert "eval/pixel/psnr" in rows[-1]
    report = (out / "report.md").read_text()
    assert "| S1 | `learner.lam_pos=0 data.manifest=null` | 1 |" in report
    assert "| S2 | `learner.lam_pos=0.8 data.manifest=null` | 1 |" in report
    assert f"| S3 | `learner.lam_pos=0 data.manifest={broken}` | 0 (1 failed) |" in report
    for run_dir, row in ((first, "S1"), (second, "S2")):  # the table holds each run's final evaluation
        final = json.loads(lines(run_dir)[-1])
        cells = next(ln for ln in report.splitlines() if ln.startswith(f"| {row} ")).split("|")
        assert cells[4].strip() == f"{final['eval/synthetic']:.3f}"
        assert cells[5].strip() == f"{final['eval/pixel/psnr']:.2f}"
        start = json.loads(lines(run_dir)[0])["eval_start/pixel/psnr"]  # the starting policy's evaluation
        change = final["eval/pixel/psnr"] - start
        summary = json.loads((run_dir / "eval" / "summary.json").read_text())  # each trial's paired changes
        (psnr,) = [c for c in summary["eval"] if c["metric"] == "pixel/psnr"]
        assert psnr["diff"] == pytest.approx(change)
        assert cells[8].strip() == f"{change:+.2f}"
    page = (out / "report.html").read_text()
    assert str(broken) in page and "problem(s)" in page  # the failed trial's error
    assert (out / "report.png").stat().st_size > 10_000

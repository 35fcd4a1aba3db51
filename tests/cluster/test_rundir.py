"""Runs that cannot be mixed: a run directory that holds a run is refused unless `--resume` or
`--overwrite`; `--resume` starts from the run's own config.yaml and applies only what the command line
changes, printing each change; checkpoints named by epochs done are found beside the older step-named
ones. No Ray: everything here is decided before anything starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cocoedit.cluster.cli import main as cli_main
from cocoedit.cluster.config import dump_config, load_config
from cocoedit.cluster.train.rundir import RunDirError, claim_run_dir, resumed_config
from cocoedit.learner.checkpoint import latest_checkpoint


def _run(
    run_dir: Path, overrides: list[str], epochs_done: tuple[int, ...] = (2,), kind: str = "epoch"
) -> Path:
    """A finished-looking run: config.yaml, metrics.jsonl and complete checkpoints."""
    cfg = load_config(None, [f"run.run_dir={run_dir}", *overrides])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0}\n{"epoch": 1}\n')
    for n in epochs_done:
        ckpt = run_dir / "checkpoints" / f"{kind}_{n:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "COMPLETE").write_text("{}")
        (ckpt / "learner_state.json").write_text(json.dumps({"step": n, "extra_state": {"epoch": n - 1}}))
    return run_dir


def test_a_run_directory_holding_a_run_is_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run(tmp_path / "run", [])
    assert cli_main(["train", f"run.run_dir={run_dir}", "run.epochs=4"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"run.run_dir={run_dir} already holds a run" in err
    assert "--resume" in err and "--overwrite" in err
    assert (run_dir / "metrics.jsonl").read_text() == '{"epoch": 0}\n{"epoch": 1}\n'  # untouched
    # an empty or missing directory is this run's to take
    (tmp_path / "empty").mkdir()
    for free in (tmp_path / "empty", tmp_path / "missing"):
        assert claim_run_dir(load_config(None, [f"run.run_dir={free}"]), False, False) is None


def test_overwrite_moves_the_old_run_aside_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run(tmp_path / "run", [])
    aside = claim_run_dir(load_config(None, [f"run.run_dir={run_dir}"]), False, True)
    assert aside is not None and aside.parent == tmp_path and aside.name.startswith("run.replaced-")
    assert not run_dir.exists() and (aside / "checkpoints" / "epoch_00000002" / "COMPLETE").is_file()
    assert f"moved to {aside}" in capsys.readouterr().out
    with pytest.raises(RunDirError, match="give one of them"):
        claim_run_dir(load_config(None, [f"run.run_dir={aside}"]), True, True)


def test_resume_continues_its_own_run_but_never_into_another_one(tmp_path: Path) -> None:
    run_dir = _run(tmp_path / "run", [])
    assert claim_run_dir(load_config(None, [f"run.run_dir={run_dir}"]), True, False) is None
    other = _run(tmp_path / "other", [])
    ckpt = latest_checkpoint(run_dir)
    with pytest.raises(RunDirError, match="already holds another run"):
        claim_run_dir(load_config(None, [f"run.run_dir={other}"]), str(ckpt), False)
    # into a new directory is fine (a branch of the run)
    assert claim_run_dir(load_config(None, [f"run.run_dir={tmp_path / 'branch'}"]), str(ckpt), False) is None


def test_resume_keeps_the_runs_own_settings_and_prints_each_change(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = _run(tmp_path / "run", ["run.name=mine", "run.trackers=[tensorboard,wandb]", "run.epochs=4"])
    overrides = [f"run.run_dir={run_dir}", "run.epochs=6"]
    cfg = resumed_config(load_config(None, overrides), None, overrides, True)
    # the command line said nothing about the trackers or the name: the run's own stay
    assert cfg.run.trackers == ("tensorboard", "wandb") and cfg.run.name == "mine"
    assert cfg.run.epochs == 6 and cfg.run.run_dir == str(run_dir)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"--resume: the config of {run_dir / 'config.yaml'}"
    assert out[1:] == ["--resume: run.epochs: 4 -> 6 (from the command line)"]
    # an explicit --config file counts as stated: its keys apply (and resume.py refuses the ones it must)
    cfg = resumed_config(cfg, "cluster/configs/tiny_cpu.yaml", overrides, True)
    assert cfg.run.name == "tiny_cpu" and cfg.run.trackers == ("tensorboard", "wandb")
    assert "--resume: run.name: 'mine' -> 'tiny_cpu' (from the command line)" in capsys.readouterr().out


def test_checkpoints_named_by_epochs_follow_older_step_named_ones(tmp_path: Path) -> None:
    # a run of an earlier version (step_N, N = learner step; 2 epochs done at step 1: one skipped update)
    run_dir = tmp_path / "run"
    old = run_dir / "checkpoints" / "step_00000001"
    old.mkdir(parents=True)
    (old / "COMPLETE").write_text("{}")
    (old / "learner_state.json").write_text(json.dumps({"step": 1, "extra_state": {"epoch": 1}}))
    assert latest_checkpoint(run_dir) == old  # old names are still found
    new = run_dir / "checkpoints" / "epoch_00000003"
    new.mkdir()
    (new / "COMPLETE").write_text("{}")
    assert latest_checkpoint(run_dir) == new  # 3 epochs done > 2

"""`--resume [PATH]`: which checkpoint, and the config check that refuses anything but run length and
logging changes (the bit-exact continuation itself is in test_train.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cocoedit.cluster.config import dump_config, load_config
from cocoedit.cluster.train.resume import ResumeConfigError, resume_from


def _run(tmp_path: Path, steps: tuple[int, ...], overrides: tuple[str, ...] = ()) -> tuple[Path, list[Path]]:
    """A run directory with its config.yaml and complete checkpoints at `steps` (one half-written)."""
    run_dir = tmp_path / "run"
    cfg = load_config(None, [f"run.run_dir={run_dir}", *overrides])
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    ckpts = []
    for step in steps:
        ckpt = run_dir / "checkpoints" / f"step_{step:08d}"
        ckpt.mkdir(parents=True)
        (ckpt / "COMPLETE").write_text("{}")
        ckpts.append(ckpt)
    (run_dir / "checkpoints" / ".tmp_step_00000099").mkdir()  # a save that was killed
    return run_dir, ckpts


def test_latest_or_the_named_checkpoint(tmp_path: Path) -> None:
    run_dir, (first, second) = _run(tmp_path, (3, 7))
    cfg = load_config(None, [f"run.run_dir={run_dir}"])
    assert resume_from(cfg, False) is None
    assert resume_from(cfg, True) == second
    assert resume_from(cfg, str(first)) == first  # an older one, by name
    assert resume_from(cfg, run_dir) == second  # a run directory: its latest
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resume_from(cfg, run_dir / "checkpoints" / ".tmp_step_00000099")
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resume_from(load_config(None, [f"run.run_dir={tmp_path / 'empty'}"]), True)


def test_run_length_logging_and_placement_may_change(tmp_path: Path) -> None:
    run_dir, (ckpt,) = _run(tmp_path, (2,))
    changed = [
        f"run.run_dir={tmp_path / 'branch'}",  # continue an older checkpoint into a new run directory
        "run.epochs=500",
        "run.image_every=1",
        "run.checkpoint_every=2",
        "run.trackers=[tensorboard,mlflow]",
        "run.eval_every=3",
        "run.ray_connect_timeout_s=5",
        "eval.num_steps=3",
    ]
    assert resume_from(load_config(None, changed), ckpt) == ckpt


def test_a_changed_learning_rate_is_refused_naming_the_key(tmp_path: Path) -> None:
    run_dir, (ckpt,) = _run(tmp_path, (2,))
    cfg = load_config(None, [f"run.run_dir={run_dir}", "learner.lr=5e-4", "rewards.weights={pixel: 1.0}"])
    with pytest.raises(ResumeConfigError) as e:
        resume_from(cfg, True)
    msg = str(e.value)
    assert "3 key(s)" in msg and "learner.lr: 0.001 -> 0.0005" in msg
    assert "rewards.weights.pixel: 0.5 -> 1.0" in msg and "rewards.weights.synthetic: 0.5 -> None" in msg


def test_keys_added_since_compare_as_their_defaults(tmp_path: Path) -> None:
    """A checkpoint written before a config key existed ran as that key's default does."""
    run_dir, (ckpt,) = _run(tmp_path, (2,))
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    del saved["learner"]["lr"]  # as if learner.lr (default 3e-4) had been added after this run
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    assert resume_from(load_config(None, [f"run.run_dir={run_dir}", "learner.lr=3e-4"]), ckpt) == ckpt
    with pytest.raises(ResumeConfigError, match=r"learner.lr: 0.0003 -> 0.001"):
        resume_from(load_config(None, [f"run.run_dir={run_dir}"]), ckpt)  # the tiny config's 1e-3


def test_tiny_model_paths_resolved_at_start_are_not_differences(tmp_path: Path) -> None:
    run_dir, (ckpt,) = _run(tmp_path, (2,), ("policy.model_path=/cache/tiny-editor-abc",))
    assert resume_from(load_config(None, [f"run.run_dir={run_dir}"]), ckpt) == ckpt  # unset: resolved later
    with pytest.raises(ResumeConfigError, match="policy.model_path"):
        resume_from(load_config(None, [f"run.run_dir={run_dir}", "policy.model_path=/models/other"]), ckpt)

"""Which checkpoint `cocoedit train --resume [PATH]` continues from, and whether this config may.

    ckpt = resume_from(cfg, resume)   # resume: False, True (the latest) or a path; None = start afresh

`--resume` takes the latest complete checkpoint of run.run_dir; `--resume PATH` a checkpoint directory,
or a run directory (its latest complete checkpoint). The config must be the one that checkpoint's run
was trained with (the resolved `config.yaml` of its run directory) in everything but run length,
logging and where the driver runs (RESUMABLE); otherwise the run is refused, naming every differing
key, before anything starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Union

import yaml

from cocoedit.cluster.config import Config, redacted_dict, to_dict
from cocoedit.learner.checkpoint import COMPLETE, latest_checkpoint

# Keys a resumed run may change: how long it runs, what it logs and where (none changes what a step
# computes). The `eval` section configures `cocoedit eval`, which training never reads.
RESUMABLE = (
    "run.name",
    "run.run_dir",
    "run.epochs",
    "run.image_every",
    "run.checkpoint_every",
    "run.keep_checkpoints",
    "run.eval_every",
    "run.eval_items",
    "run.eval_seeds",
    "run.trackers",
    "run.wandb_project",
    "run.wandb_mode",
    "run.mlflow_tracking_uri",
    "run.mlflow_experiment",
    "run.ray_address",
    "run.ray_connect_timeout_s",
    "run.ray_num_cpus",
    "run.metrics_export_port",
    "run.placement_timeout_s",
    "run.check_resources",
    "run.pin_cpus",
    "eval.",
)
# Filled in when the run starts (run.tiny builds them from the pretrain / judge settings, which are
# compared): a config that leaves them unset matches any value the checkpoint's run resolved.
RESOLVED_AT_START = ("policy.model_path", "rewards.mllm.model_path")


Resume = Union[bool, str, Path]  # False: start afresh; True: the latest checkpoint; a path: that one


class ResumeConfigError(ValueError):
    """The config differs from the checkpoint's run in keys a resumed run must keep."""


def resume_from(cfg: Config, resume: Resume) -> Optional[Path]:
    """The checkpoint directory to continue from (None when not resuming), its config checked."""
    if not resume:
        return None
    if resume is True:
        ckpt = latest_checkpoint(cfg.run.run_dir)
        if ckpt is None:
            raise FileNotFoundError(
                f"--resume: no complete checkpoint under {cfg.run.run_dir}/checkpoints; start it again with --overwrite instead of --resume"
            )
    else:
        path = Path(resume)
        ckpt = path if (path / COMPLETE).is_file() else latest_checkpoint(path)
        if ckpt is None:
            raise FileNotFoundError(
                f"--resume {path}: not a complete checkpoint (no {COMPLETE} file in it) and no complete checkpoint "
                f"under {path}/checkpoints; name a checkpoint directory such as RUN_DIR/checkpoints/epoch_00000010"
            )
    check_config(cfg, ckpt)
    return ckpt


def check_config(cfg: Config, ckpt: Path) -> None:
    """Raise ResumeConfigError naming every key (outside RESUMABLE) in which `cfg` differs from the
    config.yaml of the run that wrote checkpoint `ckpt` (RUN_DIR/checkpoints/epoch_N)."""
    saved_path = ckpt.parent.parent / "config.yaml"
    if not saved_path.is_file():
        raise ResumeConfigError(
            f"--resume {ckpt}: cannot check the config, {saved_path} (written when that run started) is missing; "
            "put the run's config.yaml there"
        )
    saved = _flat(yaml.safe_load(saved_path.read_text()) or {})
    now = _flat(redacted_dict(cfg))  # config.yaml holds secrets redacted
    # keys the saved config lacks were added since; that run behaved as their defaults do
    defaults = _flat(to_dict(Config()))
    differ = []
    for key in sorted(set(saved) | set(now)):
        if key.startswith(RESUMABLE) or (key in RESOLVED_AT_START and now.get(key) is None):
            continue
        before = saved.get(key, defaults.get(key))
        if before != now.get(key):
            differ.append(f"{key}: {before!r} -> {now.get(key)!r}")
    # a weight schedule is a function of epoch / (run.epochs - 1): another run length would change the
    # weights of the epochs left, so a scheduled run keeps its length
    epochs = saved.get("run.epochs", defaults["run.epochs"])
    if now["learner.lam_schedule"] != "constant" and epochs != now["run.epochs"]:
        differ.append(
            f"run.epochs: {epochs!r} -> {now['run.epochs']!r} (learner.lam_schedule={now['learner.lam_schedule']} "
            "sets each epoch's regularizer weights from epoch / (run.epochs - 1))"
        )
    if differ:
        raise ResumeConfigError(
            f"--resume {ckpt}: the config differs from the one that run was trained with ({saved_path}) in "
            f"{len(differ)} key(s): {'; '.join(differ)}. A resumed run may change only run length, logging and "
            "where it runs (cluster/train/resume.py RESUMABLE); start a new run (without --resume) to change the rest"
        )


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys -> leaf values (an empty dict is a leaf)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}

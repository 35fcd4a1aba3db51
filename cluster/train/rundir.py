"""Runs that cannot be mixed: what `cocoedit train` does with an existing run directory, and the config
of `--resume`.

    cfg = resumed_config(cfg, args.config, args.overrides, args.resume)  # --resume: the run's own config
    claim_run_dir(cfg, resume, overwrite)                                  # refuse / move aside

A run directory that holds anything is refused unless `--resume` continues it or `--overwrite` starts
over (its old contents are moved to a sibling `<run_dir>.replaced-<UTC time>`, and the command says
so): otherwise two runs' metrics, configs, LoRAs and checkpoints end up in one folder and a later
`--resume` picks the other run's checkpoint.

`--resume` starts from the resolved `config.yaml` of the checkpoint's run and applies only what the
command line states (the keys of an explicit `--config FILE` and the `key=value` overrides), printing
each key it changes; cluster/train/resume.py then refuses the changes a resumed run may not make.
"""

from __future__ import annotations

import datetime
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import yaml

from cocoedit.cluster.config import Config, load_config, to_dict
from cocoedit.cluster.train.resume import RESOLVED_AT_START, Resume
from cocoedit.learner.checkpoint import COMPLETE, latest_checkpoint


class RunDirError(ValueError):
    """run.run_dir holds another run; the message names the three ways on."""


def claim_run_dir(cfg: Config, resume: Resume, overwrite: bool) -> Optional[Path]:
    """Make run.run_dir this run's own. Returns where its old contents went (--overwrite), else None."""
    run_dir = Path(cfg.run.run_dir)
    if not run_dir.is_dir() or not any(run_dir.iterdir()):
        return None
    if resume and overwrite:
        raise RunDirError("--resume continues a run and --overwrite starts it over: give one of them")
    if resume:
        ckpt = _checkpoint(cfg, resume)
        if ckpt is None or ckpt.parent.parent.resolve() == run_dir.resolve():
            return None  # continuing this very run (or cluster/train/resume.py names the missing checkpoint)
        raise RunDirError(
            f"run.run_dir={run_dir} already holds another run than the one of checkpoint {ckpt}: resume into a "
            f"new or empty run.run_dir, or into {ckpt.parent.parent} itself"
        )
    if overwrite:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        aside = run_dir.with_name(f"{run_dir.name}.replaced-{stamp}")
        shutil.move(str(run_dir), str(aside))
        print(f"--overwrite: the old contents of {run_dir} were moved to {aside}")
        return aside
    raise RunDirError(
        f"run.run_dir={run_dir} already holds a run ({', '.join(sorted(p.name for p in run_dir.iterdir())[:4])}"
        f"{', ...' if len(list(run_dir.iterdir())) > 4 else ''}): add --resume to continue it, --overwrite to "
        "start over (its contents are moved aside), or give a new run.run_dir (or run.name)"
    )


def resumed_config(
    cfg: Config, config_path: Optional[str], overrides: Sequence[str], resume: Resume
) -> Config:
    """The config of `--resume`: the checkpoint's run's config.yaml with what the command line states
    applied, each changed key printed. `cfg` (the file and overrides as given) finds the checkpoint; when
    there is none, or no config.yaml beside it, `cfg` is returned and cluster/train/resume.py says what is missing."""
    ckpt = _checkpoint(cfg, resume)
    saved_path = ckpt.parent.parent / "config.yaml" if ckpt is not None else None
    if saved_path is None or not saved_path.is_file():
        return cfg
    saved = yaml.safe_load(saved_path.read_text()) or {}
    stated = [*(_stated(config_path) if config_path is not None else []), *overrides]
    stated_keys = {s.partition("=")[0].strip() for s in stated}
    # a tiny run built these from its pretrain / judge settings at start: resolve them again (the cached
    # build may be gone); cluster/train/resume.py compares the settings they are built from
    tiny = bool((saved.get("run") or {}).get("tiny"))
    resets = [f"{k}=null" for k in RESOLVED_AT_START if tiny and k not in stated_keys]
    # the saved file is read as a config file: keys added since take their defaults
    before = load_config(saved_path, resets)
    new = load_config(saved_path, [*resets, *stated])
    flat_before, flat_after = _flat(to_dict(before)), _flat(to_dict(new))
    changed = [
        k for k in sorted(set(flat_before) | set(flat_after)) if flat_before.get(k) != flat_after.get(k)
    ]
    print(f"--resume: the config of {saved_path}" + ("" if changed else ", unchanged by the command line"))
    for k in changed:
        print(f"--resume: {k}: {flat_before.get(k)!r} -> {flat_after.get(k)!r} (from the command line)")
    return new


def _checkpoint(cfg: Config, resume: Resume) -> Optional[Path]:
    if resume is True:
        return latest_checkpoint(cfg.run.run_dir)
    path = Path(str(resume))
    return path if (path / COMPLETE).is_file() else latest_checkpoint(path)


def _stated(config_path: str) -> list[str]:
    """The keys an explicit --config file states, as dotted key=value overrides."""
    raw = yaml.safe_load(Path(config_path).read_text()) or {}
    return [f"{k}={json.dumps(v)}" for k, v in _flat(raw).items()]


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys -> leaf values (an empty dict is a leaf)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}

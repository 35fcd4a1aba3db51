"""The dry-run profile: a production config shrunk to one workstation, to check it end to end before a
cluster runs it (`cocoedit train --config cluster/configs/flux_kontext_8gpu.yaml --dry-run`).

The profile is a set of dotted overrides computed from the config (`dry_run_overrides`), applied before
the command line's own overrides (so those still win). It changes counts, devices and the model only:
- devices: every GPU ask becomes 0, the policy runs on the CPU in float32 (learner.bf16=false: CPUs have
  no fast bf16 matmul), and a local Ray cluster on 127.0.0.1 (run.ray_address=null) gets as many
  logical CPUs as the roles ask for;
- counts: one rollout worker, one learner rank, one replica per reward service (no autoscaling), one
  epoch of one group of 2 edits, 2 sampling steps and 1 training timestep, a checkpoint at its end;
- validity: a random-weight editor's two edits score alike or almost (the real-dims Qwen-Image-Edit's
  two edits decode to the same image), so the spread filter is off (learner.valid_min_std=0) and the
  learner's update with the regularizer really runs;
- data and models: the synthetic edit task at the config's image size (it has exact targets), the
  MLLM judge replaced by the exact synthetic judge at the judge's weight, and the policy replaced by
  the real-dims editor of the config's family at depth 1 (published widths, random weights;
  the family's Architecture via actors/policies/builders.py), built once into $COCOEDIT_CACHE (~3.1 GB, about a minute).
Everything else (LoRA, objective, regularizer, ZeRO stage, micro-batch, resolution, text length)
is the config's. One epoch took 5-15 minutes on a busy 2-core machine; `cocoedit config show --config X
--dry-run` prints the resulting config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from cocoedit.cluster.config import Config, RewardsConfig

# A run on one machine serves its reward services on loopback, plainly: the cluster's certificates and
# token files (rewards.<service>.server, rewards.client) are not on this machine.
LOOPBACK_SERVER: dict[str, Any] = {
    "host": "127.0.0.1",
    "tls_cert_file": None,
    "tls_key_file": None,
    "token_file": None,
    "insecure": False,
}
LOOPBACK_CLIENT: dict[str, Any] = {"tls_ca_file": None, "token_file": None}
DRY_RUN_DEPTH = 1  # transformer blocks of the real-dims editor (FLUX: 1 dual-stream + 1 single-stream)
REAL_EDITOR_VERSION = 1  # bump when a family's real_spec / assemble changes what a real-dims build holds


def dry_run_overrides(cfg: Config, model_path: str) -> list[str]:
    """The dry-run profile of `cfg` as `key=value` overrides, with the policy at `model_path`."""
    weights = dict(cfg.rewards.weights)
    if "mllm" in weights and "mllm" not in cfg.rewards.addresses:
        weights["synthetic"] = weights.get("synthetic", 0.0) + weights.pop("mllm")
    settings: dict[str, Any] = {
        "run.name": f"{cfg.run.name}_dry_run",
        "run.run_dir": "runs/${name}",
        "run.epochs": 1,
        "run.checkpoint_every": 1,
        "run.image_every": 1,
        "run.eval_every": 0,
        "run.ray_address": None,
        "run.tiny": False,
        "data.manifest": None,
        "data.format": "manifest",
        "data.mask_polarity": None,
        "data.synth_num": 1,
        "data.n_items": 1,
        "data.group_size": 2,
        "policy.model_path": model_path,
        "policy.device": "cpu",
        "policy.dtype": "float32",
        "rollout.num_workers": 1,
        "rollout.gpus_per_worker": 0,
        "rollout.num_steps": 2,  # one step is undefined under Qwen-Image's terminal stretch
        "learner.world_size": 1,
        "learner.gpus_per_rank": 0,
        "learner.bf16": False,
        "learner.train_timesteps": 1,
        "learner.valid_min_std": 0.0,
        "rewards.weights": weights,
        "rewards.pixel.device": "cpu",
    }
    if "synthetic" in weights:
        settings["rewards.synthetic.enabled"] = True
    cpus = cfg.rollout.cpus_per_worker + cfg.learner.cpus_per_rank
    for name in weights:
        if name in cfg.rewards.addresses:
            continue
        settings.update({f"rewards.{name}.server.{k}": v for k, v in LOOPBACK_SERVER.items()})
        settings.update(
            {
                f"rewards.{name}.scaling.replicas": 1,
                f"rewards.{name}.scaling.min_replicas": 1,
                f"rewards.{name}.scaling.max_replicas": 1,
                f"rewards.{name}.scaling.target_score_s": None,
            }
        )
        cpus += cfg.rewards.service(name).scaling.cpus_per_replica
    settings.update({f"rewards.client.{k}": v for k, v in LOOPBACK_CLIENT.items()})
    # Logical CPUs: Ray counts them, the OS shares the real cores.
    settings["run.ray_num_cpus"] = max(math.ceil(cpus), os.cpu_count() or 1)
    return [f"{key}={json.dumps(value)}" for key, value in settings.items()]


def on_loopback(rewards: RewardsConfig) -> RewardsConfig:
    """`rewards` with every service on 127.0.0.1 without TLS or token (LOOPBACK_SERVER, LOOPBACK_CLIENT)."""
    sections = {
        name: dataclasses.replace(s, server=dataclasses.replace(s.server, **LOOPBACK_SERVER))
        for name, s in rewards.sections.items()
    }
    client = dataclasses.replace(rewards.client, **LOOPBACK_CLIENT)
    return dataclasses.replace(rewards, sections=sections, client=client)


def dry_run_config(path: str | None, overrides: list[str], build: bool = True) -> Config:
    """The config of `cocoedit <command> --config path --dry-run overrides`: the file and overrides,
    then the profile (building the real-dims editor on first use unless build=False, which only names
    where it goes), then the overrides again (they win)."""
    from cocoedit.cluster.config import load_config

    # The overrides may only make sense with the profile (rollout.num_steps=2 under the file's
    # train_timesteps): the rules between fields are checked once, on the final config.
    cfg = load_config(path, overrides, rules=False)
    model_path = str(real_editor(cfg.policy.family, build=build))
    return load_config(path, [*dry_run_overrides(cfg, model_path), *overrides])


def real_editor(family: str, depth: int = DRY_RUN_DEPTH, build: bool = True) -> Path:
    """The real-dims editor of `family` with `depth` blocks (seed 0), built on first use into
    $COCOEDIT_CACHE and reused afterwards (build=False: only its path). Saved in float32, the dtype the
    dry run computes in: loading then maps the files instead of converting them (a bfloat16 copy would
    double the peak while loading)."""
    from cocoedit.cluster.runtime.launch import _cached, cache_path

    settings = {"version": REAL_EDITOR_VERSION, "family": family, "depth": depth}
    if not build:
        return cache_path(f"real-{family}-d{depth}", settings)
    return _cached(f"real-{family}-d{depth}", settings, lambda path: _build_real(family, depth, path))


def _build_real(family: str, depth: int, path: Path) -> None:
    """Build into a temporary sibling, then rename: an interrupted build leaves nothing at `path`."""
    from cocoedit.actors.policies.builders import build_model

    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        build_model(family, work, seed=0, dims="real", depth=depth, dtype="float32")
        work.rename(path)
    finally:
        shutil.rmtree(work, ignore_errors=True)

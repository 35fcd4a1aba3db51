"""`cocoedit train --config <production config> --dry-run`: the profile changes counts, devices and the
model only; with it each production config trains one epoch on this machine (slow tests, below).

Run the slow ones (5-15 min each on 2 cores, one at a time; ~3 GB of model built once per family into
$COCOEDIT_CACHE):

    HF_HUB_OFFLINE=1 .venv/bin/python -m pytest -s -m slow tests/cluster/test_dry_run.py
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cocoedit.cluster.cli import main
from cocoedit.cluster.config import CONFIG_DIR, load_config, to_dict
from cocoedit.cluster.train.dryrun import dry_run_overrides

PRODUCTION = ("flux_kontext_8gpu.yaml", "qwen_image_edit_16gpu.yaml")
# What the profile may change: counts, devices, where models and data come from. Nothing of the algorithm.
PROFILE_KEYS = {
    "run.name",
    "run.run_dir",
    "run.epochs",
    "run.checkpoint_every",
    "run.image_every",
    "run.eval_every",
    "run.ray_address",
    "run.ray_num_cpus",
    "run.tiny",
    "data.manifest",
    "data.format",
    "data.mask_polarity",
    "data.synth_num",
    "data.n_items",
    "data.group_size",
    "policy.model_path",
    "policy.device",
    "policy.dtype",
    "rollout.num_workers",
    "rollout.gpus_per_worker",
    "rollout.num_steps",
    "learner.world_size",
    "learner.gpus_per_rank",
    "learner.bf16",
    "learner.train_timesteps",
    "learner.valid_min_std",
    "rewards.weights",
    "rewards.pixel.device",
    "rewards.synthetic.enabled",
    # one machine: services on loopback without the cluster's TLS and token files
    *(f"rewards.pixel.server.{k}" for k in ("host", "tls_cert_file", "tls_key_file", "token_file")),
    "rewards.client.tls_ca_file",
    "rewards.client.token_file",
    *(
        f"rewards.{s}.scaling.{k}"
        for s in ("pixel", "synthetic")
        for k in ("replicas", "min_replicas", "max_replicas", "target_score_s")
    ),
}


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and not (prefix.endswith("weights.") or prefix.endswith("addresses.")):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): tree}


@pytest.mark.parametrize("name", PRODUCTION)
def test_profile_changes_only_counts_devices_and_models(name: str) -> None:
    cfg = load_config(CONFIG_DIR / name)
    dry = load_config(CONFIG_DIR / name, dry_run_overrides(cfg, "/models/real-dims"))
    before, after = _flat(to_dict(cfg)), _flat(to_dict(dry))
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= PROFILE_KEYS, sorted(changed - PROFILE_KEYS)
    assert (dry.rollout.gpus_per_worker, dry.learner.gpus_per_rank) == (0, 0)
    assert (dry.rollout.num_workers, dry.learner.world_size) == (1, 1)
    assert dry.policy.model_path == "/models/real-dims" and dry.policy.device == "cpu"
    assert dry.run.ray_address is None and dry.run.epochs == 1 and dry.run.checkpoint_every == 1
    judge, pixel = cfg.rewards.weights["mllm"], cfg.rewards.weights["pixel"]
    assert dry.rewards.weights == {"pixel": pixel, "synthetic": judge}
    asks = (
        dry.rollout.cpus_per_worker + dry.learner.cpus_per_rank + dry.rewards.pixel.scaling.cpus_per_replica
    )
    assert dry.run.ray_num_cpus >= math.ceil(asks + dry.rewards.synthetic.scaling.cpus_per_replica)
    # the algorithm and the sizes that set memory are the config's
    for key in (
        "data.image_size",
        "policy.max_sequence_length",
        "learner.micro_batch_size",
        "learner.lam_pos",
    ):
        assert after[key] == before[key]


def test_command_line_overrides_win_over_the_profile(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from cocoedit.cluster.train import dryrun

    monkeypatch.setattr(
        dryrun, "real_editor", lambda family, depth=1, build=True: tmp_path / f"real-{family}"
    )
    path = str(CONFIG_DIR / "qwen_image_edit_16gpu.yaml")
    assert (
        main(["config", "show", "--config", path, "--dry-run", "run.run_dir=/tmp/x", "rollout.num_steps=2"])
        == 0
    )
    shown = capsys.readouterr().out
    assert "run_dir: /tmp/x" in shown and "num_steps: 2" in shown
    assert f"model_path: {tmp_path}/real-qwen_image_edit" in shown and "device: cpu" in shown


class _TreeRss:
    """Samples the summed RSS of a process and all its descendants (Ray's workers included)."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(2.0):
            total = 0
            try:
                for p in [self.root, *self.root.children(recursive=True)]:
                    total += p.memory_info().rss
            except psutil.Error:
                continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


@pytest.mark.slow
@pytest.mark.parametrize("name", PRODUCTION)
def test_production_config_dry_run_trains_one_epoch(name: str, tmp_path: Path) -> None:
    import resource

    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "cocoedit.cluster.cli",
        "train",
        "--config",
        str(CONFIG_DIR / name),
        "--dry-run",
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*cmd, f"run.run_dir={run_dir}"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    tree = _TreeRss(proc.pid)
    out, _ = proc.communicate(timeout=3 * 3600)
    tree_peak = tree.stop()
    wall = time.perf_counter() - start
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(
        f"\n{name} --dry-run: {wall / 60:.1f} min, peak RSS of all its processes {tree_peak / 2**30:.2f} GiB, "
        f"largest single process {largest / 2**30:.2f} GiB"
    )
    assert proc.returncode == 0, out[-5000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    losses = {k: v for k, v in rows[0].items() if k.startswith(("loss/", "reward/"))}
    assert losses and all(v is not None and math.isfinite(v) for v in losses.values()), losses
    # the update took a step on both edits (a skipped update would train on nothing)
    assert rows[0]["samples/trained_total"] == 2.0 and rows[0]["learner/skipped_updates_total"] == 0.0
    (checkpoint,) = (run_dir / "checkpoints").glob("epoch_*")
    assert (checkpoint / "COMPLETE").exists() and (checkpoint / "lora_default.safetensors").exists()
    # the trained LoRA in the family's diffusers format: the stock pipeline loads it onto every target
    ran = load_config(run_dir / "config.yaml").policy
    _check_diffusers_lora(ran.family, str(ran.model_path), run_dir / "lora")


def _check_diffusers_lora(family: str, model_path: str, lora_dir: Path) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors import safe_open

    from cocoedit.actors.policies import family as family_of

    with safe_open(str(lora_dir / "pytorch_lora_weights.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys), keys[:4]
    policy_cls = family_of(family).policy_class()
    skip = dict.fromkeys(policy_cls.ENCODING)
    pipe = policy_cls.pipeline_class().from_pretrained(model_path, **skip)  # weights mapped, not copied
    pipe.load_lora_weights(str(lora_dir))
    layers = [m for m in pipe.transformer.modules() if isinstance(m, BaseTunerLayer)]
    assert len(layers) == len(keys) // 2  # lora_A and lora_B per targeted Linear

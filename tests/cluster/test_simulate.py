"""`cocoedit simulate`: the real driver, actor groups, gRPC services and learner on a local 2-node Ray
cluster, with the `sim` editor and `sim_judge` holding each call for its planned time.

The run test starts its own multi-node cluster, so it runs `cocoedit simulate` in a process of its own
(the suite's shared Ray would be joined instead). 35-90 s on 2 shared cores: ~17 s of it plan the
simulated FLUX model on the meta device, ~15 s start the two raylets.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import load_policy
from cocoedit.actors.policies.sim import SimSpec
from cocoedit.cluster.config import ConfigError, load_config
from cocoedit.cluster.simulate.model import call_seconds

SPEC = SimSpec(
    simulates="flux_kontext",
    vae_scale=8,
    latent_channels=16,
    text_tokens=32,
    text_dim=64,
    forward_s=0.2,
    backward_s=0.4,
    decode_s=0.1,
    encode_s=0.3,
    time_scale=10.0,
)


def test_sim_editor_shapes_and_holds(tmp_path: Path) -> None:
    """Real shapes and dtypes at the image size; each call holds its seconds / time_scale."""
    policy = load_policy(PolicyConfig(family="sim", model_path=str(SPEC.write(tmp_path)), dtype="bfloat16"))
    assert policy.latent_shape(64, 64) == (16, 64)  # (64 / 8 / 2)^2 tokens of 4 x 16 channels
    source = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    t0 = time.perf_counter()
    cond = policy.encode_condition(["a", "b"], source)
    assert time.perf_counter() - t0 >= 2 * 0.3 / 10
    assert cond.tensors["prompt_embeds"].shape == (2, 32, 64)
    assert cond.tensors["prompt_embeds"].dtype == torch.bfloat16
    assert policy.source_latents(cond).shape == (2, 16, 64)
    x = torch.randn(2, 16, 64)
    with torch.no_grad(), policy.adapter("old"):
        t0 = time.perf_counter()
        v = policy.velocity(x, torch.ones(2), cond)
        assert time.perf_counter() - t0 >= 2 * 0.2 / 10
    assert v.shape == x.shape
    t0 = time.perf_counter()
    images = policy.decode(x, 64, 64)
    assert time.perf_counter() - t0 >= 2 * 0.1 / 10
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    with policy.adapter("default"):
        loss = policy.velocity(x, torch.ones(2), cond).square().mean()
    t0 = time.perf_counter()
    loss.backward()
    assert time.perf_counter() - t0 >= 2 * 0.4 / 10  # the backward holds too
    assert all(p.grad is not None for p in policy.trainable_parameters())
    assert policy.held["forward"] == pytest.approx(2 * (0.2 + 0.2) / 10)
    assert policy.held["backward"] == pytest.approx(2 * 0.4 / 10)


def _simulate(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`cocoedit simulate` of a small FLUX-Kontext config (128 px, 2 workers, 1 rank, 1 judge), 2 epochs
    at time scale 50, in a process of its own; `args` are more options and overrides."""
    argv = [
        *("simulate", "--config", "cluster/configs/flux_kontext_8gpu.yaml", "--epochs", "2"),
        *("--time-scale", "50", "--no-lora-count", "--work", str(tmp_path / "work")),
        *("data.image_size=128", "data.n_items=2", "data.group_size=4"),
        *(
            "rollout.num_workers=2",
            "rollout.batch_size=4",
            "learner.world_size=1",
            "learner.micro_batch_size=4",
        ),
        *("rewards.pixel.scaling.replicas=1", "rewards.pixel.scaling.cpus_per_replica=1"),
        *("rewards.mllm.scaling.gpus_per_replica=1", "rewards.mllm.tensor_parallel_size=1"),
        *args,
    ]
    code = "import sys; from cocoedit.cluster.cli import main; sys.exit(main(sys.argv[1:]))"
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=400, cwd=root
    )


def test_a_simulated_run_that_cannot_start_ends_with_one_line(tmp_path: Path) -> None:
    """What ends `cocoedit train` with one line and exit 1 ends `cocoedit simulate` the same way (it
    printed a traceback for a reward service that did not start): here every replica is given 1 ms."""
    proc = _simulate(tmp_path, "--sim-nodes", "1", "rewards.client.ready_timeout_s=0.001")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RewardServiceError: reward service "), proc.stderr[-3000:]
    assert "did not start within rewards.client.ready_timeout_s=0.001 s" in last
    assert "Traceback" not in proc.stderr


def test_simulate_refuses_a_cpu_config() -> None:
    cfg = load_config(None, [])  # tiny_cpu: actors ask no GPU, so there is no simulated GPU time
    with pytest.raises(ConfigError, match="gpus_per_worker and learner.gpus_per_rank must be > 0"):
        call_seconds(cfg, "h100", 0.4)


def test_simulated_run_on_two_nodes(tmp_path: Path) -> None:
    """Two simulated epochs of a small FLUX-Kontext config (128 px, 2 workers, 1 rank, 1 judge) on 2
    raylets x 2 simulated GPUs: epochs complete, the real pixel service's rewards are finite, the
    simulated judge's scores arrive over gRPC, actors sit on both nodes, the learner steps, and every
    output says SIMULATED with the time scale."""
    out = tmp_path / "summary.json"
    proc = _simulate(tmp_path, "--sim-nodes", "2", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SIMULATED epoch 1 (time scale 50)" in proc.stdout
    s = json.loads(out.read_text())
    assert s["simulated"] is True and s["time_scale"] == 50 and "SIMULATED" in s["what"]
    assert s["nodes"] == 2 and len(s["nodes_used"]) == 2  # actors were placed on both raylets
    assert s["simulated_gpus"] == 4
    assert [e["epoch"] for e in s["epochs"]] == [0, 1]
    calls, roles = s["seconds_per_call"], s["plan"]["roles"]
    assert calls["judge"] > 0 and calls["forward"] > 0
    # the holds add up to the plan: 8 edits x 10 steps + 8 decodes + 2 encodes over 2 workers, 8 judged edits
    rollout = (8 * 10 * calls["forward"] + 8 * calls["decode"] + 2 * calls["encode"]) / 2
    assert rollout == pytest.approx(roles["rollout"], rel=1e-6)
    assert 8 * calls["judge"] == pytest.approx(roles["judge"], rel=1e-6)
    for e in s["epochs"]:
        assert e["simulated"] is True
        assert math.isfinite(e["pixel_score"]) and 0 <= e["pixel_score"] <= 1  # the real pixel service
        assert 0 <= e["sim_judge_score"] <= 1  # the simulated judge, scored over gRPC
        assert e["dropped_edits"] == 0
        assert e["bytes"]["grpc"] > 8 * 2 * 128 * 128  # 8 edits with PNG images went over the wire, twice
        assert e["bytes"]["driver_in"] > 0 and e["epoch_s"] > 0 and math.isfinite(e["efficiency"])
        # the driver never holds pixels: ids and outcomes in, references out (before the workers scored
        # their groups, every edit's 128 px edited image, 48 kB, came in)
        assert e["bytes_per_edit"]["driver_in"] < 1024 and e["bytes_per_edit"]["driver_out"] < 1024
        assert e["bytes"]["grpc"] < 1.3 * e["bytes"]["grpc_needed"]  # each image once per service
        assert all(0 <= f <= 1 for f in e["idle"].values())
    assert s["epochs"][-1]["learner_step"] >= 1  # the learner took optimizer steps on simulated batches
    written = json.loads((Path(s["run_dir"]) / "simulation.json").read_text())
    assert written["simulated"] is True
    metrics = (Path(s["run_dir"]) / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and all(json.loads(m)["simulated/time_scale"] == 50 for m in metrics)


@pytest.mark.slow
def test_simulated_run_checkpoints_and_resumes(tmp_path: Path) -> None:
    """A simulated run with run.checkpoint_every=1 writes a checkpoint each epoch (the sim editor's LoRA
    through the learner's own save), and `--resume` with more epochs continues from the latest one: every
    epoch in metrics.jsonl once, the learner's step carried on. Two runs of `cocoedit simulate` on one
    raylet: ~2-4 min on a loaded 2-core machine."""
    overrides = (
        "rollout.num_workers=1",
        "learner.valid_min_std=0",  # every update takes a step: the step count tells the resume
        "run.checkpoint_every=1",
    )

    def simulate(*more: str) -> dict:
        out = tmp_path / "summary.json"
        proc = _simulate(tmp_path, "--sim-nodes", "1", "--json", str(out), *more, *overrides)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(out.read_text())

    first = simulate("--epochs", "2")
    run_dir = Path(first["run_dir"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch_00000001", "epoch_00000002"]
    assert (run_dir / "lora" / "pytorch_lora_weights.safetensors").is_file()
    step = first["epochs"][-1]["learner_step"]
    resumed = simulate("--epochs", "3", "--resume")
    assert [e["epoch"] for e in resumed["epochs"]] == [2]
    assert resumed["epochs"][0]["learner_step"] > step  # on from the checkpoint's optimizer step
    rows = [json.loads(m) for m in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert (run_dir / "checkpoints" / "epoch_00000003" / "COMPLETE").is_file()

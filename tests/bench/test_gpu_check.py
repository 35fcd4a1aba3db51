"""bench/gpu_check.py runs on CPU: --help, and the smoke run of the real-dims transformer at depth 1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


def test_help_works_without_a_gpu() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, env=ENV)
    assert out.returncode == 0 and "--depth" in out.stdout and "MFU" in out.stdout


@pytest.mark.slow  # ~1 min on 2 cores: builds and runs the real-dims transformer
def test_smoke_run_on_cpu_times_both_roles_against_the_plan() -> None:
    cmd = [sys.executable, str(SCRIPT), "--depth", "1", "--device", "cpu", "--size", "64"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "FLUX.1-Kontext transformer 0.55 B params (float32, random)" in text
    assert "rollout: group of 2 at 64x64 px, 1 dpm2 steps" in text
    assert "learner: micro-batch 1 at 64x64 px, 1 timestep, gradient checkpointing, ZeRO-2" in text
    estimates = [float(x) for x in re.findall(r"plan estimate ([0-9.]+) GiB", text)]
    # both roles hold the 0.55 B float32 weights (2.03 GiB) plus LoRA and activations
    assert len(estimates) == 2 and all(2.03 < e < 4.0 for e in estimates), estimates
    assert len(re.findall(r"[0-9.]+ s/step", text)) == 2

"""`cocoedit serve pixel|mllm|synthetic`: one reward service as a standalone gRPC server.

    cocoedit serve pixel --port 50051
    cocoedit serve mllm --model /models/Qwen2.5-VL-32B-Instruct --config cluster/configs/qwen_image_edit_16gpu.yaml
    cocoedit serve pixel rewards.pixel.compat=release

Binds 127.0.0.1 unless --host says otherwise; SIGTERM/SIGINT shut it down gracefully.
"""

from __future__ import annotations

import dataclasses

from cocoedit.rewards.base import Scorer
from cocoedit.rewards.config import RewardsConfig, ServerConfig


def _pixel(cfg: RewardsConfig) -> tuple[Scorer, ServerConfig]:
    from cocoedit.rewards.pixel import PixelScorer

    return PixelScorer(cfg.pixel), cfg.pixel.server


def _mllm(cfg: RewardsConfig) -> tuple[Scorer, ServerConfig]:
    from cocoedit.rewards.mllm import MLLMJudge

    return MLLMJudge(cfg.mllm), cfg.mllm.server


def _synthetic(cfg: RewardsConfig) -> tuple[Scorer, ServerConfig]:
    from cocoedit.rewards.synthetic import SyntheticJudge

    return SyntheticJudge(cfg.synthetic), cfg.synthetic.server


# service name -> builder of (scorer, server settings) from the rewards config; also used by the Ray
# replicas of cluster/services.py, so a service runs the same way standalone and on a cluster.
SERVICES = {"pixel": _pixel, "mllm": _mllm, "synthetic": _synthetic}


def serve(service: str, cfg: RewardsConfig, host: str, port: int) -> int:
    """Serve `service` on host:port until SIGTERM/SIGINT (graceful shutdown); returns the exit code."""
    from cocoedit.rewards.server import run_standalone

    scorer, server_cfg = SERVICES[service](cfg)
    return run_standalone(scorer, dataclasses.replace(server_cfg, host=host, port=port))

"""`cocoedit serve pixel|mllm|synthetic`: one reward service as a standalone gRPC server.

    cocoedit serve pixel --port 50051
    cocoedit serve mllm --model /models/Qwen2.5-VL-32B-Instruct --config cluster/configs/qwen_image_edit_16gpu.yaml
    cocoedit serve pixel rewards.pixel.compat=release

Binds 127.0.0.1 unless --host says otherwise; SIGTERM/SIGINT shut it down gracefully.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rewards.base import Scorer
from rewards.config import RewardsConfig, ServerConfig


def _pixel(cfg: RewardsConfig) -> tuple[Scorer, ServerConfig]:
    from rewards.pixel import PixelScorer

    return PixelScorer(cfg.pixel), cfg.pixel.server


def _mllm(cfg: RewardsConfig) -> tuple[Scorer, ServerConfig]:
    from rewards.mllm import MLLMJudge

    return MLLMJudge(cfg.mllm), cfg.mllm.server


def _synthetic(cfg: RewardsConfig) -> tuple[Scorer, ServerConfig]:
    from rewards.synthetic import SyntheticJudge

    return SyntheticJudge(cfg.synthetic), cfg.synthetic.server


# service name -> builder of (scorer, server settings) from the rewards config; also used by the Ray
# replicas of cluster/services.py, so a service runs the same way standalone and on a cluster.
SERVICES = {"pixel": _pixel, "mllm": _mllm, "synthetic": _synthetic}


def cli_serve(args: argparse.Namespace) -> int:
    """Entry point of `cocoedit serve` (see cluster/cli.py for the arguments)."""
    from cluster.config import ConfigError, load_config
    from rewards.server import run_standalone

    overrides = list(args.overrides)
    if args.model is not None:
        if args.service != "mllm":
            print(f"--model applies to the mllm service only, not {args.service}", file=sys.stderr)
            return 2
        overrides.append(f"rewards.mllm.model_path={args.model}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 1
    scorer, server_cfg = SERVICES[args.service](cfg.rewards)
    server_cfg = dataclasses.replace(server_cfg, host=args.host, port=args.port)
    return run_standalone(scorer, server_cfg)

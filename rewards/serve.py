"""The reward services: one registry, `SERVICES`, and `cocoedit serve`, which runs one of them as a
standalone gRPC server.

    cocoedit serve pixel --port 50051
    cocoedit serve mllm --model /models/Qwen2.5-VL-32B-Instruct --config cluster/configs/qwen_image_edit_16gpu.yaml
    cocoedit serve pixel rewards.pixel.compat=release

A service is its config section (a `ServiceConfig` subclass: `rewards.<name>` in the experiment YAML)
and its Scorer, built from that section. Adding one is a file holding both plus one line in SERVICES:
the config loader then knows `rewards.<name>`, `cocoedit serve <name>` serves it, and a run that weights
it (`rewards.weights.<name>`) places, starts, scales and scores it like the others (README, Extending).

Binds 127.0.0.1 unless --host says otherwise; SIGTERM/SIGINT shut it down gracefully.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cocoedit.rewards.config import JudgeConfig, PixelConfig, ServiceConfig, SyntheticJudgeConfig
from cocoedit.rewards.sim_judge import SimJudgeConfig

if TYPE_CHECKING:
    from cocoedit.rewards.base import Scorer


@dataclass(frozen=True)
class Service:
    """One reward service: the class of its config section and the builder of its Scorer."""

    config: type[ServiceConfig]
    # section -> Scorer. A builder that imports its scorer's module inside keeps loading a config light.
    scorer: Callable[[Any], Scorer]


def _pixel(cfg: PixelConfig) -> Scorer:
    from cocoedit.rewards.pixel import PixelScorer

    return PixelScorer(cfg)


def _mllm(cfg: JudgeConfig) -> Scorer:
    from cocoedit.rewards.mllm import MLLMJudge

    return MLLMJudge(cfg)


def _synthetic(cfg: SyntheticJudgeConfig) -> Scorer:
    from cocoedit.rewards.synthetic import SyntheticJudge

    return SyntheticJudge(cfg)


def _sim_judge(cfg: SimJudgeConfig) -> Scorer:
    from cocoedit.rewards.sim_judge import SimJudge

    return SimJudge(cfg)


# service name (its section rewards.<name> and its score's name in rewards.weights) -> Service. The Ray
# replicas of cluster/runtime/services.py build scorers from here too: standalone and on a cluster they run alike.
SERVICES: dict[str, Service] = {
    "pixel": Service(PixelConfig, _pixel),
    "mllm": Service(JudgeConfig, _mllm),
    "synthetic": Service(SyntheticJudgeConfig, _synthetic),
    "sim_judge": Service(SimJudgeConfig, _sim_judge),  # simulated (cocoedit simulate)
}


def service(name: str) -> Service:
    """The registered service `name`; an unknown name is an error listing the known ones."""
    if name not in SERVICES:
        raise ValueError(f"unknown reward service {name!r}; known: {sorted(SERVICES)}")
    return SERVICES[name]


def serve(name: str, section: ServiceConfig, host: str, port: int) -> int:
    """Serve service `name` with config `section` on host:port until SIGTERM/SIGINT (graceful shutdown);
    returns the exit code."""
    from cocoedit.rewards.hosting import run_standalone

    scorer = service(name).scorer(section)
    return run_standalone(scorer, dataclasses.replace(section.server, host=host, port=port))

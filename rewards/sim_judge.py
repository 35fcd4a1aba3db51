"""`sim_judge`: a SIMULATED MLLM judge for `cocoedit simulate` (cluster/simulate/). It is served like
every reward service (the real gRPC server, client, health checks and Ray replicas decode and check
the same PNG edits), but instead of a vLLM model it holds each request for the seconds the time plan
predicts for the judge's prefill of those edits on its GPUs (`seconds_per_edit`, divided by
`time_scale`), one request at a time per replica (one engine per replica: its GPU time is not shared),
and scores an edit by a fixed function of its pixels (a hash of them, spread over [0, 1) so that
groups have the spread the learner needs to take steps), a number with no meaning.

Its score name is `sim_judge`, so a simulated run's metrics say `sim_judge/...`, never `mllm/...`;
each outcome carries `simulated_held_s`, the seconds its request was held (per edit).
"""

from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass
from typing import Annotated

from cocoedit.ranges import Range
from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import ServiceConfig


@dataclass(frozen=True)
class SimJudgeConfig(ServiceConfig):
    """rewards.sim_judge: written by `cocoedit simulate` from the judge's time plan."""

    enabled: bool = False  # only a simulated run starts it
    seconds_per_edit: Annotated[float, Range(ge=0)] = 0.0  # simulated GPU seconds of one edit on one replica
    time_scale: Annotated[float, Range(gt=0)] = 1.0  # holds are seconds_per_edit / time_scale


class SimJudge(Scorer):
    service = "sim_judge"
    score_name = "sim_judge"

    def __init__(self, cfg: SimJudgeConfig) -> None:
        self.cfg = cfg
        self._engine = asyncio.Lock()  # created in the server's loop's thread on first use
        self.held_s = 0.0

    def settings(self) -> dict[str, str]:
        return {
            "simulated": "true",
            "seconds_per_edit": f"{self.cfg.seconds_per_edit:g}",
            "time_scale": f"{self.cfg.time_scale:g}",
        }

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        hold = len(edits) * self.cfg.seconds_per_edit / self.cfg.time_scale
        async with self._engine:
            await asyncio.sleep(hold)
            self.held_s += hold
        per_edit = hold / max(len(edits), 1)
        return [
            EditOutcome(
                e.edit_id,
                score=zlib.crc32(e.edited_image.tobytes()) / 2**32,
                components={"simulated_held_s": per_edit},
            )
            for e in edits
        ]

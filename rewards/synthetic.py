"""Exact instruction-following judge for the synthetic edit task (the target image is known).

Inside the edit region E (edit_mask = 1), how much of the source->target error did the edit remove:

    rho = MSE_E(edited, target) / MSE_E(source, target)
    S   = clip(1 - rho, 0, 1)

so the exact target scores 1, the untouched source scores 0, and an edit that wanders further from the
target than the source was also scores 0. It stands in for the MLLM judge in the tiny CPU mode (same
proto, same weighting, score name "synthetic").
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
import torch

from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import SyntheticJudgeConfig


def instruction_scores(
    source: torch.Tensor, edited: torch.Tensor, target: torch.Tensor, edit_mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """source/edited/target: [N, 3, H, W] float in [0, 1]; edit_mask: [N, 1, H, W] in {0, 1}.

    Returns per-edit [N] tensors: `score`, `ratio` (rho), `edit_psnr` (PSNR of edited vs target inside E),
    `source_gap` (MSE_E(source, target)). Edits with an empty E or source == target inside E get NaN.
    """
    area = edit_mask.sum(dim=(1, 2, 3)) * source.shape[1]
    err = ((edited - target) ** 2 * edit_mask).sum(dim=(1, 2, 3)) / area
    gap = ((source - target) ** 2 * edit_mask).sum(dim=(1, 2, 3)) / area
    ratio = err / gap
    nan = torch.full_like(ratio, math.nan)
    ratio = torch.where((area > 0) & (gap > 1e-12), ratio, nan)
    return {
        "score": (1 - ratio).clamp(0, 1).where(~ratio.isnan(), nan),
        "ratio": ratio,
        "edit_psnr": 10 * torch.log10(1 / err.clamp_min(1e-8)),
        "source_gap": gap,
    }


class SyntheticJudge(Scorer):
    service = "synthetic"
    score_name = "synthetic"
    needs_mask = True
    needs_target = True

    def __init__(self, cfg: SyntheticJudgeConfig | None = None) -> None:
        self.cfg = cfg or SyntheticJudgeConfig()

    def settings(self) -> dict[str, str]:
        return {
            "formula": "clip(1 - MSE_E(edited,target) / MSE_E(source,target), 0, 1)",
            "region": "edit_mask",
        }

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        return await asyncio.to_thread(self._score_sync, edits)

    def _score_sync(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        outcomes = []
        # One edit at a time: edits of a batch may differ in size. A group's images are read-only
        # (shared by its edits): torch wraps only writable arrays, so those are copied ("W").
        for e in edits:
            src, edi, tgt = (
                torch.from_numpy(np.require(a, requirements=("C", "W"))).permute(2, 0, 1)[None].float()
                / 255.0
                for a in (e.source_image, e.edited_image, e.target_image)
            )
            mask = torch.from_numpy(np.require(e.edit_mask, np.float32, ("C", "W")))[None, None]
            s = {k: float(v[0]) for k, v in instruction_scores(src, edi, tgt, mask).items()}
            if math.isnan(s["score"]):
                why = (
                    "edit_mask is empty"
                    if float(mask.sum()) == 0
                    else "target equals source inside edit_mask"
                )
                outcomes.append(
                    EditOutcome(e.edit_id, error=f"synthetic judge cannot score this edit: {why}")
                )
                continue
            outcomes.append(
                EditOutcome(
                    e.edit_id, score=s["score"], components={k: v for k, v in s.items() if k != "score"}
                )
            )
        return outcomes

"""Config of `cocoedit eval` (ALGORITHM.md section 6), composed into cluster.config.Config as `eval`.

Generation defaults follow each family's stock pipeline: FLUX.1-Kontext 28 Euler steps with distilled
guidance 2.5; Qwen-Image-Edit 40 Euler steps with true CFG 4.0 against the negative prompt " ".
`None` means "the family's default" (FAMILY_DEFAULTS), resolved by `generation_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional

from cocoedit.actors.config import PolicyConfig

# family -> stock pipeline settings used when the config leaves them unset
FAMILY_DEFAULTS: dict[str, dict[str, float]] = {
    "flux_kontext": {"num_steps": 28, "guidance": 2.5, "true_cfg_scale": 1.0},
    "qwen_image_edit": {"num_steps": 40, "guidance": 1.0, "true_cfg_scale": 4.0},
    "qwen_image_edit_plus": {"num_steps": 40, "guidance": 1.0, "true_cfg_scale": 4.0},
}


@dataclass(frozen=True)
class EvalConfig:
    """Benchmark evaluation: how edits are generated, judged and reported."""

    image_size: int = 512  # center-crop to square, then resize (sources, masks and edits)
    mask_polarity: Optional[Literal["edit_white", "keep_white"]] = None  # None = the layout's own
    language: Literal["en", "cn", "all"] = "en"  # GEdit-Bench instruction language
    max_items: Optional[int] = None  # only the first N items (smoke runs); None = all
    sampler: Literal["euler", "dpm2"] = "euler"  # euler = the stock pipeline's scheduler
    num_steps: Optional[int] = None  # None = family default (28 Kontext, 40 Qwen-Image-Edit)
    guidance: Optional[float] = None  # FLUX-Kontext distilled guidance; None = 2.5
    true_cfg_scale: Optional[float] = None  # Qwen-Image-Edit true CFG; None = 4.0
    negative_prompt: str = " "  # Qwen-Image-Edit true CFG's negative prompt
    seed: int = 0  # an item's noise seed is derived from (seed, item id): shards and resumes agree
    batch_size: int = 4  # edits per forward pass (and per chunk a worker returns)
    num_workers: int = 1  # Ray workers when a Ray cluster is there (items sharded over them)
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    judge: Literal["auto", "gedit", "imgedit", "none"] = "auto"  # auto: the bench's own protocol
    judge_max_tokens: int = 256
    judge_temperature: float = 0.0
    judge_attempts: int = 1  # tries per question before the edit counts as a judge failure
    judge_batch: int = 32  # edits per engine round (all their questions in flight together)
    gallery_size: int = 6  # best and worst items shown in the HTML report


def generation_settings(policy_cfg: PolicyConfig, cfg: EvalConfig) -> dict[str, Any]:
    """The resolved stock-pipeline settings of the policy's family (eval.* overrides the defaults)."""
    defaults = FAMILY_DEFAULTS[policy_cfg.family]
    return {
        "family": policy_cfg.family,
        "sampler": cfg.sampler,
        "num_steps": int(cfg.num_steps if cfg.num_steps is not None else defaults["num_steps"]),
        "guidance": float(cfg.guidance if cfg.guidance is not None else defaults["guidance"]),
        "true_cfg_scale": float(
            cfg.true_cfg_scale if cfg.true_cfg_scale is not None else defaults["true_cfg_scale"]
        ),
        "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "dtype": policy_cfg.dtype,
    }

"""Config of `cocoedit eval` (docs/algorithm.md section 6), composed into cluster.config.Config as `eval`.

Generation defaults follow each family's stock pipeline: FLUX.1-Kontext 28 Euler steps with distilled
guidance 2.5; Qwen-Image-Edit 40 Euler steps with true CFG 4.0 against the negative prompt " ".
`None` means "the family's default" (its entry in actors.policies.FAMILIES), resolved by
`generation_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import family
from cocoedit.ranges import Range


@dataclass(frozen=True)
class EvalConfig:
    """Benchmark evaluation: how edits are generated, judged and reported."""

    # Center-crop to square, then resize (sources, masks and edits). None = the editor's own resolution,
    # data.image_size (what it is trained at; the tiny editor's is pretrain.image_size, checked equal)
    image_size: Optional[Annotated[int, Range(ge=8)]] = None
    mask_polarity: Optional[Literal["edit_white", "keep_white"]] = None  # None = the layout's own
    language: Literal["en", "cn", "all"] = "en"  # GEdit-Bench instruction language
    max_items: Optional[Annotated[int, Range(ge=1)]] = None  # only the first N items (smoke runs); None = all
    sampler: Literal["euler", "dpm2"] = "euler"  # euler = the stock pipeline's scheduler
    # None = family default (28 Kontext, 40 Qwen-Image-Edit)
    num_steps: Optional[Annotated[int, Range(ge=1)]] = None
    guidance: Optional[Annotated[float, Range(ge=0)]] = None  # FLUX-Kontext distilled guidance; None = 2.5
    true_cfg_scale: Optional[Annotated[float, Range(ge=1)]] = None  # Qwen-Image-Edit true CFG; None = 4.0
    negative_prompt: str = " "  # Qwen-Image-Edit true CFG's negative prompt
    # An item's noise seed is derived from (seed, item id): shards and resumes agree
    seed: Annotated[int, Range(ge=0)] = 0
    batch_size: Annotated[int, Range(ge=1)] = 4  # edits per forward pass (and per chunk a worker returns)
    # Ray workers when a Ray cluster is there (items sharded over them)
    num_workers: Annotated[int, Range(ge=1)] = 1
    gpus_per_worker: Annotated[float, Range(ge=0)] = 1.0  # GPUs each evaluation worker asks for
    cpus_per_worker: Annotated[float, Range(ge=0)] = 1.0  # CPUs each evaluation worker asks for
    judge: Literal["auto", "gedit", "imgedit", "none"] = "auto"  # auto: the bench's own protocol
    judge_max_tokens: Annotated[int, Range(ge=1)] = 256  # longest answer of the benchmark's judge
    judge_temperature: Annotated[float, Range(ge=0, le=2)] = 0.0  # vLLM accepts [0, 2]
    # Tries per question before the edit counts as a judge failure
    judge_attempts: Annotated[int, Range(ge=1)] = 1
    # Edits per engine round (all their questions in flight together)
    judge_batch: Annotated[int, Range(ge=1)] = 32
    gallery_size: Annotated[int, Range(ge=0)] = 6  # best and worst items shown in the HTML report


def generation_settings(policy_cfg: PolicyConfig, cfg: EvalConfig) -> dict[str, Any]:
    """The resolved stock-pipeline settings of the policy's family (eval.* overrides the defaults)."""
    stock = family(policy_cfg.family)
    return {
        "family": policy_cfg.family,
        "sampler": cfg.sampler,
        "num_steps": int(cfg.num_steps if cfg.num_steps is not None else stock.num_steps),
        "guidance": float(cfg.guidance if cfg.guidance is not None else stock.guidance),
        "true_cfg_scale": float(
            cfg.true_cfg_scale if cfg.true_cfg_scale is not None else stock.true_cfg_scale
        ),
        "true_cfg": stock.true_cfg,
        "negative_prompt": cfg.negative_prompt,
        "seed": cfg.seed,
        "image_size": cfg.image_size,
        "dtype": policy_cfg.dtype,
    }

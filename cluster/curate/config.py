"""Config of `cocoedit data curate`, composed into cluster.config.Config as `curate`.

The MLLM (refinement, grounding, judge scores) is the judge of `rewards.mllm`: same model path, dtype,
image size and resources (`rewards.mllm.scaling.gpus_per_replica` / `cpus_per_replica` per curation actor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, Optional

from cocoedit.cluster.curate.masks import MaskConfig
from cocoedit.ranges import Range
from cocoedit.rewards.annotate import AnnotateConfig

Layout = Literal["auto", "ours", "magicbrush", "instructpix2pix", "hqedit", "gedit"]


@dataclass(frozen=True)
class FilterConfig:
    """Quality filters, applied in this order; each one's pass rate is reported."""

    min_area: Annotated[float, Range(ge=0, le=1)] = 0.005  # mask area fraction: a local edit ...
    max_area: Annotated[float, Range(ge=0, le=1)] = 0.6  # ... not a global one
    # The target's keep region (outside the mask) against the source, after undoing the global shift and
    # gain the mask step found: the target itself leaves the rest of the image alone.
    min_keep_psnr_db: Annotated[float, Range(ge=0)] = 25.0
    min_keep_ssim: Annotated[float, Range(ge=-1, le=1)] = 0.7  # see min_keep_psnr_db
    min_judge_score: Annotated[float, Range(ge=0, le=1)] = 0.6  # S in [0, 1] of the target vs instruction
    # Near duplicates: every perceptual hash (source, target) within this many of 64 bits; -1 = exact only.
    near_duplicate_bits: Annotated[int, Range(ge=-1, le=32)] = 4


@dataclass(frozen=True)
class CurateConfig:
    """Inputs, masks, MLLM annotation, filters, balance and outputs of a curation run."""

    layout: Layout = "auto"  # column names of the input (README, Curating data); auto = detect
    shard_size: Annotated[int, Range(ge=1)] = 256  # items per shard: the unit of work and of resuming
    max_image_pixels: Annotated[int, Range(ge=1)] = 50_000_000  # larger images are refused unread
    mask: MaskConfig = field(default_factory=MaskConfig)
    ground_margin: Annotated[float, Range(ge=0)] = 0.05  # grounded boxes grow by this share per side
    filters: FilterConfig = field(default_factory=FilterConfig)
    mllm: bool = True  # refinement, grounding and judge scores (rewards.mllm's model); false = masks only
    annotate: AnnotateConfig = field(default_factory=AnnotateConfig)
    mllm_actors: Annotated[int, Range(ge=1)] = 1  # Ray Data actors, each holding one vLLM engine
    mllm_batch: Annotated[int, Range(ge=1)] = 32  # items per actor call (in flight together)
    cpus_per_task: Annotated[float, Range(gt=0)] = 1.0  # per mask task (one shard at a time)
    num: Annotated[Optional[int], Range(ge=1)] = None  # N items balanced over edit types; None = all kept
    seed: Annotated[int, Range(ge=0)] = 0  # the balanced sample
    output_format: Literal["manifest", "cocoedit40k"] = (
        "manifest"  # cocoedit40k: metadata.jsonl, white = keep
    )
    gallery_size: Annotated[int, Range(ge=0)] = 8  # kept and rejected items shown in the report

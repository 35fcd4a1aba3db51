"""Configs of the actor side: edit data, the policy, and rollout sampling (ALGORITHM.md sections 1, 2, 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from cocoedit.ranges import Range

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@dataclass(frozen=True)
class DataConfig:
    """Where training items come from and how an epoch is drawn."""

    manifest: Optional[str] = None  # JSONL manifest; None = the synthetic edit task generated in code
    format: Literal["manifest", "cocoedit40k", "benchmask"] = "manifest"
    # None = the format's own convention: edit_white for manifests and benchmask, keep_white for CoCoEdit-40K
    mask_polarity: Optional[Literal["edit_white", "keep_white"]] = None
    image_size: int = 512  # center-crop to square, then resize
    synth_num: int = 256  # items generated for the synthetic task
    synth_seed: int = 0
    n_items: int = 24  # distinct items per epoch
    group_size: int = 12  # edits per item (one group)
    seed: int = 0  # sampler order (bans are decided by the learner's advantages: learner.ban_*)
    # Folder that the data file's paths are relative to and must stay inside; None = the data file's folder.
    root: Optional[str] = None
    # Files checked before training: full = every item; sample = validate_sample items drawn at random
    # (every item when there are fewer); off = none. Workers check each item's files again when they read
    # them, and `cocoedit data check` checks every item.
    validate: Literal["full", "sample", "off"] = "sample"
    validate_sample: Annotated[int, Range(ge=1)] = 1000
    max_file_bytes: Annotated[int, Range(ge=1)] = 64 * 2**20  # per image file
    max_image_pixels: Annotated[int, Range(ge=1)] = 8192 * 8192  # width * height, from the header
    max_manifest_bytes: Annotated[int, Range(ge=1)] = 256 * 2**20


@dataclass(frozen=True)
class PolicyConfig:
    """The diffusion editor and its LoRA."""

    family: Literal["flux_kontext", "qwen_image_edit", "qwen_image_edit_plus"] = "flux_kontext"
    model_path: Optional[str] = (
        None  # local diffusers directory; None in tiny mode = build/cache the tiny editor
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"  # "auto" = cuda if available else cpu
    guidance: float = 2.5  # FLUX-Kontext distilled guidance; unused by Qwen-Image-Edit
    true_cfg_scale: float = 1.0  # Qwen-Image-Edit trains without CFG
    max_sequence_length: int = 512
    lora_rank: int = 32
    lora_alpha: int = 64
    lora_init: Literal["gaussian", "default"] = "gaussian"
    lora_targets: tuple[str, ...] = LORA_TARGETS
    gradient_checkpointing: bool = True


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling of groups by the rollout workers (theta_old)."""

    sampler: Literal["dpm2", "euler", "sde"] = "dpm2"
    num_steps: int = 10
    sde_noise_level: float = 0.7  # Flow-GRPO's a
    num_workers: int = 1
    gpus_per_worker: float = 1.0
    cpus_per_worker: float = 1.0
    batch_size: int = 12  # edits per forward pass inside a worker
    seed: int = 0
    max_staleness: int = 0  # epochs a rollout batch may lag the learner (0 = strictly on-policy)
    max_restarts: int = 3


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pre-training of the tiny editor on the synthetic task (`cocoedit pretrain-tiny`).

    RL post-trains an editor that can already edit; in the tiny CPU mode that editor is this one.
    Stage 1 trains the tiny VAE to reconstruct synthetic images, stage 2 trains the whole tiny
    transformer by flow matching from (instruction, source) to the known target.
    """

    family: Literal["flux_kontext", "qwen_image_edit", "qwen_image_edit_plus"] = "flux_kontext"
    image_size: int = 32
    num_items: int = 1024  # synthetic training items (seed below; disjoint from the RL items' seed)
    seed: int = 1000
    vae_steps: int = 200
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    steps: int = 1000
    lr: float = 1e-3
    batch_size: int = 32
    eval_items: int = 64
    # tiny model size (actors.policies.tiny.build_tiny_model)
    num_layers: int = 2
    num_single_layers: int = 2
    num_attention_heads: int = 4
    attention_head_dim: int = 16
    text_dim: int = 32
    vae_channels: int = 16
    vae_blocks: int = 3  # down-sampling 4: a 32 px image is 4x4 packed tokens (fast on CPU)

"""Configs of the actor side: edit data, the policy, and rollout sampling (docs/algorithm.md sections 1, 2, 5)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal, Optional

from cocoedit.ranges import Range

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@dataclass(frozen=True)
class DataConfig:
    """Where training items come from and how an epoch is drawn."""

    manifest: Optional[str] = None  # JSONL manifest; None = the synthetic edit task generated in code
    # Layout of data.manifest: our manifest, CoCoEdit-40K metadata.jsonl, or GEdit/ImgEdit with masks
    format: Literal["manifest", "cocoedit40k", "benchmask"] = "manifest"
    # None = the format's own convention: edit_white for manifests and benchmask, keep_white for CoCoEdit-40K
    mask_polarity: Optional[Literal["edit_white", "keep_white"]] = None
    image_size: Annotated[int, Range(ge=8)] = 512  # center-crop to square, then resize
    synth_num: Annotated[int, Range(ge=1)] = 256  # items generated for the synthetic task
    # Seed of the synthetic task's items (item i is the same whatever synth_num)
    synth_seed: Annotated[int, Range(ge=0)] = 0
    n_items: Annotated[int, Range(ge=1)] = 24  # distinct items per epoch
    group_size: Annotated[int, Range(ge=2)] = 12  # edits per item (one group); advantages need >= 2
    # Sampler order (bans are decided by the learner's advantages: learner.ban_*)
    seed: Annotated[int, Range(ge=0)] = 0
    # Folder that the data file's paths are relative to and must stay inside; None = the data file's folder.
    root: Optional[str] = None
    # Files checked before training: full = every item; sample = validate_sample items drawn at random
    # (every item when there are fewer); off = none. Workers check each item's files again when they read
    # them, and `cocoedit data check` checks every item.
    validate: Literal["full", "sample", "off"] = "sample"
    validate_sample: Annotated[int, Range(ge=1)] = 1000  # items checked at start with validate=sample
    max_file_bytes: Annotated[int, Range(ge=1)] = 64 * 2**20  # per image file
    max_image_pixels: Annotated[int, Range(ge=1)] = 8192 * 8192  # width * height, from the header
    # Largest data file accepted (lines up to 1 MiB)
    max_manifest_bytes: Annotated[int, Range(ge=1)] = 256 * 2**20


@dataclass(frozen=True)
class PolicyConfig:
    """The diffusion editor and its LoRA."""

    family: str = "flux_kontext"  # a key of actors.policies.FAMILIES, checked at load
    # Local diffusers directory; None in tiny mode = build/cache the tiny editor
    model_path: Optional[str] = None
    # Dtype of the base weights (LoRA masters stay float32)
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    device: str = "auto"  # "auto" = cuda if available else cpu
    # FLUX-Kontext distilled guidance; unused by Qwen-Image-Edit
    guidance: Annotated[float, Range(ge=0)] = 2.5
    true_cfg_scale: Annotated[float, Range(ge=1)] = 1.0  # Qwen-Image-Edit trains without CFG
    # Text tokens of the instruction encoding (T5 / Qwen2.5-VL)
    max_sequence_length: Annotated[int, Range(ge=1)] = 512
    lora_rank: Annotated[int, Range(ge=1)] = 32  # rank of the LoRA adapters
    lora_alpha: Annotated[int, Range(ge=1)] = 64  # LoRA scale alpha (the update is scaled by alpha / rank)
    # Gaussian: A random, B zero (starts at the base model); default: peft's
    lora_init: Literal["gaussian", "default"] = "gaussian"
    # Module names that get LoRA adapters (the family's attention and MLP projections)
    lora_targets: tuple[str, ...] = LORA_TARGETS
    # Recompute transformer activations in the learner's backward (less memory)
    gradient_checkpointing: bool = True


@dataclass(frozen=True)
class RolloutConfig:
    """Sampling of groups by the rollout workers (theta_old)."""

    # Dpm2 (the paper's), euler, or sde (Flow-GRPO's stochastic steps with log-probabilities)
    sampler: Literal["dpm2", "euler", "sde"] = "dpm2"
    num_steps: Annotated[int, Range(ge=1)] = 10  # sampling steps per edit
    sde_noise_level: Annotated[float, Range(gt=0)] = 0.7  # Flow-GRPO's a
    # Rollout workers (Ray actors), each sampling a shard of the epoch
    num_workers: Annotated[int, Range(ge=1)] = 1
    gpus_per_worker: Annotated[float, Range(ge=0)] = 1.0  # GPUs each rollout worker asks for
    # CPUs each rollout worker asks for (and its torch threads)
    cpus_per_worker: Annotated[float, Range(ge=0)] = 1.0
    batch_size: Annotated[int, Range(ge=1)] = 12  # edits per forward pass inside a worker
    # Seed of the rollout noise (each edit's seed derives from it and the epoch)
    seed: Annotated[int, Range(ge=0)] = 0
    # Epochs a rollout batch may lag the learner (0 = strictly on-policy)
    max_staleness: Annotated[int, Range(ge=0)] = 0
    # Times Ray restarts a dead rollout worker before the run fails
    max_restarts: Annotated[int, Range(ge=0)] = 3


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised pre-training of the tiny editor on the synthetic task (`cocoedit pretrain-tiny`).

    RL post-trains an editor that can already edit; in the tiny CPU mode that editor is this one.
    Stage 1 trains the tiny VAE to reconstruct synthetic images, stage 2 trains the whole tiny
    transformer by flow matching from (instruction, source) to the known target.
    """

    family: str = "flux_kontext"  # a key of actors.policies.FAMILIES, checked at load
    image_size: Annotated[int, Range(ge=8)] = 32  # pixels per side of the tiny editor's training images
    # Synthetic training items (seed below; disjoint from the RL items' seed)
    num_items: Annotated[int, Range(ge=1)] = 1024
    seed: Annotated[int, Range(ge=0)] = 1000  # seed of the pre-training items and initial weights
    # Stage 1 (one-cycle schedule, peak vae_lr): 1500 steps reach ~28.5 dB on held-out items at 32 px
    vae_steps: Annotated[int, Range(ge=0)] = 1500
    vae_batch_size: Annotated[int, Range(ge=1)] = 16  # images per VAE step
    vae_lr: Annotated[float, Range(gt=0)] = 1e-2  # peak learning rate of the VAE's one-cycle schedule
    vae_kl_weight: Annotated[float, Range(ge=0)] = 1e-6  # weight of the VAE's KL term
    # Stage 2: this tiny transformer learns ~3x faster per step at lr 1e-2 than at 1e-3 (held-out
    # keep PSNR 17.7 vs 14.6 dB after 1000 steps)
    steps: Annotated[int, Range(ge=1)] = 2000
    lr: Annotated[float, Range(gt=0)] = 1e-2  # learning rate of the flow-matching stage
    batch_size: Annotated[int, Range(ge=1)] = 32  # items per flow-matching step
    # Training times t = sigmoid(N(logit_mean, 1)): a positive mean trains more near pure noise, where
    # the edit must be read off the source image (copying the keep region is what the editor learns last)
    logit_mean: Annotated[float, Range(ge=-4, le=4)] = 1.5
    eval_items: Annotated[int, Range(ge=1)] = 64  # held-out synthetic items the build reports its numbers on
    # tiny model size (actors.policies.tiny.build_tiny_model)
    num_layers: Annotated[int, Range(ge=1)] = 2
    num_single_layers: Annotated[int, Range(ge=0)] = 2  # single-stream transformer blocks
    num_attention_heads: Annotated[int, Range(ge=1)] = 4  # attention heads per block
    # Width of one attention head (width = heads x head_dim)
    attention_head_dim: Annotated[int, Range(ge=1)] = 16
    text_dim: Annotated[int, Range(ge=1)] = 32  # width of the tiny text encoders
    vae_channels: Annotated[int, Range(ge=1)] = 16  # channels of each VAE block
    # Down-sampling 4: a 32 px image is 4x4 packed tokens (fast on CPU)
    vae_blocks: Annotated[int, Range(ge=1)] = 3

"""Tiny real components shared by the learner tests and bench/learner_update.py (also imported by spawned ranks)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies.base import EditPolicy
from cocoedit.actors.types import RolloutBatch
from cocoedit.learner.config import LearnerConfig

SIZE = 32  # pixels; tiny VAE factor 2 x 2x2 packing -> 8x8 = 64 tokens of 64 channels
MODEL_KWARGS = dict(num_layers=1, num_single_layers=1, num_attention_heads=2, attention_head_dim=16)


def build_model(out_dir: str | Path) -> Path:
    from cocoedit.actors.policies.tiny import build_tiny_model

    return build_tiny_model("flux_kontext", out_dir, seed=0, **MODEL_KWARGS)


def policy_config(model_dir: str | Path, lora_rank: int = 4, dtype: str = "float32") -> PolicyConfig:
    from cocoedit.actors.policies.tiny import TINY_MAX_SEQUENCE_LENGTH

    return PolicyConfig(
        family="flux_kontext",
        model_path=str(model_dir),
        dtype=dtype,  # type: ignore[arg-type]
        device="cpu",
        lora_rank=lora_rank,
        lora_alpha=2 * lora_rank,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        gradient_checkpointing=False,
    )


def load(model_dir: str | Path, seed: int = 0, dtype: str = "float32") -> EditPolicy:
    from cocoedit.actors.policies import load_policy

    return load_policy(policy_config(model_dir, dtype=dtype), seed=seed)


def learner_config(**overrides: object) -> LearnerConfig:
    base = dict(train_timesteps=2, micro_batch_size=2, zero_stage=2, lam_pos=0.5, lam_neg=0.5, kl_weight=1e-2)
    base.update(overrides)
    return LearnerConfig(**base)  # type: ignore[arg-type]


def make_batch(policy: EditPolicy, n: int = 4, num_steps: int = 4, seed: int = 0) -> RolloutBatch:
    """A rollout batch of n edits in groups of 2 (one condition row per group, as workers send it):
    random sources, a centred square edit mask, and x0 = the source latent with the edit square replaced
    by noise (a perfect keep region)."""
    g = torch.Generator().manual_seed(seed)
    groups = (n + 1) // 2
    src = torch.randint(0, 256, (groups, 3, SIZE, SIZE), generator=g, dtype=torch.uint8)
    instructions = ["paint the square red" if k % 2 == 0 else "remove the circle" for k in range(groups)]
    cond = policy.encode_condition(instructions, src).to("cpu")
    x_src = policy.source_latents(cond).float()
    group_index = torch.arange(n) // 2
    mask = torch.zeros(n, 1, SIZE, SIZE)
    mask[:, :, 8:24, 8:24] = 1.0
    grid_src = policy.unpack(x_src[group_index], SIZE, SIZE)
    grid_mask = torch.nn.functional.interpolate(mask, size=grid_src.shape[-2:], mode="nearest")
    grid_x0 = grid_src * (1 - grid_mask) + torch.randn(grid_src.shape, generator=g) * grid_mask
    return RolloutBatch(
        edit_ids=[f"e{i}" for i in range(n)],
        item_ids=[f"item{i // 2}" for i in range(n)],
        group_ids=[f"0:item{i // 2}" for i in range(n)],
        instructions=[instructions[i // 2] for i in range(n)],
        policy_version=0,
        x0=policy.pack(grid_x0),
        source_latents=x_src,
        condition=cond,
        group_index=group_index,
        edited_images=src[group_index],
        source_images=src,
        edit_masks=(mask[::2] * 255).to(torch.uint8),
        sigmas=torch.linspace(1.0, 0.0, num_steps + 1),
        sampler="dpm2",
        height=SIZE,
        width=SIZE,
        seeds=list(range(n)),
    )


@torch.no_grad()
def keep_error(policy: EditPolicy, batch: RolloutBatch, probes: list[tuple[float, torch.Tensor]]) -> float:
    """Mean over probes (t, eps) of d_pos = <(x0_pos - x0)^2>_{W_pos} for the current theta."""
    from cocoedit.learner.losses import region_weights, weighted_sq_dist

    grid = policy.unpack(batch.x0[:1], batch.height, batch.width).shape[-2:]
    w = region_weights(batch.edit_masks_unit(list(range(len(batch)))), (int(grid[0]), int(grid[1])))
    out = []
    for t, eps in probes:
        tt = torch.full((len(batch),), t)
        x_t = (1 - t) * batch.x0 + t * eps
        with policy.adapter("default"):
            v = policy.velocity(x_t, tt, batch.edit_condition(list(range(len(batch)))))
        x0_pos = x_t - t * v
        unpack = lambda p: policy.unpack(p, batch.height, batch.width)  # noqa: E731
        out.append(weighted_sq_dist(unpack(x0_pos), unpack(batch.x0), w.w_pos).mean().item())
    return sum(out) / len(out)


def lora_max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def remove_shm_files(port: str | int) -> None:
    """Delete DeepSpeed's shared-memory allreduce buffers of one MASTER_PORT (only ours)."""
    for path in glob.glob(f"/dev/shm/deepspeed_allreduce_buffer_*_{port}*"):
        os.remove(path)

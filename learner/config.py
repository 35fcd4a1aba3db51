"""Config of the learner: advantages, the NFT objective, the region regularizer, optimisation
(docs/algorithm.md sections 4, 5, 7)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Annotated, Literal

from cocoedit.ranges import Range

# `learner.objective` names one of these: "module:Class" of an Objective subclass, imported when the
# learner starts (so the config loader checks the name without importing torch). A new objective is a
# class plus one line here (learner/objectives.py).
OBJECTIVES: dict[str, str] = {
    "nft": "cocoedit.learner.objectives:NFT",
    "grpo": "cocoedit.learner.objectives:GRPO",
}


@dataclass(frozen=True)
class LearnerConfig:
    objective: str = "nft"  # a key of OBJECTIVES above (nft, grpo), checked at load
    # advantages and filtering (section 4)
    adv_std_eps: Annotated[float, Range(gt=0)] = 1e-4
    adv_clip: Annotated[float, Range(gt=0)] = 5.0  # advantages are clipped to [-adv_clip, adv_clip]
    # Groups whose reward std is at most this are not trained on; 0 = no spread filter
    valid_min_std: Annotated[float, Range(ge=0)] = 0.02
    # Groups whose mean reward is above this are not trained on (already solved)
    valid_max_mean: Annotated[float, Range()] = 0.9
    # Items whose group std is below this and mean above ban_min_mean are banned
    ban_max_std: Annotated[float, Range(ge=0)] = 0.02
    ban_min_mean: Annotated[float, Range()] = 0.9  # see ban_max_std
    # NFT policy loss (section 5)
    nft_beta: Annotated[float, Range(gt=0)] = 1.0
    policy_loss_scale: Annotated[float, Range(ge=0)] = 5.0  # multiplies the NFT policy loss
    # Of the rollout's num_steps, random permutation per edit
    train_timesteps: Annotated[int, Range(ge=1)] = 9
    norm_eps: Annotated[float, Range(gt=0)] = 1e-5  # epsilon of the NFT loss's per-edit normalisation
    kl_weight: Annotated[float, Range(ge=0)] = 1e-4  # weight of the KL term to the reference (base) model
    # region regularizer
    use_reg: bool = True
    lam_pos: Annotated[float, Range(ge=0)] = 0.02  # 0.8 for Qwen-Image-Edit
    lam_neg: Annotated[float, Range(ge=0)] = 0.02  # 0.5 for Qwen-Image-Edit
    tau_pos: Annotated[float, Range(ge=0)] = 1e-3  # margin of the positive (keep-region) hinge
    tau_neg: Annotated[float, Range(ge=0)] = 3e-2  # margin of the negative (edit-region) hinge
    # Weight of the boundary ring between keep and edit region
    ring_weight: Annotated[float, Range(ge=0, le=1)] = 0.2
    # Latent cells eroded from the keep region to form the boundary ring
    erode_radius: Annotated[int, Range(ge=0)] = 2
    # Which branch the negative hinge compares with the source (ablation)
    reg_neg_target: Literal["neg_branch_vs_src", "pos_branch_vs_src"] = "neg_branch_vs_src"
    use_reg_xsrc: bool = True  # False: d_neg against x0 of the sample instead of the source latent
    # d_pos against the sample's x0 (released) or the source latent: see docs/algorithm.md, the regularizer
    reg_pos_target: Literal["sample", "source"] = "sample"
    binarize_mask: bool = False  # released code keeps the latent mask soft
    # Multiplier m(t) of BOTH lam_pos and lam_neg over the run, t = epoch / (run.epochs - 1)
    # (learner/schedule.py; constant: m = 1, start/end/at unused)
    lam_schedule: Literal["constant", "linear", "cosine", "step"] = "constant"
    lam_schedule_start: Annotated[float, Range(ge=0)] = 1.0  # m at the first epoch
    lam_schedule_end: Annotated[float, Range(ge=0)] = 1.0  # m at the last epoch
    lam_schedule_at: Annotated[float, Range(ge=0, le=1)] = 0.5  # step: m = end from this fraction of the run
    # Flow-GRPO (section 7)
    grpo_clip: Annotated[float, Range(gt=0)] = 1e-4
    grpo_kl_beta: Annotated[float, Range(ge=0)] = 0.0  # weight of Flow-GRPO's KL to the reference
    # Flow-GRPO's a; must equal rollout.sde_noise_level of the stored steps
    sde_noise_level: Annotated[float, Range(gt=0)] = 0.7
    # optimisation
    lr: Annotated[float, Range(gt=0)] = 3e-4
    # AdamW betas
    betas: tuple[Annotated[float, Range(ge=0, lt=1)], Annotated[float, Range(ge=0, lt=1)]] = (0.9, 0.999)
    weight_decay: Annotated[float, Range(ge=0)] = 1e-4  # AdamW weight decay
    grad_clip: Annotated[float, Range(gt=0)] = 1.0  # gradient-norm clip
    micro_batch_size: Annotated[int, Range(ge=1)] = 4  # edits per forward/backward
    # Theta_old <- d theta_old + (1-d) theta, d = min(ema_rate * step, ema_max)
    ema_rate: Annotated[float, Range(ge=0, le=1)] = 0.001
    ema_max: Annotated[float, Range(ge=0, le=1)] = 0.5  # cap of the soft-update rate d
    # DeepSpeed
    zero_stage: Annotated[int, Range(ge=0, le=2)] = 2  # ZeRO-3 is not supported (learner/learner.py)
    world_size: Annotated[int, Range(ge=1)] = 1  # learner ranks (DeepSpeed data parallel)
    gpus_per_rank: Annotated[float, Range(ge=0)] = 1.0  # GPUs each learner rank asks for
    # CPUs each learner rank asks for (and its torch threads)
    cpus_per_rank: Annotated[float, Range(ge=0)] = 1.0
    bf16: bool = True  # autocast on GPU; ignored on CPU
    # Fresh noise and timestep permutations derive from (seed, step, edit_id)
    seed: Annotated[int, Range(ge=0)] = 0
    # Linear learning-rate warm-up over this many updates (0 = constant lr)
    warmup_steps: Annotated[int, Range(ge=0)] = 0

    def check(self) -> None:
        """Rules between fields (the config loader calls this)."""
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"objective={self.objective!r} is unknown; expected one of {sorted(OBJECTIVES)} "
                "(a new objective is an Objective subclass plus one line in learner/config.py OBJECTIVES)"
            )
        if self.lam_schedule != "constant":
            if not self.use_reg or self.objective != "nft":
                raise ValueError(
                    f"learner.lam_schedule={self.lam_schedule} scales the nft objective's region regularizer, "
                    f"which this run does not use (objective={self.objective}, use_reg={self.use_reg}): set "
                    "learner.lam_schedule=constant"
                )
            if self.lam_schedule_start == self.lam_schedule_end:
                warnings.warn(
                    f"learner.lam_schedule={self.lam_schedule} with lam_schedule_start == lam_schedule_end == "
                    f"{self.lam_schedule_start:g}: the weights stay constant; set learner.lam_schedule_start "
                    "(e.g. 0) or lam_schedule_end to move them",
                    stacklevel=2,
                )

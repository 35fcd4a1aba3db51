"""Config of the learner: advantages, the NFT objective, the region regularizer, optimisation
(ALGORITHM.md sections 4, 5, 7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LearnerConfig:
    objective: str = "nft"  # a key of learner.objectives.OBJECTIVES (nft, grpo), checked by the Learner
    # advantages and filtering (section 4)
    adv_std_eps: float = 1e-4
    adv_clip: float = 5.0
    valid_min_std: float = 0.02
    valid_max_mean: float = 0.9
    ban_max_std: float = 0.02  # items whose group std is below this and mean above ban_min_mean are banned
    ban_min_mean: float = 0.9
    # NFT policy loss (section 5)
    nft_beta: float = 1.0
    policy_loss_scale: float = 5.0
    train_timesteps: int = 9  # of the rollout's num_steps, random permutation per edit
    norm_eps: float = 1e-5
    kl_weight: float = 1e-4
    # region regularizer
    use_reg: bool = True
    lam_pos: float = 0.02  # 0.8 for Qwen-Image-Edit
    lam_neg: float = 0.02  # 0.5 for Qwen-Image-Edit
    tau_pos: float = 1e-3
    tau_neg: float = 3e-2
    ring_weight: float = 0.2
    erode_radius: int = 2
    reg_neg_target: Literal["neg_branch_vs_src", "pos_branch_vs_src"] = "neg_branch_vs_src"
    use_reg_xsrc: bool = True  # False: d_neg against x0 of the sample instead of the source latent
    binarize_mask: bool = False  # released code keeps the latent mask soft
    # Flow-GRPO (section 7)
    grpo_clip: float = 1e-4
    grpo_kl_beta: float = 0.0
    sde_noise_level: float = 0.7  # Flow-GRPO's a; must equal rollout.sde_noise_level of the stored steps
    # optimisation
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    micro_batch_size: int = 4  # edits per forward/backward
    ema_rate: float = 0.001  # theta_old <- d theta_old + (1-d) theta, d = min(ema_rate * step, ema_max)
    ema_max: float = 0.5
    # DeepSpeed
    zero_stage: int = 2
    world_size: int = 1
    gpus_per_rank: float = 1.0
    cpus_per_rank: float = 1.0
    bf16: bool = True  # autocast on GPU; ignored on CPU
    seed: int = 0  # fresh noise and timestep permutations derive from (seed, step, edit_id)
    warmup_steps: int = 0  # linear learning-rate warm-up over this many updates (0 = constant lr)

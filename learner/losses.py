"""The DiffusionNFT objective, CoCoEdit's region regularizer, the KL to the reference and the Flow-GRPO
clipped objective (docs/algorithm.md sections 5 and 7). Pure torch. (The SDE step and its log-probability
are the rollout's own `actors.samplers.sde_step`, so sampling and training cannot disagree.)

Shapes: N edits; packed latents [N, L, D]; latent grid [N, C, h, w]; masks [N, 1, H, W] (pixels) or
[N, 1, h, w] (latent grid); t, r, valid: [N]. Every loss returns (loss: scalar tensor, metrics: dict
of floats). "mean_valid" is the mean over valid edits (0, still differentiable, when none is valid).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cocoedit.learner.config import LearnerConfig


def mean_valid(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x: [N], valid: [N] bool/float -> scalar sum(x * valid) / max(sum(valid), 1)."""
    w = valid.to(x.dtype)
    return (x * w).sum() / w.sum().clamp(min=1.0)


def _batch_mean(x: torch.Tensor) -> torch.Tensor:
    """[N, ...] -> [N], mean over every non-batch dim."""
    return x.flatten(1).mean(dim=1)


# ---------------------------------------------------------------------------------------------------
# NFT policy loss


def nft_branches(
    x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, v_old: torch.Tensor, beta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit positive / negative policies of DiffusionNFT and their x0-predictions.

    x_t, v, v_old: [N, L, D]; t: [N]. v_pos = beta v + (1 - beta) v_old, v_neg = (1 + beta) v_old - beta v
    (beta = 1: v_pos = v, v_neg = 2 v_old - v). Returns (x0_pos, x0_neg) = x_t - t v_{pos,neg}, [N, L, D].
    """
    te = t.view(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype)
    v_pos = beta * v + (1.0 - beta) * v_old
    v_neg = (1.0 + beta) * v_old - beta * v
    return x_t - te * v_pos, x_t - te * v_neg


def self_normalized_error(pred: torch.Tensor, target: torch.Tensor, norm_eps: float = 1e-5) -> torch.Tensor:
    """mean((pred - target)^2) / sg(max(mean|pred - target|, norm_eps)) per edit. [N, ...] -> [N].
    The normaliser is computed in float64 and detached, as in the released code."""
    with torch.no_grad():
        scale = _batch_mean((pred.double() - target.double()).abs()).clamp(min=norm_eps)
    return _batch_mean((pred - target) ** 2) / scale.to(pred.dtype)


def nft_policy_loss(
    x0_pos: torch.Tensor,
    x0_neg: torch.Tensor,
    x0: torch.Tensor,
    r: torch.Tensor,
    valid: torch.Tensor,
    beta: float = 1.0,
    scale: float = 5.0,
    norm_eps: float = 1e-5,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_policy = scale * mean_valid(r L_pos + (1 - r) L_neg) / beta.

    x0_pos, x0_neg, x0: [N, L, D]; r: [N] in [0, 1]; valid: [N] bool."""
    l_pos = self_normalized_error(x0_pos, x0, norm_eps)
    l_neg = self_normalized_error(x0_neg, x0, norm_eps)
    per_edit = (r * l_pos + (1.0 - r) * l_neg) / beta
    loss = scale * mean_valid(per_edit, valid)
    return loss, {
        "loss/policy": loss.item(),
        "nft/l_pos": mean_valid(l_pos.detach(), valid).item(),
        "nft/l_neg": mean_valid(l_neg.detach(), valid).item(),
    }


# ---------------------------------------------------------------------------------------------------
# Region regularizer


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft erosion 1 - maxpool_{2 radius + 1}(1 - mask). [N, 1, h, w] -> [N, 1, h, w].
    Beyond the image border counts as inside the region (max-pool pads with -inf)."""
    if radius <= 0:
        return mask
    k = 2 * radius + 1
    return (1.0 - F.max_pool2d(1.0 - mask, kernel_size=k, stride=1, padding=radius)).clamp(0.0, 1.0)


@dataclass
class RegionWeights:
    """Latent-grid regions of one batch, all [N, 1, h, w] in [0, 1]."""

    keep: torch.Tensor  # B, eroded keep region
    edit: torch.Tensor  # E, eroded edit region
    ring: torch.Tensor  # 1 - clamp(B + E, 0, 1): the band around the edit boundary
    w_pos: torch.Tensor  # clamp(B + ring_weight ring, 0, 1): where the positive branch must keep x0
    w_neg: torch.Tensor  # clamp(E + ring_weight ring, 0, 1): where the negative branch must differ


def region_weights(
    edit_mask: torch.Tensor,
    grid: tuple[int, int],
    erode_radius: int = 2,
    ring_weight: float = 0.2,
    binarize: bool = False,
) -> RegionWeights:
    """edit_mask: [N, 1, H, W] in [0, 1], 1 = edit (pixel grid). grid: (h, w) of the latent grid.

    The keep mask 1 - edit_mask is downsampled with nearest sampling (soft by default, as released;
    `binarize` thresholds it at 0.5), both regions are eroded by `erode_radius`, and the ring is what
    neither eroded region covers."""
    if edit_mask.ndim != 4 or edit_mask.shape[1] != 1:
        raise ValueError(f"edit_mask must be [N, 1, H, W], got shape {tuple(edit_mask.shape)}")
    keep = F.interpolate(1.0 - edit_mask.float(), size=grid, mode="nearest")
    if binarize:
        keep = (keep >= 0.5).float()
    b = erode(keep, erode_radius)
    e = erode(1.0 - keep, erode_radius)
    ring = (1.0 - (b + e).clamp(0.0, 1.0)).clamp(0.0, 1.0)
    return RegionWeights(
        keep=b,
        edit=e,
        ring=ring,
        w_pos=(b + ring_weight * ring).clamp(0.0, 1.0),
        w_neg=(e + ring_weight * ring).clamp(0.0, 1.0),
    )


def weighted_sq_dist(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """sum W (a - b)^2 / sum W over channels and pixels. a, b: [N, C, h, w]; weight: [N, 1, h, w] -> [N].
    An empty weight gives 0 (denominator clamped at 1e-6)."""
    w = weight.to(a.dtype).expand_as(a)
    num = (w * (a - b) ** 2).flatten(1).sum(dim=1)
    den = w.flatten(1).sum(dim=1).clamp(min=1e-6)
    return num / den


def region_regularizer(
    x0_pos: torch.Tensor,
    x0_neg: torch.Tensor,
    x0: torch.Tensor,
    x_src: torch.Tensor,
    weights: RegionWeights,
    r: torch.Tensor,
    valid: torch.Tensor,
    lam_pos: float = 0.02,
    lam_neg: float = 0.02,
    tau_pos: float = 1e-3,
    tau_neg: float = 3e-2,
    reg_neg_target: str = "neg_branch_vs_src",
    use_reg_xsrc: bool = True,
    reg_pos_target: str = "sample",
) -> tuple[torch.Tensor, dict[str, float]]:
    """L_reg = mean_valid(r lam_pos relu(d_pos - tau_pos) + (1 - r) lam_neg relu(tau_neg - d_neg)).

    x0_pos, x0_neg, x0, x_src: latent grid [N, C, h, w]; r: [N]; valid: [N] bool.
    d_pos = <(x0_pos - a)^2>_{W_pos} with a = x0 (`sample`, released: the positive branch reproduces the
    sample's keep region) or x_src (`source`: it reproduces the source's, which the keep region should be;
    docs/algorithm.md says why the released anchor cannot undo drift that theta_old's samples already have).
    d_neg = <(y - ref)^2>_{W_neg} with y = x0_neg (`neg_branch_vs_src`, released) or x0_pos
    (`pos_branch_vs_src`) and ref = x_src (`use_reg_xsrc`) or x0: the edit region must move away."""
    if reg_neg_target == "neg_branch_vs_src":
        y = x0_neg
    elif reg_neg_target == "pos_branch_vs_src":
        y = x0_pos
    else:
        raise ValueError(
            f"learner.reg_neg_target={reg_neg_target!r} must be 'neg_branch_vs_src' or 'pos_branch_vs_src'"
        )
    if reg_pos_target not in ("sample", "source"):
        raise ValueError(f"learner.reg_pos_target={reg_pos_target!r} must be 'sample' or 'source'")
    ref = x_src if use_reg_xsrc else x0
    d_pos = weighted_sq_dist(x0_pos, x_src if reg_pos_target == "source" else x0, weights.w_pos)
    d_neg = weighted_sq_dist(y, ref, weights.w_neg)
    h_pos = torch.relu(d_pos - tau_pos)
    h_neg = torch.relu(tau_neg - d_neg)
    reg_pos = mean_valid(r * lam_pos * h_pos, valid)
    reg_neg = mean_valid((1.0 - r) * lam_neg * h_neg, valid)
    loss = reg_pos + reg_neg
    return loss, {
        "loss/reg": loss.item(),
        "reg/pos": reg_pos.item(),
        "reg/neg": reg_neg.item(),
        "reg/d_pos": mean_valid(d_pos.detach(), valid).item(),
        "reg/d_neg": mean_valid(d_neg.detach(), valid).item(),
        "reg/hinge_pos_active": mean_valid((h_pos > 0).float(), valid).item(),
        "reg/hinge_neg_active": mean_valid((h_neg > 0).float(), valid).item(),
        "reg/ring_fraction": weights.ring.mean().item(),
    }


def kl_to_reference(
    v: torch.Tensor, v_ref: torch.Tensor, valid: torch.Tensor, weight: float = 1e-4
) -> tuple[torch.Tensor, dict[str, float]]:
    """weight * mean_valid(mean((v - v_ref)^2)). v, v_ref: [N, L, D]; valid: [N]."""
    kl = _batch_mean((v - v_ref) ** 2)
    mean_kl = mean_valid(kl, valid)
    return weight * mean_kl, {"loss/kl": (weight * mean_kl).item(), "kl/v_ref_mse": mean_kl.item()}


def r_metrics(r: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """Statistics of the optimality probability over valid edits, and the valid fraction."""
    rv = r[valid.bool()]
    out = {"nft/valid_fraction": valid.float().mean().item()}
    if rv.numel():
        out.update(
            {
                "nft/r_mean": rv.mean().item(),
                "nft/r_std": rv.std(unbiased=False).item(),
                "nft/r_min": rv.min().item(),
                "nft/r_max": rv.max().item(),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------------
# Flow-GRPO


def grpo_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    valid: torch.Tensor,
    clip_range: float = 1e-4,
    adv_clip: float = 5.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Flow-GRPO clipped surrogate mean_valid(max(-A ratio, -A clip(ratio, 1 - eps, 1 + eps))).
    log_prob, old_log_prob, advantages: [N]; valid: [N] bool."""
    adv = advantages.clamp(-adv_clip, adv_clip)
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = mean_valid(torch.maximum(unclipped, clipped), valid)
    return loss, {
        "loss/policy": loss.item(),
        "grpo/clip_fraction": mean_valid(((ratio - 1.0).abs() > clip_range).float(), valid).item(),
        "grpo/ratio_mean": mean_valid(ratio.detach(), valid).item(),
        "grpo/approx_kl": mean_valid(0.5 * (log_prob.detach() - old_log_prob) ** 2, valid).item(),
    }


def grpo_kl(
    mean: torch.Tensor, mean_ref: torch.Tensor, std: torch.Tensor, valid: torch.Tensor, beta: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """beta * mean_valid(mean((mean - mean_ref)^2) / (2 std^2)). mean, mean_ref: [N, L, D]; std: [N, 1, 1]."""
    kl = _batch_mean((mean - mean_ref) ** 2) / (2.0 * std.flatten() ** 2)
    loss = beta * mean_valid(kl, valid)
    return loss, {"loss/kl": loss.item(), "kl/grpo": mean_valid(kl.detach(), valid).item()}


def nft_objective(
    cfg: LearnerConfig,
    x_t: torch.Tensor,
    t: torch.Tensor,
    x0: torch.Tensor,
    x_src: torch.Tensor,
    v: torch.Tensor,
    v_old: torch.Tensor,
    v_ref: torch.Tensor | None,
    r: torch.Tensor,
    valid: torch.Tensor,
    weights: RegionWeights | None,
    unpack: Callable[[torch.Tensor], torch.Tensor],
    lam_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = L_policy + L_reg + kl_weight * KL for one micro-batch at one timestep (docs/algorithm.md section 5).

    x_t, x0, x_src, v, v_old, v_ref: packed [N, L, D]; t, r, valid: [N]; weights: the latent-grid regions
    (None or cfg.use_reg False: no regularizer); unpack: packed [N, L, D] -> grid [N, C, h, w];
    v_ref None (or cfg.kl_weight 0): no KL term; lam_scale: the schedule's multiplier of cfg.lam_pos and
    cfg.lam_neg this epoch (learner/schedule.py)."""
    x0_pos, x0_neg = nft_branches(x_t, t, v, v_old, cfg.nft_beta)
    loss, metrics = nft_policy_loss(
        x0_pos, x0_neg, x0, r, valid, cfg.nft_beta, cfg.policy_loss_scale, cfg.norm_eps
    )
    if cfg.use_reg and weights is not None:
        reg, m = region_regularizer(
            unpack(x0_pos),
            unpack(x0_neg),
            unpack(x0),
            unpack(x_src),
            weights,
            r,
            valid,
            cfg.lam_pos * lam_scale,
            cfg.lam_neg * lam_scale,
            cfg.tau_pos,
            cfg.tau_neg,
            cfg.reg_neg_target,
            cfg.use_reg_xsrc,
            cfg.reg_pos_target,
        )
        loss = loss + reg
        metrics.update(m)
    if v_ref is not None and cfg.kl_weight > 0:
        kl, m = kl_to_reference(v, v_ref, valid, cfg.kl_weight)
        loss = loss + kl
        metrics.update(m)
    metrics.update(r_metrics(r, valid))
    metrics["loss/total"] = loss.item()
    return loss, metrics

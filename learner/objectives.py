"""Training objectives of the learner, one class each, in one registry (`learner.objective` names one).

    class MyObjective(Objective):
        def loss(self, views, batch, mb, j): ...      # (scalar loss, metrics) of one pass
    # learner/config.py: OBJECTIVES["mine"] = "my.module:MyObjective"   -> learner.objective: mine

An objective sees one micro-batch of valid edits on the learner's device (`MicroBatch`: their tensors,
the rollout timesteps each edit trains on, fresh noise if it asks for it) and returns the loss of the
micro-batch at one of those timesteps; the Learner owns the rest (gradient accumulation, normalisation
over ranks, the optimizer step, the soft update of theta_old). Velocities come from `Views`: the three
LoRA views of the policy under the learner's autocast.

- `nft`: DiffusionNFT with CoCoEdit's region regularizer (docs/algorithm.md section 5).
- `grpo`: Flow-GRPO's clipped objective on the stored SDE transitions (docs/algorithm.md section 7).
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from typing import Any, Optional

import torch

from cocoedit.actors.policies.base import AdapterName, EditPolicy
from cocoedit.actors.samplers import sde_step
from cocoedit.actors.types import Condition, RolloutBatch
from cocoedit.learner.advantages import optimality_probability
from cocoedit.learner.config import OBJECTIVES, LearnerConfig
from cocoedit.learner.losses import grpo_kl, grpo_loss, nft_objective, region_weights
from cocoedit.learner.schedule import lam_multiplier


@dataclass
class MicroBatch:
    """One micro-batch of m valid edits, on the learner's device."""

    idx: list[int]  # positions in the (shard) batch
    cond: Condition  # m rows, one per edit
    adv: torch.Tensor  # [m] advantages
    x0: torch.Tensor  # [m, L, D] float32
    x_src: torch.Tensor  # [m, L, D] float32
    steps: torch.Tensor  # [m, passes] indices into the rollout's sigmas (a permutation per edit)
    noise: Optional[torch.Tensor]  # [m, passes, L, D] fresh eps when the objective asks for it
    state: Any = None  # what the objective's `prepare` returned for this micro-batch


class Views:
    """The policy's LoRA views as velocity functions (float32 out), under autocast when `autocast` is
    a dtype: bf16/fp16 bases compute in their dtype, the float32 LoRA masters get float32 gradients."""

    def __init__(self, policy: EditPolicy, autocast: Optional[torch.dtype]) -> None:
        self.policy = policy
        self.autocast = autocast

    def velocity(
        self, adapter: AdapterName, x: torch.Tensor, t: torch.Tensor, cond: Condition
    ) -> torch.Tensor:
        """v [m, L, D] of view `adapter` ("default" = theta, "old", "ref") at x [m, L, D], t [m]."""
        amp = (
            torch.autocast(self.policy.device.type, dtype=self.autocast)
            if self.autocast is not None
            else contextlib.nullcontext()
        )
        with self.policy.adapter(adapter), amp:
            return self.policy.velocity(x, t, cond).float()

    def unpack(self, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed [m, L, D] -> latent grid [m, C, h, w]."""
        return self.policy.unpack(packed, height, width)


class Objective:
    """Base of every objective: override `loss`; `passes`, `prepare` and `fresh_noise` as needed."""

    fresh_noise = False  # True: MicroBatch.noise holds eps [passes, L, D] per edit, seeded per edit

    def __init__(self, cfg: LearnerConfig) -> None:
        self.cfg = cfg

    def at(self, progress: Optional[float]) -> dict[str, float]:
        """Called before each update with where the run stands (t in [0, 1], learner/schedule.py
        run_fraction; None: unknown); returns the metrics of what depends on it (none here)."""
        return {}

    def passes(self, batch: RolloutBatch) -> int:
        """Timesteps each edit trains on; raises ValueError when `batch` cannot be trained on."""
        return min(self.cfg.train_timesteps, batch.sigmas.shape[0] - 1)

    def prepare(self, views: Views, batch: RolloutBatch, mb: MicroBatch) -> Any:
        """Per-micro-batch state shared by its passes (stored in mb.state)."""
        return None

    def loss(
        self, views: Views, batch: RolloutBatch, mb: MicroBatch, j: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """(scalar loss, metrics) of micro-batch `mb` at each edit's j-th timestep mb.steps[:, j]; the
        loss is a mean over the micro-batch's edits (the Learner weighs and accumulates it)."""
        raise NotImplementedError


class NFT(Objective):
    """DiffusionNFT + region regularizer + KL to the reference, on x_t = (1 - t) x0 + t eps."""

    fresh_noise = True
    lam_scale = 1.0  # the regularizer weights' multiplier this update (`at`, learner/schedule.py)

    def at(self, progress: Optional[float]) -> dict[str, float]:
        """The region regularizer's weights at `progress`: learner.lam_schedule's multiplier of both."""
        self.lam_scale = lam_multiplier(self.cfg, progress)
        if not self.cfg.use_reg:
            return {}
        return {
            "reg/lam_pos": self.cfg.lam_pos * self.lam_scale,
            "reg/lam_neg": self.cfg.lam_neg * self.lam_scale,
        }

    def passes(self, batch: RolloutBatch) -> int:
        n_steps = batch.sigmas.shape[0] - 1
        if self.cfg.train_timesteps > n_steps:
            raise ValueError(
                f"learner.train_timesteps={self.cfg.train_timesteps} exceeds the rollout's {n_steps} steps; "
                "lower it or raise rollout.num_steps"
            )
        return self.cfg.train_timesteps

    def prepare(self, views: Views, batch: RolloutBatch, mb: MicroBatch) -> Any:
        """The latent-grid regions of the micro-batch's edit masks (None without the regularizer)."""
        c = self.cfg
        if not c.use_reg:
            return None
        grid = views.unpack(mb.x0[:1], batch.height, batch.width).shape[-2:]
        masks = batch.edit_masks_unit(mb.idx).to(mb.x0.device)
        return region_weights(
            masks, (int(grid[0]), int(grid[1])), c.erode_radius, c.ring_weight, c.binarize_mask
        )

    def loss(
        self, views: Views, batch: RolloutBatch, mb: MicroBatch, j: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert mb.noise is not None
        dev = mb.x0.device
        valid = torch.ones(len(mb.idx), dtype=torch.bool, device=dev)
        t = batch.sigmas.to(torch.float32)[mb.steps[:, j]].to(dev)
        te = t.view(-1, 1, 1)
        x_t = (1.0 - te) * mb.x0 + te * mb.noise[:, j]
        with torch.no_grad():
            v_old = views.velocity("old", x_t, t, mb.cond)
            v_ref = views.velocity("ref", x_t, t, mb.cond) if self.cfg.kl_weight > 0 else None
        v = views.velocity("default", x_t, t, mb.cond)
        r = optimality_probability(mb.adv, self.cfg.adv_clip)

        def unpack(p: torch.Tensor) -> torch.Tensor:
            return views.unpack(p, batch.height, batch.width)

        return nft_objective(
            self.cfg, x_t, t, mb.x0, mb.x_src, v, v_old, v_ref, r, valid, mb.state, unpack, self.lam_scale
        )


class GRPO(Objective):
    """Flow-GRPO: the rollout's SDE step re-evaluated under theta on the stored transitions."""

    def passes(self, batch: RolloutBatch) -> int:
        if batch.trajectory is None or batch.log_probs is None:
            raise ValueError(
                "learner.objective=grpo needs the SDE trajectory and log_probs in the batch: sample with "
                "rollout.sampler=sde"
            )
        return super().passes(batch)

    def loss(
        self, views: Views, batch: RolloutBatch, mb: MicroBatch, j: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert batch.trajectory is not None and batch.log_probs is not None
        c = self.cfg
        dev = mb.x0.device
        valid = torch.ones(len(mb.idx), dtype=torch.bool, device=dev)
        steps = mb.steps[:, j]
        rows = torch.arange(len(mb.idx))
        traj = batch.trajectory[mb.idx]
        x = traj[rows, steps].to(dev, torch.float32)
        x_next = traj[rows, steps + 1].to(dev, torch.float32)
        old_lp = batch.log_probs[mb.idx][rows, steps].to(dev, torch.float32)
        sigmas = batch.sigmas.to(torch.float32)
        sigma, sigma_next = sigmas[steps].to(dev), sigmas[steps + 1].to(dev)
        sigma_max = float(sigmas[1])
        v = views.velocity("default", x, sigma, mb.cond)
        # the rollout's own SDE step, re-evaluated on the stored (detached) x'
        _, lp, mean, std = sde_step(
            x, v, sigma, sigma_next, c.sde_noise_level, prev_sample=x_next, sigma_max=sigma_max
        )
        loss, metrics = grpo_loss(lp, old_lp, mb.adv, valid, c.grpo_clip, c.adv_clip)
        if c.grpo_kl_beta > 0:
            with torch.no_grad():
                v_ref = views.velocity("ref", x, sigma, mb.cond)
                _, _, mean_ref, _ = sde_step(
                    x, v_ref, sigma, sigma_next, c.sde_noise_level, prev_sample=x_next, sigma_max=sigma_max
                )
            kl, m = grpo_kl(mean, mean_ref, std, valid, c.grpo_kl_beta)
            loss = loss + kl
            metrics.update(m)
        metrics["loss/total"] = loss.item()
        return loss, metrics


def make_objective(cfg: LearnerConfig) -> Objective:
    """The registered objective `cfg.objective` (learner/config.py OBJECTIVES)."""
    if cfg.objective not in OBJECTIVES:
        raise ValueError(
            f"learner.objective={cfg.objective!r} is unknown; expected one of {sorted(OBJECTIVES)} "
            "(a new objective is an Objective subclass plus one line in learner/config.py OBJECTIVES)"
        )
    module, _, name = OBJECTIVES[cfg.objective].partition(":")
    cls: type[Objective] = getattr(importlib.import_module(module), name)
    return cls(cfg)

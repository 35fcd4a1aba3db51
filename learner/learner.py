"""The learner: a DeepSpeed engine over the LoRA (`default` adapter) of an EditPolicy, one optimizer step
per epoch on the DiffusionNFT objective with CoCoEdit's region regularizer (ALGORITHM.md s5), or on the
Flow-GRPO clipped objective (s7), then the soft update of `old` (the sampling policy).

    learner = Learner(policy_cfg, learner_cfg)                      # rank 0 of 1 on this machine
    scores = score_groups(rewards, batch.group_ids, batch.item_ids, learner_cfg)
    metrics = learner.update(batch, scores.advantages, scores.valid)
    workers.load(learner.sampling_weights(), version + 1)

Data parallel: the launcher (cluster/) starts `world_size` processes, sets MASTER_ADDR / MASTER_PORT and
constructs `Learner(..., rank=i, world_size=n)` in each; every rank's `update` gets its shard of the
epoch's edits. Losses are normalised by the GLOBAL number of valid edits x timesteps, and every edit's
fresh noise and timestep permutation derive from (seed, step, edit_id), so n ranks == 1 rank on the
same data, up to float summation order. On CPU DeepSpeed runs with its CPU accelerator and gloo.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies.base import EditPolicy
from cocoedit.actors.samplers import sde_step
from cocoedit.actors.types import Condition, RolloutBatch
from cocoedit.learner.advantages import optimality_probability
from cocoedit.learner.config import LearnerConfig
from cocoedit.learner.losses import (
    RegionWeights,
    grpo_kl,
    grpo_loss,
    nft_objective,
    r_metrics,
    region_weights,
)


@dataclass
class _Micro:
    """One micro-batch of valid edits, on the learner's device."""

    idx: list[int]  # positions in the (shard) batch
    cond: Condition
    adv: torch.Tensor  # [m]
    x0: torch.Tensor  # [m, L, D] float32
    x_src: torch.Tensor  # [m, L, D] float32
    weights: Optional[RegionWeights]  # latent-grid regions, None without the regularizer
    steps: torch.Tensor  # [m, train_t] indices into the rollout's sigmas
    noise: Optional[torch.Tensor]  # [m, train_t, L, D] fresh eps (nft)


class Learner:
    """One data-parallel rank of the learner (a plain class; cluster/ wraps it in a Ray actor)."""

    def __init__(
        self,
        policy_cfg: PolicyConfig,
        cfg: LearnerConfig,
        rank: int = 0,
        world_size: int = 1,
        policy: Optional[EditPolicy] = None,
    ) -> None:
        if cfg.zero_stage not in (0, 1, 2):
            raise ValueError(
                f"learner.zero_stage={cfg.zero_stage} is not supported: use 0, 1 or 2 (the trained LoRA is "
                "small; ZeRO-3 would partition the frozen base weights the rollout-side views need)"
            )
        if cfg.micro_batch_size < 1 or cfg.train_timesteps < 1:
            raise ValueError(
                f"learner.micro_batch_size={cfg.micro_batch_size} and learner.train_timesteps="
                f"{cfg.train_timesteps} must both be >= 1"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.cfg = cfg
        self.policy_cfg = policy_cfg
        self.rank = rank
        self.world_size = world_size
        device = _resolve_device(policy.device if policy is not None else policy_cfg.device)
        self.device = device
        _init_distributed(device, rank, world_size)
        torch.manual_seed(cfg.seed)  # identical LoRA init on every rank (DeepSpeed also broadcasts rank 0)
        if policy is None:
            from cocoedit.actors.policies import load_policy

            policy = load_policy(policy_cfg, seed=cfg.seed)
        self.policy = policy
        self.autocast = device.type == "cuda" and cfg.bf16
        self._pairs = _adapter_pairs(policy)
        self._grad_norm = float("nan")
        self.engine = self._build_engine()
        self._step = 0

    # ------------------------------------------------------------------------------------------------
    # set-up

    def _ds_config(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "train_micro_batch_size_per_gpu": c.micro_batch_size,
            "gradient_accumulation_steps": 1,
            # we own the accumulation boundary: many backward passes, then exactly one step()
            "managed_gradient_accumulation": False,
            # ZeRO-0 does not report the norm it clips to: the learner clips in an optimizer pre-hook then
            "gradient_clipping": c.grad_clip if c.zero_stage > 0 else 0.0,
            "optimizer": {
                "type": "AdamW",
                "params": {
                    "lr": c.lr,
                    "betas": list(c.betas),
                    "eps": 1e-8,
                    "weight_decay": c.weight_decay,
                    "torch_adam": True,  # no CPUAdam / FusedAdam JIT build
                },
            },
            "zero_optimization": {"stage": c.zero_stage},
            "steps_per_print": 2**31 - 1,
            "wall_clock_breakdown": False,
        }

    def _build_engine(self) -> Any:
        import deepspeed

        params = self.policy.trainable_parameters()
        if not params:
            raise ValueError("policy.trainable_parameters() is empty: the `default` LoRA adapter is missing")
        warmup = self.cfg.warmup_steps

        def schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
            return torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup > 0 else 1.0
            )

        engine, _, _, _ = deepspeed.initialize(
            model=self.policy.transformer,
            model_parameters=params,
            config=self._ds_config(),
            lr_scheduler=schedule,
            dist_init_required=False,
        )
        if self.cfg.zero_stage == 0:
            # runs inside engine.step() after the gradient all-reduce, where DeepSpeed would clip
            engine.optimizer.register_step_pre_hook(lambda *_: self._clip(params))
        return engine

    def _clip(self, params: list[torch.nn.Parameter]) -> None:
        self._grad_norm = float(torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip))

    # ------------------------------------------------------------------------------------------------
    # public API

    @property
    def step(self) -> int:
        """Optimizer steps taken so far (= updates applied)."""
        return self._step

    def state_dict(self) -> dict[str, Any]:
        """The learner's own state for a checkpoint (DeepSpeed saves the LoRA and optimizer itself)."""
        return {"step": self._step, "world_size": self.world_size, "zero_stage": self.cfg.zero_stage}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])

    def sampling_weights(self) -> dict[str, torch.Tensor]:
        """LoRA state of `old` (theta_old, what rollout workers sample with), CPU tensors."""
        return self.policy.lora_state_dict("old")

    def update(self, batch: RolloutBatch, advantages: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
        """One optimizer step on this rank's shard of the epoch. advantages: [N] float, valid: [N] bool.

        NFT: for each valid edit, `train_timesteps` of its rollout timesteps (a permutation seeded by
        (seed, step, edit_id)), micro-batches of `micro_batch_size` edits, gradient accumulation over
        micro-batches x timesteps, one step, then theta_old <- d theta_old + (1 - d) theta.
        Returns metrics averaged over passes and ranks, plus timings (seconds)."""
        t_start = time.perf_counter()
        n = len(batch)
        advantages = torch.as_tensor(advantages, dtype=torch.float32).flatten()
        valid = torch.as_tensor(valid).flatten().bool()
        if advantages.shape[0] != n or valid.shape[0] != n:
            raise ValueError(
                f"update got {n} edits but advantages has {advantages.shape[0]} and valid {valid.shape[0]} "
                "entries; pass one per edit of the batch (shard)"
            )
        if n == 0:
            raise ValueError(
                "update got an empty shard: give every learner rank at least one edit (the ranks meet in "
                "collectives, invalid edits are fine)"
            )
        n_steps = batch.sigmas.shape[0] - 1
        if self.cfg.objective == "nft" and self.cfg.train_timesteps > n_steps:
            raise ValueError(
                f"learner.train_timesteps={self.cfg.train_timesteps} exceeds the rollout's {n_steps} steps; "
                "lower it or raise rollout.num_steps"
            )
        if self.cfg.objective == "grpo" and (batch.trajectory is None or batch.log_probs is None):
            raise ValueError(
                "learner.objective=grpo needs the SDE trajectory and log_probs in the batch: sample with "
                "rollout.sampler=sde"
            )
        train_t = min(self.cfg.train_timesteps, n_steps)
        local_idx = torch.nonzero(valid).flatten().tolist()
        micro = [
            local_idx[i : i + self.cfg.micro_batch_size]
            for i in range(0, len(local_idx), self.cfg.micro_batch_size)
        ]
        # Normalise by the global count so that every rank layout gives the same gradient.
        counts = self._all_reduce(torch.tensor([len(local_idx), len(micro)], dtype=torch.float64), "sum")
        n_valid_global = int(counts[0].item())
        n_passes = int(self._all_reduce(torch.tensor([float(len(micro))]), "max").item()) * train_t
        if n_valid_global == 0:
            return {
                "learner/skipped": 1.0,
                "learner/step": float(self._step),
                "learner/n_valid": 0.0,
                "time/update_s": time.perf_counter() - t_start,
            }

        self.engine.train()
        sums: dict[str, float] = {}
        n_recorded = 0
        t_fb = time.perf_counter()
        for idx in micro:
            mb = self._plan(batch, idx, n_steps, train_t, advantages)
            for j in range(train_t):
                loss, m = self._pass(batch, mb, j)
                weight = len(idx) * self.world_size / (n_valid_global * train_t)
                self.engine.backward(loss * weight, scale_wrt_gas=False)
                for k, v in m.items():  # weighted by edits: per-edit means over ranks and micro-batches
                    if not k.startswith("nft/r_"):
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                n_recorded += len(idx)
        # ZeRO-2 reduces on every backward (a collective): ranks with fewer passes pad with zero-weight ones.
        for _ in range(n_passes - len(micro) * train_t):
            idx = [0]
            loss, _ = self._pass(batch, self._plan(batch, idx, n_steps, 1, advantages), 0)
            self.engine.backward(loss * 0.0, scale_wrt_gas=False)
        t_fb = time.perf_counter() - t_fb

        t_opt = time.perf_counter()
        self.engine.step()
        self._step += 1
        grad_norm = self.engine.get_global_grad_norm() if self.cfg.zero_stage > 0 else self._grad_norm
        lr = self.engine.get_lr()[0]
        t_opt = time.perf_counter() - t_opt

        t_sync = time.perf_counter()
        decay = self._soft_update_old()
        t_sync = time.perf_counter() - t_sync

        metrics = self._reduce_metrics(sums, n_recorded)
        r_all = self._gather_values(optimality_probability(advantages[valid], self.cfg.adv_clip))
        metrics.update(r_metrics(r_all, torch.ones_like(r_all, dtype=torch.bool)))
        metrics.update(
            {
                "learner/step": float(self._step),
                "learner/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                "learner/lr": float(lr),
                "learner/ema_decay": decay,
                "learner/n_valid": float(n_valid_global),
                "learner/valid_fraction_local": float(valid.float().mean().item()) if n else 0.0,
                "learner/passes": float(n_passes),
                "time/forward_backward_s": t_fb,
                "time/optimizer_step_s": t_opt,
                "time/soft_update_s": t_sync,
                "time/update_s": time.perf_counter() - t_start,
            }
        )
        return metrics

    # ------------------------------------------------------------------------------------------------
    # one forward/backward pass

    def _plan(
        self, batch: RolloutBatch, idx: list[int], n_steps: int, train_t: int, adv: torch.Tensor
    ) -> _Micro:
        """One micro-batch on the device: its tensors, region weights, per-edit timestep indices
        [m, train_t] and fresh noise [m, train_t, L, D] (both seeded per edit)."""
        dev = self.device
        steps, noise = [], []
        for i in idx:
            g = _edit_generator(self.cfg.seed, self._step, batch.edit_ids[i])
            steps.append(torch.randperm(n_steps, generator=g)[:train_t])
            if self.cfg.objective == "nft":
                noise.append(torch.randn((train_t, *batch.x0.shape[1:]), generator=g, dtype=torch.float32))
        weights = None
        if self.cfg.objective == "nft" and self.cfg.use_reg:
            grid = self.policy.unpack(batch.x0[:1].to(dev), batch.height, batch.width).shape[-2:]
            weights = region_weights(
                batch.edit_masks[idx].to(dev),
                (int(grid[0]), int(grid[1])),
                self.cfg.erode_radius,
                self.cfg.ring_weight,
                self.cfg.binarize_mask,
            )
        return _Micro(
            idx=idx,
            cond=batch.condition.select(idx).to(dev),
            adv=adv[idx].to(dev),
            x0=batch.x0[idx].to(dev, torch.float32),
            x_src=batch.source_latents[idx].to(dev, torch.float32),
            weights=weights,
            steps=torch.stack(steps),
            noise=torch.stack(noise).to(dev) if noise else None,
        )

    @contextlib.contextmanager
    def _autocast(self) -> Iterator[None]:
        if self.autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                yield
        else:
            yield

    def _velocity(self, adapter: str, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        with self.policy.adapter(adapter), self._autocast():  # type: ignore[arg-type]
            return self.policy.velocity(x, t, cond).float()

    def _pass(self, batch: RolloutBatch, mb: _Micro, j: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of micro-batch `mb` at its edits' j-th training timestep (all edits valid)."""
        valid = torch.ones(len(mb.idx), dtype=torch.bool, device=self.device)
        steps = mb.steps[:, j]
        if self.cfg.objective == "grpo":
            return self._grpo_pass(batch, mb, steps, valid)
        assert mb.noise is not None
        t = batch.sigmas.to(torch.float32)[steps].to(self.device)
        te = t.view(-1, 1, 1)
        x_t = (1.0 - te) * mb.x0 + te * mb.noise[:, j]
        with torch.no_grad():
            v_old = self._velocity("old", x_t, t, mb.cond)
            v_ref = self._velocity("ref", x_t, t, mb.cond) if self.cfg.kl_weight > 0 else None
        v = self._velocity("default", x_t, t, mb.cond)
        r = optimality_probability(mb.adv, self.cfg.adv_clip)

        def unpack(p: torch.Tensor) -> torch.Tensor:
            return self.policy.unpack(p, batch.height, batch.width)

        return nft_objective(self.cfg, x_t, t, mb.x0, mb.x_src, v, v_old, v_ref, r, valid, mb.weights, unpack)

    def _grpo_pass(
        self, batch: RolloutBatch, mb: _Micro, steps: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        assert batch.trajectory is not None and batch.log_probs is not None
        dev = self.device
        cond, adv = mb.cond, mb.adv
        rows = torch.arange(len(mb.idx))
        traj = batch.trajectory[mb.idx]
        x = traj[rows, steps].to(dev, torch.float32)
        x_next = traj[rows, steps + 1].to(dev, torch.float32)
        old_lp = batch.log_probs[mb.idx][rows, steps].to(dev, torch.float32)
        sigmas = batch.sigmas.to(torch.float32)
        sigma, sigma_next = sigmas[steps].to(dev), sigmas[steps + 1].to(dev)
        sigma_max = float(sigmas[1])
        a = self.cfg.sde_noise_level
        v = self._velocity("default", x, sigma, cond)
        # the rollout's own SDE step, re-evaluated on the stored (detached) x'
        _, lp, mean, std = sde_step(x, v, sigma, sigma_next, a, prev_sample=x_next, sigma_max=sigma_max)
        loss, metrics = grpo_loss(lp, old_lp, adv, valid, self.cfg.grpo_clip, self.cfg.adv_clip)
        if self.cfg.grpo_kl_beta > 0:
            with torch.no_grad():
                v_ref = self._velocity("ref", x, sigma, cond)
                _, _, mean_ref, _ = sde_step(
                    x, v_ref, sigma, sigma_next, a, prev_sample=x_next, sigma_max=sigma_max
                )
            kl, m = grpo_kl(mean, mean_ref, std, valid, self.cfg.grpo_kl_beta)
            loss = loss + kl
            metrics.update(m)
        metrics["loss/total"] = loss.item()
        return loss, metrics

    # ------------------------------------------------------------------------------------------------
    # after the step

    @torch.no_grad()
    def _soft_update_old(self) -> float:
        """theta_old <- d theta_old + (1 - d) theta with d = min(ema_rate * step, ema_max). Returns d."""
        d = min(self.cfg.ema_rate * self._step, self.cfg.ema_max)
        for default, old in self._pairs:
            old.mul_(d).add_(default.detach().to(old.dtype), alpha=1.0 - d)
        return d

    def _all_reduce(self, x: torch.Tensor, op: str) -> torch.Tensor:
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        y = x.to(self._comm_device())
        dist.all_reduce(y, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return y.cpu()

    def _gather_values(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate a small 1-d CPU tensor over ranks."""
        if self.world_size == 1:
            return x
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, x.cpu())
        return torch.cat(gathered)

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _reduce_metrics(self, sums: dict[str, float], count: int) -> dict[str, float]:
        if self.world_size == 1:
            return {k: v / max(count, 1) for k, v in sums.items()}
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, (sums, count))
        total = sum(c for _, c in gathered)
        keys = sorted({k for s, _ in gathered for k in s})
        return {k: sum(s.get(k, 0.0) for s, _ in gathered) / max(total, 1) for k in keys}

    # ------------------------------------------------------------------------------------------------
    # checkpoints

    def save(
        self, run_dir: str | Path, extra_state: Optional[dict[str, Any]] = None, keep_last: int = 3
    ) -> Path:
        """Write a complete checkpoint under run_dir/checkpoints (collective: every rank calls it).
        Returns its directory. See learner.checkpoint."""
        from cocoedit.learner.checkpoint import save_checkpoint

        return save_checkpoint(self, run_dir, extra_state or {}, keep_last)

    def load(self, path: str | Path) -> dict[str, Any]:
        """Restore a checkpoint directory (or the latest complete one under a run directory). Returns
        the caller's extra_state."""
        from cocoedit.learner.checkpoint import load_checkpoint

        return load_checkpoint(self, path)


def _resolve_device(device: torch.device | str) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _init_distributed(device: torch.device, rank: int, world_size: int) -> None:
    """Join (or create) the process group: gloo + DeepSpeed's CPU accelerator on CPU, nccl on GPU."""
    wanted = "cpu" if device.type == "cpu" else "cuda"
    current = os.environ.get("DS_ACCELERATOR")
    if current is not None and current != wanted:
        raise RuntimeError(
            f"DS_ACCELERATOR={current} but the learner runs on {device}: unset it or set DS_ACCELERATOR={wanted}"
        )
    os.environ["DS_ACCELERATOR"] = wanted
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if dist.get_world_size() != world_size or dist.get_rank() != rank:
            raise RuntimeError(
                f"this process already belongs to a process group of world size {dist.get_world_size()} "
                f"(rank {dist.get_rank()}); a Learner(rank={rank}, world_size={world_size}) needs its own process"
            )
        return
    if world_size > 1 and not ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ):
        raise RuntimeError(
            f"world_size={world_size} needs MASTER_ADDR and MASTER_PORT in the environment of every rank "
            "(the launcher sets them; e.g. 127.0.0.1 and cocoedit.loopback.free_port())"
        )
    if world_size == 1:
        from cocoedit.loopback import free_port

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ.setdefault("LOCAL_RANK", str(rank if device.type == "cpu" else 0))
    import deepspeed

    deepspeed.init_distributed(
        dist_backend="gloo" if device.type == "cpu" else "nccl",
        auto_mpi_discovery=False,
        rank=rank,
        world_size=world_size,
        verbose=False,
    )


def _adapter_pairs(policy: EditPolicy) -> list[tuple[torch.nn.Parameter, torch.nn.Parameter]]:
    """(default, old) LoRA parameter pairs, matched by peft's names (`lora_A.default.weight` ...)."""
    params = dict(policy.transformer.named_parameters())
    pairs = []
    for name, p in params.items():
        if ".default." in name and "lora_" in name:
            old_name = name.replace(".default.", ".old.")
            if old_name not in params:
                raise ValueError(f"policy has LoRA parameter {name} but no `old` counterpart {old_name}")
            pairs.append((p, params[old_name]))
    trainable = {id(p) for p in policy.trainable_parameters()}
    if not pairs or {id(d) for d, _ in pairs} != trainable:
        raise ValueError(
            f"found {len(pairs)} (default, old) LoRA pairs that do not match the policy's "
            f"{len(trainable)} trainable parameters; the policy must carry peft adapters `default` and `old`"
        )
    return pairs


def _edit_generator(seed: int, step: int, edit_id: str) -> torch.Generator:
    """A CPU generator determined by (seed, step, edit_id) alone, identical in every process."""
    digest = hashlib.sha256(f"{seed}:{step}:{edit_id}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % (2**63 - 1))

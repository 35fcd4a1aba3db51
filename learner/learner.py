"""The learner: a DeepSpeed engine over the LoRA (`default` adapter) of an EditPolicy, one optimizer step
per epoch on a registered objective (learner.objectives: DiffusionNFT with CoCoEdit's region
regularizer or Flow-GRPO, docs/algorithm.md sections 5 and 7), then the soft update of `old` (the
sampling policy).

    learner = Learner(policy_cfg, learner_cfg)                      # rank 0 of 1 on this machine
    scores = score_groups(rewards, batch.group_ids, batch.item_ids, learner_cfg)
    metrics = learner.update(batch, scores.advantages, scores.valid)
    worker.load_weights(learner.sampling_weights(), version + 1)  # an actors.rollout.RolloutWorker

Data parallel: the launcher (cluster/) starts `world_size` processes, sets MASTER_ADDR / MASTER_PORT and
constructs `Learner(..., rank=i, world_size=n)` in each; every rank's `update` gets its shard of the
epoch's edits. Losses are normalised by the GLOBAL number of valid edits x timesteps, and every edit's
fresh noise and timestep permutation derive from (seed, step, edit_id), so n ranks == 1 rank on the
same data, up to float summation order. On CPU DeepSpeed runs with its CPU accelerator and gloo.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Optional

import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies.base import EditPolicy
from cocoedit.actors.types import RolloutBatch
from cocoedit.learner.advantages import optimality_probability
from cocoedit.learner.config import LearnerConfig
from cocoedit.learner.losses import r_metrics
from cocoedit.learner.objectives import MicroBatch, Views, make_objective
from cocoedit.timing import StageTimer


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
        """Loads the transformer of policy_cfg.model_path with its LoRA views (no text encoder or VAE:
        the learner never encodes or decodes), or trains `policy`."""
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
        self.objective = make_objective(cfg)
        self.policy_cfg = policy_cfg
        self.rank = rank
        self.world_size = world_size
        device = _resolve_device(policy.device if policy is not None else policy_cfg.device)
        self.device = device
        _init_distributed(device, rank, world_size)
        torch.manual_seed(cfg.seed)  # identical LoRA init on every rank (DeepSpeed also broadcasts rank 0)
        if policy is None:
            from cocoedit.actors.policies import load_policy

            policy = load_policy(policy_cfg, seed=cfg.seed, parts="transformer")
        self.policy = policy
        self.views = Views(policy, _autocast_dtype(policy, cfg, device))
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
        low = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
        if low:
            raise ValueError(
                f"the trained LoRA parameters are {low}, not float32: small updates round away in low "
                "precision; build the policy with actors.policies.lora.add_lora (float32 adapters)"
            )
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

    def update(
        self,
        batch: RolloutBatch,
        advantages: torch.Tensor,
        valid: torch.Tensor,
        progress: Optional[float] = None,
    ) -> dict[str, float]:
        """One optimizer step on this rank's shard of the epoch. advantages: [N] float, valid: [N] bool;
        progress: where the run stands, t = epoch / (epochs - 1) (learner/schedule.py run_fraction), which
        a learner.lam_schedule other than constant needs.

        For each valid edit, `objective.passes` of its rollout timesteps (a permutation seeded by
        (seed, step, edit_id)), micro-batches of `micro_batch_size` edits, gradient accumulation over
        micro-batches x timesteps, one step, then theta_old <- d theta_old + (1 - d) theta.
        Returns metrics averaged over passes and ranks, plus timings (seconds)."""
        timer = StageTimer()
        advantages, valid = self._check_inputs(batch, advantages, valid)
        scheduled = self.objective.at(progress)  # e.g. the regularizer's weights this epoch
        passes = self.objective.passes(batch)
        local = torch.nonzero(valid).flatten().tolist()
        micro = [
            local[i : i + self.cfg.micro_batch_size] for i in range(0, len(local), self.cfg.micro_batch_size)
        ]
        # Normalise by the global count so that every rank layout gives the same gradient.
        n_valid = int(self._all_reduce(torch.tensor([float(len(local))], dtype=torch.float64), "sum").item())
        n_passes = int(self._all_reduce(torch.tensor([float(len(micro))]), "max").item()) * passes
        if n_valid == 0:
            return {
                "learner/skipped": 1.0,
                "learner/step": float(self._step),
                "learner/n_valid": 0.0,
                "time/update_s": timer.elapsed(),
                **scheduled,
            }
        with timer("forward_backward"):
            sums, n_recorded = self._accumulate(batch, advantages, micro, passes, n_valid)
            self._pad_passes(batch, advantages, n_passes - len(micro) * passes)
            self._refuse_non_finite(sums)
        with timer("optimizer_step"):
            grad_norm, lr = self._optimizer_step()
        with timer("soft_update"):
            decay = self._soft_update_old()
        metrics = self._reduce_metrics(sums, n_recorded)
        r_all = self._gather_values(optimality_probability(advantages[valid], self.cfg.adv_clip))
        metrics.update(r_metrics(r_all, torch.ones_like(r_all, dtype=torch.bool)))
        metrics.update(
            {
                "learner/step": float(self._step),
                "learner/grad_norm": grad_norm,
                "learner/lr": lr,
                "learner/ema_decay": decay,
                "learner/n_valid": float(n_valid),
                "learner/valid_fraction_local": float(valid.float().mean().item()),
                "learner/passes": float(n_passes),
                **timer.metrics(prefix="time/", total="update"),
                **scheduled,
            }
        )
        return metrics

    # ------------------------------------------------------------------------------------------------
    # the parts of an update

    def _check_inputs(
        self, batch: RolloutBatch, advantages: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
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
        return advantages, valid

    def _accumulate(
        self,
        batch: RolloutBatch,
        advantages: torch.Tensor,
        micro: list[list[int]],
        passes: int,
        n_valid: int,
    ) -> tuple[dict[str, float], int]:
        """Backward of every (micro-batch, timestep) pass, each weighted so that the accumulated gradient
        is the mean over the GLOBAL valid edits x timesteps. Returns per-edit metric sums and their count."""
        self.engine.train()
        sums: dict[str, float] = {}
        n_recorded = 0
        for idx in micro:
            mb = self._plan(batch, idx, passes, advantages)
            for j in range(passes):
                loss, m = self.objective.loss(self.views, batch, mb, j)
                weight = len(idx) * self.world_size / (n_valid * passes)
                self.engine.backward(loss * weight, scale_wrt_gas=False)
                for k, v in m.items():  # weighted by edits: per-edit means over ranks and micro-batches
                    if not k.startswith("nft/r_"):
                        sums[k] = sums.get(k, 0.0) + v * len(idx)
                n_recorded += len(idx)
        return sums, n_recorded

    def _refuse_non_finite(self, sums: dict[str, float]) -> None:
        """A non-finite loss on any rank stops the update before the optimizer step: one NaN step would
        turn theta (and, through the soft update, theta_old) into NaN for the rest of the run."""
        bad = sorted(k for k, v in sums.items() if k.startswith("loss/") and not math.isfinite(v))
        if self._all_reduce(torch.tensor([float(bool(bad))]), "max").item() > 0:
            raise FloatingPointError(
                f"learner step {self._step}: non-finite {', '.join(bad) or 'loss on another rank'}; no optimizer "
                "step was taken (theta and theta_old are unchanged). Look at the rollout batch (are its x0 "
                "finite? rollout.num_steps, the sampler) and the learning rate"
            )

    def _pad_passes(self, batch: RolloutBatch, advantages: torch.Tensor, count: int) -> None:
        """ZeRO-2 reduces on every backward (a collective): a rank with fewer passes than the busiest
        one runs zero-weight passes so that every rank meets the same collectives."""
        for _ in range(count):
            loss, _ = self.objective.loss(self.views, batch, self._plan(batch, [0], 1, advantages), 0)
            self.engine.backward(loss * 0.0, scale_wrt_gas=False)

    def _optimizer_step(self) -> tuple[float, float]:
        """engine.step() (gradient clipping inside); returns (gradient norm before clipping, lr)."""
        self.engine.step()
        self._step += 1
        grad_norm = self.engine.get_global_grad_norm() if self.cfg.zero_stage > 0 else self._grad_norm
        return (float(grad_norm) if grad_norm is not None else float("nan")), float(self.engine.get_lr()[0])

    def _plan(self, batch: RolloutBatch, idx: list[int], passes: int, adv: torch.Tensor) -> MicroBatch:
        """One micro-batch on the device: its tensors, per-edit timestep indices [m, passes] and (if the
        objective asks) fresh noise [m, passes, L, D], both seeded per edit. The batch holds one
        condition row per group; the rows these edits use travel to the device once, then expand there."""
        dev = self.device
        n_steps = batch.sigmas.shape[0] - 1
        steps, noise = [], []
        for i in idx:
            g = _edit_generator(self.cfg.seed, self._step, batch.edit_ids[i])
            steps.append(torch.randperm(n_steps, generator=g)[:passes])
            if self.objective.fresh_noise:
                noise.append(torch.randn((passes, *batch.x0.shape[1:]), generator=g, dtype=torch.float32))
        rows, per_edit = torch.unique(batch.group_index[idx], return_inverse=True)
        per_edit = per_edit.to(dev)
        mb = MicroBatch(
            idx=idx,
            cond=batch.condition.select(rows).to(dev).select(per_edit),
            adv=adv[idx].to(dev),
            x0=batch.x0[idx].to(dev, torch.float32),
            x_src=batch.source_latents[rows].to(dev, torch.float32)[per_edit],
            steps=torch.stack(steps),
            noise=torch.stack(noise).to(dev) if noise else None,
        )
        mb.state = self.objective.prepare(self.views, batch, mb)
        return mb

    # ------------------------------------------------------------------------------------------------
    # after the step

    @torch.no_grad()
    def _soft_update_old(self) -> float:
        """theta_old <- d theta_old + (1 - d) theta with d = min(ema_rate * step, ema_max). Returns d."""
        d = min(self.cfg.ema_rate * self._step, self.cfg.ema_max)
        for default, old in self._pairs:  # both float32 (lora.add_lora): the blend does not round away
            old.mul_(d).add_(default.detach(), alpha=1.0 - d)
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

    backend = "gloo" if device.type == "cpu" else "nccl"
    dist.init_process_group(
        backend, store=rendezvous_store(rank, world_size), rank=rank, world_size=world_size
    )
    # DeepSpeed wraps the group this process already joined
    deepspeed.init_distributed(
        dist_backend=backend, auto_mpi_discovery=False, rank=rank, world_size=world_size, verbose=False
    )


def rendezvous_store(rank: int, world_size: int) -> Any:
    """The process group's TCPStore at MASTER_ADDR:MASTER_PORT. Rank 0 serves it on a socket bound to
    MASTER_ADDR only: the store torch creates itself (env://) listens on every interface ([::])."""
    import socket

    import torch.distributed as dist

    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    if rank != 0:
        return dist.TCPStore(host, port, world_size, False)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    listener.listen(max(128, world_size))
    # the store owns the socket from here on (detach: Python will not close it under the store)
    return dist.TCPStore(host, port, world_size, True, master_listen_fd=listener.detach())


def _autocast_dtype(policy: EditPolicy, cfg: LearnerConfig, device: torch.device) -> Optional[torch.dtype]:
    """Autocast where the base is bf16/fp16 (any device), and in bf16 on a GPU when learner.bf16."""
    if policy.dtype in (torch.bfloat16, torch.float16):
        return policy.dtype
    return torch.bfloat16 if device.type == "cuda" and cfg.bf16 else None


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

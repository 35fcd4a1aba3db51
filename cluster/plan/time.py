"""The time plan: one epoch's work per role (work.py) as seconds on a named GPU at a stated MFU, the
epoch's critical path with and without `max_staleness` overlap, busy fractions, edits/s, and the split
of the same GPUs between rollout, learner and judge that gives the most edits/s while every role fits.

    cocoedit plan --config cluster/configs/flux_kontext_8gpu.yaml --gpu h100 --mfu 0.4

seconds = FLOPs / (GPUs x dense bf16 peak x MFU); the judge's decode steps add weight bytes / memory
bandwidth; the pixel service's CPU seconds are divided over its CPUs. The epoch, as the driver runs it:
sampling and scoring overlap (each batch is scored when it comes back; the tail is one batch's
scoring), then the update. With max_staleness >= 1 the next epoch samples while the learner updates,
so the epoch takes the longer of the two stages; with 0, their sum. A colocated rollout worker and
learner rank share their GPU: its two stages never overlap.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from cocoedit.cluster.plan.work import (
    JudgeSize,
    RoleWork,
    flops_text,
    judge_work,
    learner_work,
    pixel_work,
    rollout_work,
)

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config
    from cocoedit.cluster.plan.model import PolicyModel


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense (no sparsity) bf16 tensor-core peak
    memory_tb_s: float  # memory bandwidth
    memory_gib: float
    source: str


# Datasheet numbers, SXM parts where there are two; dense = half the "with sparsity" figure.
GPUS = {
    g.name: g
    for g in (
        Gpu(
            "h100",
            989.0,
            3.35,
            80.0,
            "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 1,979 TFLOPS bf16 with sparsity)",
        ),
        Gpu(
            "h200",
            989.0,
            4.8,
            141.0,
            "NVIDIA H200 Tensor Core GPU datasheet (SXM: 1,979 TFLOPS bf16 with sparsity)",
        ),
        Gpu(
            "a100",
            312.0,
            2.039,
            80.0,
            "NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB: 312 TFLOPS bf16 dense)",
        ),
        Gpu("l40s", 362.05, 0.864, 48.0, "NVIDIA L40S datasheet (733 TFLOPS bf16 with sparsity; 864 GB/s)"),
    )
}
DEFAULT_MFU = 0.4


@dataclass
class RoleTime:
    work: RoleWork
    seconds: Optional[float]  # per epoch; None: no GPU (a CPU role of a GPU plan is not modelled)
    busy: float = 0.0  # fraction of the epoch's critical path


@dataclass
class TimePlan:
    gpu: str
    tflops: float  # peak used
    mfu: float
    edits: int
    roles: list[RoleTime]
    sample_stage_s: float  # sampling + scoring (overlapped) of one epoch
    learn_stage_s: float
    serial_s: float  # critical path without overlap (max_staleness 0)
    overlap_s: float  # with max_staleness >= 1
    staleness: int
    colocate: bool
    critical: bool = False  # the rollout and learner run on GPUs: the critical path means something

    @property
    def epoch_s(self) -> float:
        return self.overlap_s if self.staleness >= 1 and not self.colocate else self.serial_s

    @property
    def edits_per_s(self) -> float:
        return self.edits / self.epoch_s if self.epoch_s > 0 else float("inf")


def time_plan(
    cfg: Config,
    model: PolicyModel,
    judge_size: Optional[JudgeSize],
    gpu: str = "h100",
    tflops: Optional[float] = None,
    mfu: float = DEFAULT_MFU,
) -> TimePlan:
    """The time plan of `cfg` on `gpu` (its peak replaced by `tflops` when given) at `mfu`."""
    if gpu not in GPUS:
        raise ValueError(f"--gpu {gpu!r} is unknown; expected one of {sorted(GPUS)} (or --gpu-tflops)")
    peak = (tflops if tflops is not None else GPUS[gpu].bf16_tflops) * 1e12
    bandwidth = GPUS[gpu].memory_tb_s * 1e12
    works = [rollout_work(cfg, model), learner_work(cfg, model)]
    judge = judge_work(cfg, judge_size) if "mllm" in cfg.rewards.weights else None
    if judge is not None:
        works.append(judge)
    if "pixel" in cfg.rewards.weights:
        works.append(pixel_work(cfg))
    roles = []
    for w in works:
        if w.cpu_s:
            roles.append(RoleTime(w, w.cpu_s / max(w.cpus, 1e-9)))
        elif w.gpus > 0:
            roles.append(RoleTime(w, w.flops / (w.gpus * peak * mfu) + w.read_bytes / (w.gpus * bandwidth)))
        else:
            roles.append(RoleTime(w, None))
    by = {r.work.role: r.seconds or 0.0 for r in roles}
    batches = max(1, -(-cfg.data.n_items * cfg.data.group_size // max(cfg.rollout.batch_size, 1)))
    score = max(by.get("judge", 0.0), by.get("pixel service", 0.0))
    sample = max(by["rollout"], score) + score / batches
    learn = by["learner"]
    serial = sample + learn
    colocate = cfg.run.colocate
    overlap = serial if colocate else max(sample, learn)
    plan = TimePlan(
        gpu if tflops is None else f"{tflops:g} TFLOPS",
        peak / 1e12,
        mfu,
        cfg.data.n_items * cfg.data.group_size,
        roles,
        sample,
        learn,
        serial,
        overlap,
        cfg.rollout.max_staleness,
        colocate,
    )
    plan.critical = all(r.seconds is not None for r in roles if r.work.role in ("rollout", "learner"))
    if plan.critical:
        for r in roles:
            r.busy = (r.seconds or 0.0) / plan.epoch_s
    return plan


@dataclass(frozen=True)
class Split:
    workers: int
    ranks: int
    judges: int
    plan: TimePlan


def _with_counts(cfg: Config, workers: int, ranks: int, judges: int) -> Config:
    sections = dict(cfg.rewards.sections)
    if "mllm" in sections:
        mllm = sections["mllm"]
        sections["mllm"] = dataclasses.replace(
            mllm, scaling=dataclasses.replace(mllm.scaling, replicas=judges)
        )
    rewards = dataclasses.replace(cfg.rewards, sections=sections)
    return dataclasses.replace(
        cfg,
        rollout=dataclasses.replace(cfg.rollout, num_workers=workers),
        learner=dataclasses.replace(cfg.learner, world_size=ranks),
        rewards=rewards,
    )


def best_split(
    cfg: Config,
    model: PolicyModel,
    judge_size: Optional[JudgeSize],
    gpu_bytes: Optional[float],
    gpu: str,
    tflops: Optional[float],
    mfu: float,
) -> tuple[Optional[Split], int]:
    """The split of the config's GPUs between rollout workers, learner ranks and judge replicas (at
    their per-actor GPU asks) with the most edits/s among those where every role fits `gpu_bytes`;
    also how many splits were tried. None when no split fits (or the roles ask no GPUs)."""
    from cocoedit.cluster.plan.roles import learner_plan, role_components, rollout_plan

    r, lr, j = cfg.rollout, cfg.learner, cfg.rewards.mllm.scaling
    judged = "mllm" in cfg.rewards.weights and "mllm" not in cfg.rewards.addresses and j.gpus_per_replica > 0
    if r.gpus_per_worker <= 0 or lr.gpus_per_rank <= 0 or cfg.run.colocate:
        return None, 0
    total = r.num_workers * r.gpus_per_worker + lr.world_size * lr.gpus_per_rank
    total += j.replicas * j.gpus_per_replica if judged else 0
    components = role_components(model, "transformer")

    @functools.cache
    def rollout_fits(workers: int) -> bool:
        variant = _with_counts(cfg, workers, lr.world_size, j.replicas)
        return gpu_bytes is None or rollout_plan(variant, model, gpu_bytes).fits is not False

    @functools.cache
    def learner_fits(ranks: int) -> bool:
        variant = _with_counts(cfg, r.num_workers, ranks, j.replicas)
        return gpu_bytes is None or learner_plan(variant, model, gpu_bytes, components).fits is not False

    best: Optional[Split] = None
    tried = 0
    judge_counts = range(1, int(total // j.gpus_per_replica) + 1) if judged else [j.replicas]
    for workers, ranks in itertools.product(range(1, int(total // r.gpus_per_worker) + 1), repeat=2):
        for judges in judge_counts:
            used = workers * r.gpus_per_worker + ranks * lr.gpus_per_rank
            used += judges * j.gpus_per_replica if judged else 0
            if abs(used - total) > 1e-9:  # a split of the same GPUs: all of them
                continue
            tried += 1
            if not (rollout_fits(workers) and learner_fits(ranks)):
                continue
            plan = time_plan(_with_counts(cfg, workers, ranks, judges), model, judge_size, gpu, tflops, mfu)
            if best is None or plan.edits_per_s > best.plan.edits_per_s * (1 + 1e-9):
                best = Split(workers, ranks, judges, plan)
    return best, tried


def _s(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds:,.1f} s"


def format_time(
    cfg: Config, tp: TimePlan, split: Optional[Split], tried: int, gpu_memory_gib: Optional[float]
) -> str:
    source = GPUS[tp.gpu].source if tp.gpu in GPUS else "--gpu-tflops"
    lines = [
        f"\ntime plan: one epoch of {tp.edits} edits on {tp.gpu} ({tp.tflops:g} TFLOPS dense bf16; {source}) "
        f"at MFU {tp.mfu:g}"
    ]
    for r in tp.roles:
        w = r.work
        ask = f"{w.cpus:g} CPUs" if w.cpu_s else f"{w.gpus:g} GPUs"
        if r.seconds is None:
            lines.append(f"  {w.role} ({ask}): {flops_text(w.flops)}; asks no GPU: seconds not modelled")
        elif not tp.critical:
            lines.append(f"  {w.role} ({ask}): {_s(r.seconds)} per epoch")
        else:
            lines.append(f"  {w.role} ({ask}): {_s(r.seconds)} per epoch, busy {100 * r.busy:.0f}%")
        for k, v in w.lines.items():
            lines.append(f"      {k:<66} {flops_text(v):>12}")
        if w.cpu_s:
            lines.append(f"      {'CPU seconds per epoch':<66} {w.cpu_s:>10,.1f} s")
        if w.read_bytes:
            lines.append(f"      {'decode: weights read':<66} {w.read_bytes / 2**40:>9.2f} TiB")
        lines += [f"      - {n}" for n in w.notes]
    if not tp.critical:
        lines.append("  the rollout or learner asks no GPU: no critical path (a GPU config has one)")
        return "\n".join(lines)
    mode = "colocated: rollout and learner share GPUs" if tp.colocate else f"max_staleness {tp.staleness}"
    lines += [
        f"  critical path: sampling + scoring {_s(tp.sample_stage_s)}, update {_s(tp.learn_stage_s)}; "
        f"without overlap {_s(tp.serial_s)}, with max_staleness overlap {_s(tp.overlap_s)}",
        f"  this config ({mode}): {_s(tp.epoch_s)} per epoch, {tp.edits_per_s:.2f} edits/s",
    ]
    if split is not None:
        gain = split.plan.edits_per_s / tp.edits_per_s - 1 if tp.edits_per_s else 0.0
        fits = f"every role fits {gpu_memory_gib:g} GiB" if gpu_memory_gib else "memory not checked"
        lines.append(
            f"  suggested split of the same GPUs: {split.workers} rollout workers, {split.ranks} learner "
            f"ranks, {split.judges} judge replicas -> {_s(split.plan.epoch_s)} per epoch, "
            f"{split.plan.edits_per_s:.2f} edits/s ({100 * gain:+.0f}%); {fits} ({tried} splits tried)"
        )
    return "\n".join(lines)

"""The plan as text: `cocoedit plan` prints it (exit 1 naming a role that cannot fit) and every run logs
it at its start."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING, Optional

from cocoedit.cluster.plan.roles import GIB, RolePlan, _count, plan
from cocoedit.cluster.plan.time import DEFAULT_MFU

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

log = logging.getLogger("cocoedit.cluster.plan")


def _gib(n: float) -> str:
    return f"{n / GIB:7.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:7.1f} MiB"


def format_plan(cfg: Config, roles: list[RolePlan], gpu_memory_gib: Optional[float]) -> str:
    p = cfg.policy
    gpu = f"GPUs of {gpu_memory_gib:g} GiB" if gpu_memory_gib else "no GPU size given (estimates only)"
    lines = [
        f"plan: {p.family} at {cfg.data.image_size}x{cfg.data.image_size} px, {p.dtype}, "
        f"{cfg.data.n_items} x {cfg.data.group_size} edits per epoch; {gpu}"
    ]
    for role in roles:
        asks = f"{role.gpus:g} GPU + {role.cpus:g} CPU each" if role.gpus else f"{role.cpus:g} CPU each"
        verdict = {True: "fits", False: "DOES NOT FIT", None: "host memory" if not role.gpus else ""}[
            role.fits
        ]
        total = f"{_gib(role.total).strip()}" if role.memory else "-"
        of = f" of {role.device_bytes / GIB:g} GiB" if role.device_bytes else ""
        lines.append(f"\n{role.role} x{role.count} ({asks}): {total}{of}  {verdict}".rstrip())
        if role.params:
            parts = ", ".join(f"{k} {_count(n)}" for k, n in role.params.items())
            lines.append(f"    parameters: {parts}")
        for k, v in role.memory.items():
            lines.append(f"    {k:<72} {_gib(v)}")
        for k, v in role.options.items():
            lines.append(f"    ({k:<70} {_gib(v)})")
        lines += [f"    - {n}" for n in role.notes]
        lines += [f"    ! {n}" for n in role.problems]
    return "\n".join(lines)


def failing(roles: list[RolePlan]) -> list[RolePlan]:
    return [r for r in roles if r.fits is False]


def log_plan(cfg: Config) -> None:
    """Log the plan of a run at its start (GPU size: this machine's first GPU, if any)."""
    import torch

    gpu = torch.cuda.get_device_properties(0).total_memory / GIB if torch.cuda.is_available() else None
    try:
        roles = plan(cfg, gpu)
    except Exception as e:  # noqa: BLE001 - the plan is advice: a model it cannot simulate must not stop the run
        log.warning("no memory plan for this run (%s: %s)", type(e).__name__, e)
        return
    log.info("memory plan (cocoedit plan, cluster/plan/):\n%s", format_plan(cfg, roles, gpu))
    for role in failing(roles):
        log.warning(
            "%s may not fit: %s", role.role, "; ".join(role.problems) or f"{role.total / GIB:.1f} GiB"
        )


def cli_plan(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit plan --config FILE [--gpu h100|h200|a100|l40s] [--gpu-tflops T] [--mfu F]
    [--gpu-memory GiB] [key=value ...]`: print the memory plan and the time plan (cluster/plan/time.py);
    exit 1 naming every role that cannot fit."""
    from cocoedit.cluster.plan.roles import judge_size, run_model
    from cocoedit.cluster.plan.time import GPUS, best_split, format_time, time_plan

    gpu = getattr(args, "gpu", None) or "h100"
    tflops = getattr(args, "gpu_tflops", None)
    mfu = getattr(args, "mfu", None) or DEFAULT_MFU
    if not 0 < mfu <= 1 or (tflops is not None and tflops <= 0):
        print(f"plan: --mfu={mfu} must be in (0, 1] and --gpu-tflops={tflops} positive", file=sys.stderr)
        return 2
    memory = args.gpu_memory if args.gpu_memory is not None else GPUS[gpu].memory_gib
    roles = plan(cfg, memory)
    print(format_plan(cfg, roles, memory))
    model, judge = run_model(cfg), judge_size(cfg)
    timed = time_plan(cfg, model, judge, gpu, tflops, mfu)
    split, tried = best_split(cfg, model, judge, memory * GIB, gpu, tflops, mfu)
    print(format_time(cfg, timed, split, tried, memory))
    bad = failing(roles)
    for role in bad:
        why = "; ".join(role.problems) or (
            f"needs {role.total / GIB:.1f} GiB per GPU, more than {role.device_bytes / GIB:g} GiB"  # type: ignore[operator]
        )
        print(f"\n{role.role} cannot fit: {why}", file=sys.stderr)
        if not role.problems:  # a problem names its own fix
            print(f"  fix: {memory_fix(role)}", file=sys.stderr)
    return 1 if bad else 0


# What lowers a role's memory on one GPU, cheapest first (`cocoedit plan` prints it for each that does not fit).
FIXES = {
    "rollout worker": "lower rollout.batch_size (edits per forward pass; the sampling activations scale with it)",
    "learner rank": "set policy.gradient_checkpointing=true (the smaller activations shown), lower "
    "learner.micro_batch_size",
    "colocated rollout worker + learner rank": "run.colocate=false (a GPU each), or the rollout worker's and "
    "learner rank's fixes",
    "reward service mllm replica": "raise rewards.mllm.tensor_parallel_size with scaling.gpus_per_replica (the "
    "weights are split over them), or use a smaller judge",
}


def memory_fix(role: RolePlan) -> str:
    """A fix for a role over its GPU's memory; weights that alone do not fit leave only bigger GPUs."""
    weights = sum(v for k, v in role.memory.items() if k.startswith("weights"))
    fix = FIXES.get(role.role, "give it fewer edits per pass")
    if role.device_bytes is not None and weights > role.device_bytes and "mllm" not in role.role:
        return (
            f"its weights alone take {weights / GIB:.1f} GiB: it needs GPUs with more memory (--gpu-memory)"
        )
    return f"{fix}; or GPUs with more memory (--gpu-memory)"

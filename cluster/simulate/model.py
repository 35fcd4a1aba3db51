"""A run config turned into its simulated twin: the `sim` editor and `sim_judge` with the time plan's
seconds per call, a 40,000-item index as data, scaled out by a factor if asked.

    sim = simulated_config(cfg, SimSettings(time_scale=20), work_dir)
    sim.cfg          # the config the real driver runs (policy.family=sim, rewards.sim_judge, data)
    sim.seconds      # simulated GPU seconds per call (before the time scale)
    sim.plan         # the time plan of the simulated config (cluster/plan/time.py)

Seconds per call on ONE actor's GPUs = that call's FLOPs (cluster/plan/work.py, counted on the meta
device) / (the actor's GPUs x the GPU's dense bf16 peak x MFU): the same arithmetic as the plan's
per-role seconds, so an ideal simulated epoch takes the plan's critical path / time_scale.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cocoedit.actors.policies.sim import SimSpec
from cocoedit.cluster.config import Config, ConfigError
from cocoedit.cluster.plan.time import GPUS, TimePlan, time_plan
from cocoedit.cluster.train.dryrun import on_loopback
from cocoedit.rewards.sim_judge import SimJudgeConfig

INDEX_ITEMS = 40_000  # lines of the simulated data index (the driver holds the index only)
POOL_ITEMS = 64  # distinct synthetic images the index cycles through (workers read them from disk)


@dataclass(frozen=True)
class SimSettings:
    time_scale: float = 20.0  # simulated seconds per wall second
    gpu: str = "h100"
    mfu: float = 0.4
    scale: float = 1.0  # workers, ranks, judge and pixel replicas (and data.n_items with weak=True) x scale
    weak: bool = True  # scale data.n_items with the GPUs (same work per GPU)
    n_items: Optional[int] = None  # data.n_items before scaling (None: the config's)
    scale_cpu_services: bool = True  # False: CPU-only reward services (pixel) keep their replicas
    count_lora: bool = True  # count the simulated LoRA's parameters (seconds: builds the model on meta)


@dataclass
class Simulated:
    cfg: Config  # what the driver runs
    original: Config  # the config simulated (scaled), real families and judge
    seconds: dict[str, float]  # simulated GPU seconds per call: forward, backward, decode, encode, judge
    plan: TimePlan  # of `original` on settings.gpu at settings.mfu
    settings: SimSettings
    lora_params: int = 0  # the simulated family's trainable LoRA parameters (sync bytes are modelled)

    def describe(self) -> str:
        s = self.settings
        return (
            f"SIMULATED {self.original.policy.family} on {s.gpu} at MFU {s.mfu:g}, time scale {s.time_scale:g} "
            f"(1 wall s = {s.time_scale:g} simulated s): GPU calls are held, not computed"
        )


def scaled(
    cfg: Config, k: float, n_items: Optional[int] = None, weak: bool = True, cpu_services: bool = True
) -> Config:
    """`cfg` with k times its rollout workers, learner ranks and reward replicas (autoscaling off: the
    pixel replicas are real processes on this machine), and k times data.n_items when `weak`. k may be
    a fraction (0.5: half the GPUs) when every count stays a whole number >= 1. cpu_services=False keeps
    the replicas of services that ask no GPU (real processes here, on this machine's cores)."""

    def times(n: int, what: str) -> int:
        if n * k < 1 or abs(n * k - round(n * k)) > 1e-9:
            raise ConfigError(f"--scale {k:g} makes {what}={n} x {k:g} = {n * k:g}: not a whole number >= 1")
        return round(n * k)

    sections = dict(cfg.rewards.sections)
    for name, section in sections.items():
        s = section.scaling
        if name not in cfg.rewards.weights:
            continue
        n = (
            times(s.replicas, f"rewards.{name}.scaling.replicas")
            if cpu_services or s.gpus_per_replica
            else s.replicas
        )
        sections[name] = dataclasses.replace(
            section,
            scaling=dataclasses.replace(s, replicas=n, min_replicas=n, max_replicas=n, target_score_s=None),
        )
    items = n_items or cfg.data.n_items
    return dataclasses.replace(
        cfg,
        data=dataclasses.replace(cfg.data, n_items=times(items, "data.n_items") if weak else items),
        rollout=dataclasses.replace(
            cfg.rollout, num_workers=times(cfg.rollout.num_workers, "rollout.num_workers")
        ),
        learner=dataclasses.replace(
            cfg.learner, world_size=times(cfg.learner.world_size, "learner.world_size")
        ),
        rewards=dataclasses.replace(cfg.rewards, sections=sections),
    )


def call_seconds(cfg: Config, gpu: str, mfu: float) -> tuple[dict[str, float], TimePlan]:
    """Simulated GPU seconds per call of `cfg`'s editor and judge, and its time plan."""
    from cocoedit.cluster.plan.roles import judge_size, run_model
    from cocoedit.cluster.plan.work import _text_flops, judge_work, transformer_flops, vae_flops

    r, lr, p = cfg.rollout, cfg.learner, cfg.policy
    if r.gpus_per_worker <= 0 or lr.gpus_per_rank <= 0:
        raise ConfigError(
            "a simulation holds each call for its time on the simulated GPUs: rollout.gpus_per_worker and "
            "learner.gpus_per_rank must be > 0 (a GPU config, e.g. cluster/configs/flux_kontext_8gpu.yaml)"
        )
    if r.gpus_per_worker != lr.gpus_per_rank:
        raise ConfigError(
            f"rollout.gpus_per_worker={r.gpus_per_worker:g} and learner.gpus_per_rank={lr.gpus_per_rank:g} "
            "differ: the simulated editor has one time per forward; simulate with equal GPUs per actor"
        )
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu!r} is unknown; expected one of {sorted(GPUS)}")
    model, judge = run_model(cfg), judge_size(cfg)
    rate = r.gpus_per_worker * GPUS[gpu].bf16_tflops * 1e12 * mfu
    size, tokens = cfg.data.image_size, model.text_tokens(p.max_sequence_length)
    forward = transformer_flops(model, p, size, tokens, grad=False, checkpointing=False)
    both = transformer_flops(model, p, size, tokens, grad=True, checkpointing=p.gradient_checkpointing)
    seconds = {
        "forward": forward / rate,
        "backward": (both - forward) / rate,
        "decode": vae_flops(model, size, decode=True) / rate,
        "encode": (vae_flops(model, size, decode=False) + _text_flops(model, cfg)) / rate,
        "judge": 0.0,
    }
    work = judge_work(cfg, judge) if "mllm" in cfg.rewards.weights else None
    if work is not None:
        j = cfg.rewards.mllm.scaling
        judge_rate = j.gpus_per_replica * GPUS[gpu].bf16_tflops * 1e12 * mfu
        read = work.read_bytes / max(j.replicas, 1) / (j.gpus_per_replica * GPUS[gpu].memory_tb_s * 1e12)
        edits = cfg.data.n_items * cfg.data.group_size
        seconds["judge"] = (work.flops / max(j.replicas, 1) / judge_rate + read) * j.replicas / edits
    return seconds, time_plan(cfg, model, judge, gpu, None, mfu)


def simulated_config(cfg: Config, settings: SimSettings, work_dir: str | Path) -> Simulated:
    """The simulated twin of `cfg` (scaled by settings.scale); writes the sim editor and the data
    index under work_dir."""
    if settings.time_scale <= 0:
        raise ConfigError(f"--time-scale {settings.time_scale:g} must be > 0")
    original = scaled(cfg, settings.scale, settings.n_items, settings.weak, settings.scale_cpu_services)
    seconds, plan = call_seconds(original, settings.gpu, settings.mfu)
    model_from = original.policy
    from cocoedit.cluster.plan.roles import run_model

    model = run_model(original)
    work = Path(work_dir)
    spec = SimSpec(
        simulates=original.policy.family,
        vae_scale=model.vae_scale,
        latent_channels=model.latent_channels,
        text_tokens=model.text_tokens(model_from.max_sequence_length),
        text_dim=int(model.transformer.get("joint_attention_dim", 4096)),
        forward_s=seconds["forward"],
        backward_s=seconds["backward"],
        decode_s=seconds["decode"],
        encode_s=seconds["encode"],
        time_scale=settings.time_scale,
        lora_rank=4,
        lora_params=_lora_params(original) if settings.count_lora else 0,
        scheduler={"shift": 3.0},
    )
    editor = spec.write(work / "sim-editor")
    rewards = original.rewards
    weights = dict(rewards.weights)
    if "mllm" in weights:  # the judge is simulated; every other service is the real one
        weights["sim_judge"] = weights.pop("mllm")
        mllm = rewards.mllm
        judge = SimJudgeConfig(
            enabled=True,
            scaling=mllm.scaling,
            server=mllm.server,
            seconds_per_edit=seconds["judge"],
            time_scale=settings.time_scale,
        )
        rewards = rewards.with_service("sim_judge", judge).with_service(
            "mllm", dataclasses.replace(mllm, enabled=False)
        )
        rewards = dataclasses.replace(rewards, weights=weights)
    rewards = on_loopback(rewards)  # one machine: the cluster's TLS and token files are not here
    manifest = index_manifest(work / f"data-{original.data.image_size}px", original.data.image_size)
    sim_cfg = dataclasses.replace(
        original,
        policy=dataclasses.replace(original.policy, family="sim", model_path=str(editor), device="cpu"),
        rewards=rewards,
        data=dataclasses.replace(
            original.data, manifest=str(manifest), format="manifest", mask_polarity=None, root=None
        ),
        run=dataclasses.replace(
            original.run,
            name=f"sim-{original.run.name}",
            run_dir=str(work / "run"),
            ray_address=None,
            tiny=False,
            eval_every=0,
            image_every=0,
            pin_cpus=False,
            trackers=(),
        ),
    )
    return Simulated(sim_cfg, original, seconds, plan, settings, spec.lora_params)


def _lora_params(cfg: Config) -> int:
    """Trainable LoRA parameters of the simulated editor, as the plan counts them."""
    from cocoedit.cluster.plan.roles import _lora_count, run_model

    return int(_lora_count(run_model(cfg), cfg.policy))


def index_manifest(out_dir: Path, image_size: int) -> Path:
    """A data index of INDEX_ITEMS distinct item ids whose files cycle through POOL_ITEMS synthetic
    images at image_size px (written once under out_dir); the driver holds the index, workers read."""
    from cocoedit.actors.synth import write_synthetic_dataset

    pool = out_dir / "pool"
    if not (pool / "manifest.jsonl").is_file():
        write_synthetic_dataset(pool, POOL_ITEMS, image_size, seed=0)
    out = out_dir / f"index-{INDEX_ITEMS}.jsonl"
    if not out.is_file():
        lines = [json.loads(line) for line in (pool / "manifest.jsonl").read_text().splitlines()]
        prefix = "pool/"
        rows = []
        for i in range(INDEX_ITEMS):
            row = dict(lines[i % len(lines)], id=f"sim{i:06d}")
            for key in ("source", "mask", "target"):
                if isinstance(row.get(key), str):
                    row[key] = prefix + row[key]
            rows.append(json.dumps(row) + "\n")
        tmp = out.with_suffix(".tmp")
        tmp.write_text("".join(rows))
        tmp.rename(out)
    return out


def nodes_for(cfg: Config, nodes: Optional[int], gpus_per_node: int = 8) -> tuple[int, int]:
    """(nodes, GPUs per node) of the simulated cluster: `nodes` given, else full 8-GPU nodes."""
    from cocoedit.cluster.runtime.placement import demands

    gpus = sum(d.total("GPU") for d in demands(cfg))
    if nodes is None:
        nodes = max(1, math.ceil(gpus / gpus_per_node))
        return nodes, gpus_per_node
    if nodes < 1:
        raise ConfigError(f"--sim-nodes {nodes} must be >= 1")
    return nodes, max(1, math.ceil(gpus / nodes))

"""The roles of a run and what each asks for and holds on one device (`plan`); how each line is
estimated is in this package's docstring (cluster/plan/__init__.py)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.cluster.plan.model import (
    PolicyModel,
    _meta_transformer,
    policy_model,
    transformer_activation_bytes,
    vae_activation_bytes,
)

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

GIB = 2**30
CUDA_CONTEXT_BYTES = 1.0 * GIB  # CUDA context + cuBLAS/cuDNN workspaces of one process (typical)
VLLM_RESERVE_BYTES = 2.0 * GIB  # vLLM's profiled activations + CUDA graphs inside gpu_memory_utilization
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_SAFETENSORS_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "BOOL": 1}

# Qwen2.5-VL-Instruct judges by size: parameters (with vision), layers, KV heads, head dim.
JUDGES = {
    "3B": (3.75e9, 36, 2, 128),
    "7B": (8.29e9, 28, 4, 128),
    "32B": (33.45e9, 64, 8, 128),
    "72B": (73.4e9, 80, 8, 128),
}


@dataclass
class RolePlan:
    """One role: `count` actors asking `cpus` + `gpus` each; memory lines are bytes on one device."""

    role: str
    count: int
    cpus: float
    gpus: float
    params: dict[str, int] = field(default_factory=dict)  # component -> parameters held
    memory: dict[str, float] = field(default_factory=dict)  # line -> bytes (summed into `total`)
    options: dict[str, float] = field(default_factory=dict)  # alternative lines, shown, not summed
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # why it cannot fit (empty: fits or unknown)
    device_bytes: Optional[float] = None  # memory of one device it runs on; None = host / not checked

    @property
    def total(self) -> float:
        return float(sum(self.memory.values()))

    @property
    def fits(self) -> Optional[bool]:
        if self.problems:
            return False
        if self.device_bytes is None:
            return None
        return self.total <= self.device_bytes


def _text_tokens(cfg: Config, model: PolicyModel) -> int:
    return model.text_tokens(cfg.policy.max_sequence_length)


def _per_actor(total: int, actors: int) -> int:
    return max(1, math.ceil(total / max(actors, 1)))


def _weights(params: dict[str, int], dtype: str) -> float:
    return float(sum(params.values()) * DTYPE_BYTES[dtype])


_LORA_COUNTS: dict[str, int] = {}


def _lora_count(model: PolicyModel, policy: Any) -> int:
    """Trainable LoRA parameters (kept per model and LoRA settings: building the meta model takes seconds)."""
    from cocoedit.actors.policies.common import DTYPES

    key = json.dumps(
        [model.family, model.transformer, policy.lora_rank, list(policy.lora_targets)], default=str
    )
    if key not in _LORA_COUNTS:
        transformer = _meta_transformer(model, policy, model.block_counts, DTYPES[policy.dtype])
        _LORA_COUNTS[key] = sum(
            p.numel() for n, p in transformer.named_parameters() if ".default." in n and "lora_" in n
        )
    return _LORA_COUNTS[key]


def _gpu_context(plan: RolePlan) -> None:
    if plan.gpus > 0:
        plan.memory["CUDA context (fixed estimate)"] = CUDA_CONTEXT_BYTES


def role_components(model: PolicyModel, parts: str) -> tuple[str, ...]:
    """The components a policy loaded with `parts` holds ("all", or "transformer" for a learner rank:
    everything but the family's encoding components, as actors.policies loads it)."""
    from cocoedit.actors.policies import family

    if parts == "all":
        return tuple(model.params)
    skip = set(family(model.family).policy_class().ENCODING)
    return tuple(k for k in model.params if k not in skip)


def rollout_plan(cfg: Config, model: PolicyModel, gpu_bytes: Optional[float]) -> RolePlan:
    r, p = cfg.rollout, cfg.policy
    size = cfg.data.image_size
    batch = min(r.batch_size, _per_actor(cfg.data.n_items * cfg.data.group_size, r.num_workers))
    plan = RolePlan("rollout worker", r.num_workers, r.cpus_per_worker, r.gpus_per_worker, dict(model.params))
    lora = _lora_count(model, p)
    plan.memory[f"weights ({p.dtype})"] = _weights(model.params, p.dtype)
    plan.memory["LoRA default + old (float32)"] = 2.0 * lora * 4
    phases = {
        f"sampling, batch {batch}": transformer_activation_bytes(
            model, p, batch, size, _text_tokens(cfg, model), grad=False, checkpointing=False
        ),
        f"VAE decode, batch {batch}": vae_activation_bytes(model, batch, size, p.dtype, decode=True),
        "VAE encode, 1 source": vae_activation_bytes(model, 1, size, p.dtype, decode=False),
    }
    largest = max(phases, key=lambda k: phases[k])
    plan.memory[f"activations: {largest} (largest phase)"] = phases[largest]
    plan.options.update({f"activations: {k}": v for k, v in phases.items() if k != largest})
    plan.notes.append(f"{size}x{size} px, {batch} edits per forward pass; model sizes from {model.source}")
    _gpu_context(plan)
    plan.device_bytes = gpu_bytes if r.gpus_per_worker > 0 else None
    return plan


def learner_plan(
    cfg: Config, model: PolicyModel, gpu_bytes: Optional[float], components: tuple[str, ...]
) -> RolePlan:
    """components: the components a learner rank loads (`role_components(model, "transformer")`)."""
    lr, p = cfg.learner, cfg.policy
    size = cfg.data.image_size
    micro = min(lr.micro_batch_size, _per_actor(cfg.data.n_items * cfg.data.group_size, lr.world_size))
    params = {k: n for k, n in model.params.items() if k in components}
    plan = RolePlan("learner rank", lr.world_size, lr.cpus_per_rank, lr.gpus_per_rank, params)
    lora = _lora_count(model, p)
    ranks = max(lr.world_size, 1)
    plan.memory[f"weights ({p.dtype})"] = _weights(params, p.dtype)
    plan.memory["LoRA default + old (float32)"] = 2.0 * lora * 4
    states = 2 * lora * 4 + (lora * 4 if lr.zero_stage >= 1 else 0)  # AdamW moments (+ master copy)
    grads = lora * 4 if lr.zero_stage >= 2 else 0  # the reduced float32 gradient partition
    shard = ranks if lr.zero_stage >= 1 else 1
    plan.memory[f"optimizer states, ZeRO-{lr.zero_stage} over {ranks} rank(s)"] = (states + grads) / shard
    tokens = _text_tokens(cfg, model)
    with_ckpt = transformer_activation_bytes(model, p, micro, size, tokens, grad=True, checkpointing=True)
    without = transformer_activation_bytes(model, p, micro, size, tokens, grad=True, checkpointing=False)
    chosen, other = (with_ckpt, without) if p.gradient_checkpointing else (without, with_ckpt)
    state = "on" if p.gradient_checkpointing else "off"
    plan.memory[f"activations: forward + backward, micro-batch {micro}, checkpointing {state}"] = chosen
    plan.options[f"activations with gradient checkpointing {'off' if state == 'on' else 'on'}"] = other
    plan.notes.append(f"{size}x{size} px, {_count(lora)} trainable LoRA parameters (rank {p.lora_rank})")
    _gpu_context(plan)
    plan.device_bytes = gpu_bytes if lr.gpus_per_rank > 0 else None
    if plan.device_bytes is not None and plan.total > plan.device_bytes and not p.gradient_checkpointing:
        plan.notes.append("policy.gradient_checkpointing=true would lower the activations (shown below)")
    return plan


def judge_plan(cfg: Config, gpu_bytes: Optional[float]) -> RolePlan:
    j = cfg.rewards.mllm
    plan = RolePlan(
        "reward service mllm replica",
        j.scaling.replicas,
        j.scaling.cpus_per_replica,
        j.scaling.gpus_per_replica,
    )
    size = judge_size(cfg)
    if size is None:
        plan.problems.append(
            f"cannot size the judge: rewards.mllm.model_path={j.model_path!r} is not a local model directory "
            f"and names no known Qwen2.5-VL size ({', '.join(JUDGES)})"
        )
        return plan
    params, layers, kv_heads, head_dim, checkpoint_bytes = size
    width = checkpoint_bytes if j.dtype == "auto" else DTYPE_BYTES[j.dtype]
    tp = max(j.tensor_parallel_size, 1)
    plan.params = {"judge": int(params)}
    per_token = 2 * layers * kv_heads * head_dim * width / tp  # K and V, this GPU's heads
    weights = params * width / tp
    plan.notes.append(f"tensor parallel {tp}: {per_token / 1024:.0f} KiB of KV cache per token per GPU")
    if j.scaling.gpus_per_replica <= 0 or gpu_bytes is None:
        plan.memory[f"weights / {tp} GPU(s)"] = weights
        return plan
    plan.device_bytes = gpu_bytes
    reserved = j.gpu_memory_utilization * gpu_bytes
    kv = reserved - weights - VLLM_RESERVE_BYTES
    plan.memory[f"weights / {tp} GPU(s)"] = weights
    plan.memory["activations + CUDA graphs (vLLM reserve, fixed estimate)"] = VLLM_RESERVE_BYTES
    plan.memory[f"KV cache (gpu_memory_utilization {j.gpu_memory_utilization:g} leaves)"] = max(kv, 0.0)
    plan.memory["CUDA context (fixed estimate)"] = CUDA_CONTEXT_BYTES
    tokens = kv / per_token if kv > 0 else 0.0
    plan.notes.append(f"KV cache holds {tokens:,.0f} tokens (max_model_len {j.max_model_len})")
    if j.scaling.gpus_per_replica < tp:
        plan.problems.append(
            f"tensor_parallel_size={tp} needs {tp} GPUs per replica but gpus_per_replica={j.scaling.gpus_per_replica:g}"
        )
    if tokens < j.max_model_len:
        plan.problems.append(
            f"the KV cache left by gpu_memory_utilization={j.gpu_memory_utilization:g} holds {tokens:,.0f} "
            f"tokens, fewer than max_model_len={j.max_model_len}: raise tensor_parallel_size (and "
            "scaling.gpus_per_replica) or gpu_memory_utilization, or use a smaller judge"
        )
    return plan


def judge_size(cfg: Config) -> Optional[tuple[float, int, int, int, int]]:
    """(parameters, layers, KV heads, head dim, bytes per weight) of the run's judge; None: unknown."""
    j = cfg.rewards.mllm
    return _judge_size(j.model_path or (j.tiny_judge_dir if cfg.run.tiny else None))


def _judge_size(model_path: Optional[str]) -> Optional[tuple[float, int, int, int, int]]:
    """(parameters, layers, KV heads, head dim, bytes per weight) of the judge, from its local
    directory or from the size in its name."""
    import re

    if model_path is None:
        return None
    path = Path(model_path).expanduser()
    if (path / "config.json").is_file():
        config = json.loads((path / "config.json").read_text())
        text = config.get("text_config", config)
        heads = text["num_attention_heads"]
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        params, width = 0, 2
        from cocoedit.actors.policies.builders import safetensors_shapes

        for shape, dtype in safetensors_shapes(path).values():
            params += math.prod(shape)
            width = _SAFETENSORS_BYTES.get(dtype, width)
        return params, text["num_hidden_layers"], text.get("num_key_value_heads", heads), head_dim, width
    found = re.search(r"(\d+)B", path.name)
    if found and f"{found.group(1)}B" in JUDGES:
        return (*JUDGES[f"{found.group(1)}B"], 2)
    return None


def service_plan(cfg: Config, name: str) -> RolePlan:
    section = cfg.rewards.service(name)
    plan = RolePlan(
        f"reward service {name} replica",
        section.scaling.replicas,
        section.scaling.cpus_per_replica,
        section.scaling.gpus_per_replica,
    )
    plan.notes.append(f"scores on {getattr(section, 'device', 'cpu')}; no model weights")
    return plan


def run_model(cfg: Config) -> PolicyModel:
    """The editor `cfg` runs: policy.model_path, else (tiny mode) the tiny editor of cfg.pretrain's
    sizes, else the family's published architecture."""
    tiny = None
    if cfg.policy.model_path is None and cfg.run.tiny:  # the run builds the tiny editor of cfg.pretrain
        import inspect

        from cocoedit.actors.policies.builders import tiny_spec

        sizes = set(inspect.signature(tiny_spec).parameters) - {"family"}
        tiny = {k: v for k, v in dataclasses.asdict(cfg.pretrain).items() if k in sizes}
    return policy_model(cfg.policy.family, cfg.policy.model_path, tiny)


def plan(cfg: Config, gpu_memory_gib: Optional[float] = None) -> list[RolePlan]:
    """Every role of `cfg` with its asks and estimated memory on a GPU of `gpu_memory_gib` GiB (None:
    estimates only, no verdict)."""
    gpu_bytes = gpu_memory_gib * GIB if gpu_memory_gib else None
    model = run_model(cfg)
    roles = [rollout_plan(cfg, model, gpu_bytes)]
    # a learner rank never encodes or decodes: learner.Learner loads load_policy(parts="transformer")
    roles.append(learner_plan(cfg, model, gpu_bytes, role_components(model, "transformer")))
    if cfg.run.colocate:
        worker, rank = roles
        pair = RolePlan(
            "colocated rollout worker + learner rank",
            rank.count,
            worker.cpus + rank.cpus,
            worker.gpus + rank.gpus,
            notes=["run.colocate: both on one GPU (one CUDA context each)"],
            device_bytes=gpu_bytes if worker.gpus + rank.gpus > 0 else None,
        )
        pair.memory = {"rollout worker": worker.total, "learner rank": rank.total}
        worker.device_bytes = rank.device_bytes = None  # judged together
        roles.append(pair)
    for name in cfg.rewards.weights:
        if name in cfg.rewards.addresses:
            continue
        roles.append(judge_plan(cfg, gpu_bytes) if name == "mllm" else service_plan(cfg, name))
    return roles


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"

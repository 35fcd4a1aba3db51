"""`cocoedit plan`: what every role of a run asks for and how much device memory it will hold.

    cocoedit plan --config cluster/configs/flux_kontext_8gpu.yaml --gpu-memory 80

Per role (rollout worker, learner rank, each reward service's replicas): the devices it asks for, the
parameters it holds, and an estimate of its peak memory on one device; exits 1 naming any GPU role
that does not fit `--gpu-memory` GiB. How each line is estimated:
- weights: the parameters of every component the role loads x the bytes of `policy.dtype`, counted
  from the safetensors headers of `policy.model_path` when it is a local directory, else from the
  family's published architecture built on PyTorch's meta device (actors/policies/builders.py);
- LoRA + optimizer (learner): both adapters in float32 (actors.policies.lora), AdamW's two float32 moments and
  DeepSpeed's float32 master copy (ZeRO >= 1), divided over the ranks as the ZeRO stage partitions
  them (stage 1: optimizer states, stage 2: + the reduced gradients);
- activations: simulated, not guessed. The role's computation runs on the meta device (shapes only,
  no arithmetic) while every tensor an operation creates is counted for as long as it is alive:
  the transformer sampling a rollout batch and the VAE decoding it (rollout worker), the transformer's
  forward + backward through the LoRA at the learner's micro-batch with and without gradient
  checkpointing (learner). Attention is counted as a memory-efficient kernel holds it (output and
  log-sum-exp, no score matrix). The transformer is simulated with 1-2 blocks and extrapolated per
  block; without gradients the peak does not grow with depth;
- the judge (vLLM): its weights / tensor_parallel_size per GPU, and the KV cache that
  `gpu_memory_utilization` leaves after them and a fixed reserve for activations and CUDA graphs, in
  tokens against `max_model_len`;
- a fixed CUDA context per GPU process.
Not counted: allocator fragmentation, text-encoder activations (one prompt at a time: tens of MB),
and the float32 norm outputs CUDA autocast adds. On CPU (GPU ask 0) the same estimate is host memory
on top of the process's libraries; bench/real_dims.py compares it with measured peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    import torch

    from cocoedit.cluster.config import Config

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------------------------------
# simulated peak memory on the meta device


class _LiveBytes:
    """Counts the bytes of tensor storages created by operations while they are alive; `peak` is the
    largest sum seen. Views and in-place results (storage of an input) are not new memory."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                tracker.sweep()
                out = func(*args, **(kwargs or {}))
                tracker._record(args, kwargs, out)
                return out

        self.mode = Mode()
        self.live: dict[Any, int] = {}
        self.current = 0
        self.peak = 0

    def sweep(self) -> None:
        """Forget storages that died since the last operation (before its outputs are recorded, so a
        new storage at a reused address is never mistaken for the dead one)."""
        dead = [key for key in self.live if key.expired()]
        for key in dead:
            self.current -= self.live.pop(key)

    def _record(self, args: Any, kwargs: Any, out: Any) -> None:
        import torch
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_leaves

        inputs = {
            StorageWeakRef(t.untyped_storage())
            for t in tree_leaves((args, kwargs))
            if isinstance(t, torch.Tensor)
        }
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                key = StorageWeakRef(t.untyped_storage())
                if key not in self.live and key not in inputs:
                    n = t.untyped_storage().nbytes()
                    self.live[key] = n
                    self.current += n
        self.peak = max(self.peak, self.current)


@contextlib.contextmanager
def _memory_efficient_attention() -> Iterator[None]:
    """scaled_dot_product_attention as a memory-efficient kernel holds it: the output, and for
    backward q, k, v, output and the float32 log-sum-exp [B, heads, Lq]; no [Lq, Lk] score matrix."""
    import torch
    import torch.nn.functional as F

    class Attention(torch.autograd.Function):
        @staticmethod
        def forward(ctx, q, k, v):
            out = q.new_empty((*q.shape[:-1], v.shape[-1]))
            lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
            ctx.save_for_backward(q, k, v, out, lse)
            return out

        @staticmethod
        def backward(ctx, grad):
            q, k, v, _, _ = ctx.saved_tensors
            return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)

    def attention(query, key, value, *args, **kwargs):
        return Attention.apply(query, key, value)

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def simulated_peak(step: Callable[[], Any]) -> int:
    """Peak bytes of the tensors `step()` creates (run on meta tensors: shapes only)."""
    tracker = _LiveBytes()
    with _memory_efficient_attention(), tracker.mode:
        step()
    return tracker.peak


SIMULATOR_VERSION = 2  # bump when what a simulation counts changes: cached results are then recomputed
_SIMULATED: dict[str, float] = {}


def _once(key: Any, simulate: Callable[[], float]) -> float:
    """simulate() once per question and library versions: kept in this process and on disk under
    $COCOEDIT_CACHE/plan (a simulation takes seconds; every run prints a plan)."""
    import hashlib

    import diffusers
    import torch

    from cocoedit.cluster.runtime.launch import cache_dir

    text = json.dumps(
        [SIMULATOR_VERSION, torch.__version__, diffusers.__version__, key], sort_keys=True, default=str
    )
    if text not in _SIMULATED:
        path = cache_dir() / "plan" / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"
        if path.is_file():
            _SIMULATED[text] = float(json.loads(path.read_text())["bytes"])
        else:
            _SIMULATED[text] = float(simulate())
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": json.loads(text), "bytes": _SIMULATED[text]}))
            tmp.replace(path)  # atomic: concurrent runs never read half a file
    return _SIMULATED[text]


# ----------------------------------------------------------------------------------------------------
# the policy's model


@dataclass(frozen=True)
class PolicyModel:
    """What the estimate needs of the editor: parameters per component and the configs of the
    transformer and VAE (to rebuild them on the meta device)."""

    family: str
    params: dict[str, int]
    transformer: dict[str, Any]
    vae: dict[str, Any]
    source: str  # where the sizes come from, for the report

    @property
    def vae_scale(self) -> int:
        if "temperal_downsample" in self.vae:
            return 2 ** len(self.vae["temperal_downsample"])
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.get("z_dim", self.vae.get("latent_channels", 16)))


def policy_model(
    family: str, model_path: Optional[str], tiny: Optional[dict[str, int]] = None
) -> PolicyModel:
    """Sizes of the editor at model_path (a local diffusers directory), else of the tiny editor of
    `tiny` sizes (tiny_spec kwargs), else of the family's published architecture (text-encoder
    vocabularies included)."""
    from cocoedit.actors.policies.builders import parameter_counts

    path = Path(model_path).expanduser() if model_path else None
    if path is not None and (path / "model_index.json").is_file():
        return PolicyModel(
            family,
            parameter_counts(path),
            _config_json(path / "transformer" / "config.json"),
            _config_json(path / "vae" / "config.json"),
            str(path),
        )
    import torch

    from cocoedit.actors.policies.builders import assemble, real_spec, tiny_spec

    spec = tiny_spec(family, **tiny) if tiny is not None else real_spec(family, depth=None, real_vocab=True)
    with _meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = assemble(spec)
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    if tiny is not None:
        return PolicyModel(family, params, spec.transformer, spec.vae, "the tiny editor (pretrain sizes)")
    where = f"{model_path} is not a local directory here" if model_path else "no policy.model_path"
    return PolicyModel(family, params, spec.transformer, spec.vae, f"published architecture ({where})")


@contextlib.contextmanager
def _meta() -> Iterator[None]:
    """Modules built here live on the meta device, uninitialised (on meta, init is shapes-only work)."""
    import torch
    from diffusers.models.modeling_utils import no_init_weights

    with torch.device("meta"), no_init_weights():
        yield


def _config_json(path: Path) -> dict[str, Any]:
    config = json.loads(path.read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _classes(family: str) -> tuple[type, type]:
    from diffusers import (
        AutoencoderKL,
        AutoencoderKLQwenImage,
        FluxTransformer2DModel,
        QwenImageTransformer2DModel,
    )

    if family == "flux_kontext":
        return FluxTransformer2DModel, AutoencoderKL
    return QwenImageTransformer2DModel, AutoencoderKLQwenImage


def _block_keys(family: str) -> tuple[str, ...]:
    return ("num_layers", "num_single_layers") if family == "flux_kontext" else ("num_layers",)


def _meta_transformer(model: PolicyModel, policy: Any, blocks: dict[str, int], dtype: torch.dtype) -> Any:
    """The transformer with `blocks` overriding its block counts, on the meta device, with the
    policy's LoRA adapters `default` (trainable) and `old`, all in `dtype`: activations are simulated in
    the policy's dtype throughout, as autocast computes them (float32 LoRA masters are counted apart)."""
    import torch
    from peft import LoraConfig

    from cocoedit.actors.policies.lora import lora_target_modules, set_active_adapter

    transformer_cls, _ = _classes(model.family)
    with _meta():
        transformer = transformer_cls(**{**model.transformer, **blocks})
    torch.nn.Module.to(transformer, dtype)  # diffusers' own .to() logs a warning for every cast
    transformer.requires_grad_(False)
    lora = LoraConfig(
        r=policy.lora_rank,
        lora_alpha=policy.lora_alpha,
        target_modules=lora_target_modules(transformer, tuple(policy.lora_targets)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer.add_adapter(lora, adapter_name="default")
        transformer.add_adapter(lora, adapter_name="old")
    torch.nn.Module.to(transformer, dtype)
    set_active_adapter(transformer, "default")
    return transformer


def _transformer_inputs(
    model: PolicyModel, batch: int, size: int, text_tokens: int, dtype: torch.dtype
) -> dict[str, Any]:
    """Meta inputs of one velocity call as the policy builds them (target + source image tokens)."""
    import torch

    side = size // model.vae_scale // 2
    length = side * side
    cfg = model.transformer
    hidden = torch.empty(batch, 2 * length, cfg["in_channels"], device="meta", dtype=dtype)
    text = torch.empty(batch, text_tokens, cfg["joint_attention_dim"], device="meta", dtype=dtype)
    timestep = torch.empty(batch, device="meta", dtype=dtype)
    if model.family == "flux_kontext":
        return dict(
            hidden_states=hidden,
            encoder_hidden_states=text,
            pooled_projections=torch.empty(batch, cfg["pooled_projection_dim"], device="meta", dtype=dtype),
            timestep=timestep,
            guidance=torch.empty(batch, device="meta") if cfg.get("guidance_embeds") else None,
            txt_ids=torch.empty(text_tokens, 3, device="meta", dtype=dtype),
            img_ids=torch.empty(2 * length, 3, device="meta", dtype=dtype),
            return_dict=False,
        )
    return dict(
        hidden_states=hidden,
        encoder_hidden_states=text,
        encoder_hidden_states_mask=None,
        timestep=timestep,
        img_shapes=[[(1, side, side), (1, side, side)]] * batch,
        return_dict=False,
    )


def transformer_activation_bytes(
    model: PolicyModel,
    policy: Any,
    batch: int,
    size: int,
    text_tokens: int,
    grad: bool,
    checkpointing: bool,
) -> float:
    """Peak activation bytes of one velocity call (grad: forward + backward of a loss on its output,
    LoRA gradients included), extrapolated from 1-2 simulated blocks to the model's block counts."""
    import torch

    from cocoedit.actors.policies.common import DTYPES

    dtype = DTYPES[policy.dtype]
    counts = {k: int(model.transformer[k]) for k in _block_keys(model.family)}
    base = {k: min(n, 1) for k, n in counts.items()}
    lora = (policy.lora_rank, policy.lora_alpha, tuple(policy.lora_targets), policy.dtype)
    key = [
        "transformer",
        model.family,
        model.transformer,
        lora,
        batch,
        size,
        text_tokens,
        grad,
        checkpointing,
    ]

    def peak(blocks: dict[str, int]) -> float:
        return _once([*key, blocks], lambda: _transformer_peak(blocks))

    def _transformer_peak(blocks: dict[str, int]) -> int:
        transformer = _meta_transformer(model, policy, blocks, dtype)
        if grad and checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train(grad)
        inputs = _transformer_inputs(model, batch, size, text_tokens, dtype)

        def step() -> None:
            with torch.set_grad_enabled(grad):
                out = transformer(**inputs)[0]
                if grad:
                    out.float().square().mean().backward()

        return simulated_peak(step)

    first = peak(base)
    if not grad:  # each block's activations are freed before the next one runs
        return float(first)
    total = float(first)
    for k, n in counts.items():
        if n > base[k]:
            total += (n - base[k]) * (peak({**base, k: base[k] + 1}) - first)
    return total


def vae_activation_bytes(model: PolicyModel, batch: int, size: int, dtype_name: str, decode: bool) -> float:
    """Peak activation bytes of the VAE decoding (or encoding) `batch` images of size x size."""
    from cocoedit.actors.policies.common import DTYPES

    key = ["vae", model.family, model.vae, batch, size, dtype_name, decode]
    return _once(key, lambda: _vae_peak(model, batch, size, DTYPES[dtype_name], decode))


def _vae_peak(model: PolicyModel, batch: int, size: int, dtype: torch.dtype, decode: bool) -> float:
    import torch

    _, vae_cls = _classes(model.family)
    with _meta():
        vae = vae_cls(**model.vae).eval()
    torch.nn.Module.to(vae, dtype)
    side = size // model.vae_scale
    video = model.family != "flux_kontext"  # Qwen-Image's VAE works on [N, C, frames, H, W]
    frames = (1,) if video else ()
    if decode:
        x = torch.empty(batch, model.latent_channels, *frames, side, side, device="meta", dtype=dtype)
    else:
        x = torch.empty(batch, 3, *frames, size, size, device="meta", dtype=dtype)

    def step() -> None:
        with torch.no_grad():
            vae.decode(x) if decode else vae.encode(x)

    return float(simulated_peak(step))


# ----------------------------------------------------------------------------------------------------
# roles


def _text_tokens(cfg: Config, model: PolicyModel) -> int:
    # FLUX pads T5 tokens to max_sequence_length (the tokenizer allows 512); Qwen trims the padding to
    # the longest prompt, which max_sequence_length bounds.
    return (
        min(cfg.policy.max_sequence_length, 512)
        if model.family == "flux_kontext"
        else cfg.policy.max_sequence_length
    )


def _per_actor(total: int, actors: int) -> int:
    return max(1, math.ceil(total / max(actors, 1)))


def _weights(params: dict[str, int], dtype: str) -> float:
    return float(sum(params.values()) * DTYPE_BYTES[dtype])


def _lora_count(model: PolicyModel, policy: Any) -> int:

    from cocoedit.actors.policies.common import DTYPES

    blocks = {k: int(model.transformer[k]) for k in _block_keys(model.family)}
    transformer = _meta_transformer(model, policy, blocks, DTYPES[policy.dtype])
    return sum(p.numel() for n, p in transformer.named_parameters() if ".default." in n and "lora_" in n)


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
    size = _judge_size(j.model_path or (j.tiny_judge_dir if cfg.run.tiny else None))
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


def plan(cfg: Config, gpu_memory_gib: Optional[float] = None) -> list[RolePlan]:
    """Every role of `cfg` with its asks and estimated memory on a GPU of `gpu_memory_gib` GiB (None:
    estimates only, no verdict)."""
    gpu_bytes = gpu_memory_gib * GIB if gpu_memory_gib else None
    tiny = None
    if cfg.policy.model_path is None and cfg.run.tiny:  # the run builds the tiny editor of cfg.pretrain
        import inspect

        from cocoedit.actors.policies.builders import tiny_spec

        sizes = set(inspect.signature(tiny_spec).parameters) - {"family"}
        tiny = {k: v for k, v in dataclasses.asdict(cfg.pretrain).items() if k in sizes}
    model = policy_model(cfg.policy.family, cfg.policy.model_path, tiny)
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


# ----------------------------------------------------------------------------------------------------
# report


def _gib(n: float) -> str:
    return f"{n / GIB:7.2f} GiB" if n >= 0.1 * GIB else f"{n / 2**20:7.1f} MiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"


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
    log.info("memory plan (cocoedit plan, cluster/plan.py):\n%s", format_plan(cfg, roles, gpu))
    for role in failing(roles):
        log.warning(
            "%s may not fit: %s", role.role, "; ".join(role.problems) or f"{role.total / GIB:.1f} GiB"
        )


def cli_plan(args: argparse.Namespace, cfg: Config) -> int:
    """`cocoedit plan --config FILE [--gpu-memory GiB] [key=value ...]`: print the plan; exit 1 naming
    every role that cannot fit."""
    roles = plan(cfg, args.gpu_memory)
    print(format_plan(cfg, roles, args.gpu_memory))
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

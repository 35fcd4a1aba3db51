"""The work of one epoch per role, in FLOPs (and the pixel service's CPU seconds), for the time plan.

Counted, not guessed, where the model is ours: the transformer's velocity call and the VAE run on the
meta device under PyTorch's FlopCounterMode (matmuls, convolutions and attention, forward and the
backward autograd actually runs: with frozen base weights only input gradients plus the LoRA's weight
gradients; under gradient checkpointing the recomputed forward too), one edit at a time (FLOPs are
linear in the batch), 1-2 transformer blocks extrapolated per block (blocks are identical: exact).
Estimated where it is not: the text encoders as 2 x parameters x tokens, the judge's prefill as
2 x parameters x tokens of its vision tower and language model (attention, < 2% at these lengths,
left out) and its decode as memory-bound reads of its weights.

Per epoch of E = data.n_items x data.group_size edits in G = data.n_items groups:
- rollout: E x rollout.num_steps transformer forwards (the `old` LoRA active), E VAE decodes, G VAE
  encodes of the source and G text encodings (a condition per group);
- learner: E x learner.train_timesteps x (the forward + backward of `default`, plus the no-grad
  forwards of the objective: NFT's `old`, and `ref` when kl_weight > 0; GRPO's `ref` when
  grpo_kl_beta > 0);
- judge (rewards.mllm): E requests of two images at rewards.mllm.image_size and the prompt; logits
  mode reads the score from the first token (no decode step), text mode decodes up to max_tokens;
- pixel service: E edits at CPU seconds per megapixel (PIXEL_CPU_S_PER_MPX).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.cluster.plan.model import PolicyModel, _meta, _meta_transformer, _transformer_inputs
from cocoedit.cluster.plan.simulate import once

if TYPE_CHECKING:
    from cocoedit.cluster.config import Config

JudgeSize = tuple[float, int, int, int, int]  # parameters, layers, KV heads, head dim, bytes per weight

# Qwen2.5-VL's vision tower (all sizes): 32 blocks 1280 wide, SwiGLU 3420, 14 px patches merged 2x2
# into one language token; parameters 32 x (4 x 1280^2 + 3 x 1280 x 3420) + the merger (~44 M).
JUDGE_VISION_PARAMS = 32 * (4 * 1280**2 + 3 * 1280 * 3420) + 44_000_000
JUDGE_PROMPT_TOKENS = 160  # system text, two labels and the request of rewards/judge.py (estimate)
VLLM_MAX_NUM_SEQS = 256  # vLLM's default batch of sequences decoded together
# The pixel service's CPU seconds per edit megapixel (decode, validate, score, reply): bench/pixel_service.py
# (c), server process, 31.9 CPU ms per 512x512 edit (16 edits, 2 scoring threads, load average 34 on
# 2 cores, 2026-12-06; an upper bound: a quiet machine needs less).
PIXEL_CPU_S_PER_MPX = 0.12


@dataclass
class RoleWork:
    """One role's work per epoch: FLOPs by line (summed into `flops`), weight bytes read by memory-bound
    decode steps, CPU seconds."""

    role: str
    gpus: float  # GPUs of the whole role (actors x GPUs each)
    lines: dict[str, float] = field(default_factory=dict)  # line -> FLOPs per epoch
    read_bytes: float = 0.0  # bytes read from GPU memory by decode steps, per epoch
    cpu_s: float = 0.0  # CPU seconds per epoch (the pixel service)
    cpus: float = 0.0  # CPUs of the whole role
    notes: list[str] = field(default_factory=list)

    @property
    def flops(self) -> float:
        return float(sum(self.lines.values()))


def flops_text(n: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n / 1e6:.2f} MFLOP"


def counted_flops(step: Callable[[], Any]) -> float:
    """FLOPs of `step()` (meta tensors: shapes only) as FlopCounterMode counts them, attention as its
    math (two batched matmuls forward, four backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with _math_attention(), FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


@contextlib.contextmanager
def _math_attention() -> Iterator[None]:
    import torch.nn.functional as F

    def attention(
        query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ):
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            repeat = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(repeat, -3), value.repeat_interleave(repeat, -3)
        scores = query @ key.transpose(-2, -1)
        if attn_mask is not None:
            scores = scores + attn_mask if attn_mask.dtype != bool else scores.masked_fill(~attn_mask, 0)
        return scores.softmax(-1) @ value

    original = F.scaled_dot_product_attention
    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def transformer_flops(
    model: PolicyModel, policy: Any, size: int, text_tokens: int, grad: bool, checkpointing: bool
) -> float:
    """FLOPs of one velocity call for one edit at size x size px: the forward (grad False) or the
    forward + backward of a loss on its output through the LoRA (recomputation under checkpointing)."""
    import torch

    from cocoedit.actors.policies.common import DTYPES

    counts = model.block_counts
    base = {k: min(n, 1) for k, n in counts.items()}
    lora = (policy.lora_rank, tuple(policy.lora_targets))
    key = [
        "flops",
        "transformer",
        model.family,
        model.transformer,
        lora,
        size,
        text_tokens,
        grad,
        checkpointing,
    ]

    def count(blocks: dict[str, int]) -> float:
        def run() -> float:
            transformer = _meta_transformer(model, policy, blocks, DTYPES[policy.dtype])
            if grad and checkpointing:
                transformer.enable_gradient_checkpointing()
            transformer.train(grad)
            inputs = _transformer_inputs(model, 1, size, text_tokens, DTYPES[policy.dtype])

            def step() -> None:
                with torch.set_grad_enabled(grad):
                    out = transformer(**inputs)[0]
                    if grad:
                        out.float().square().mean().backward()

            return counted_flops(step)

        return once([*key, blocks], run)

    first = count(base)
    total = first
    for k, n in counts.items():
        if n > base[k]:
            total += (n - base[k]) * (count({**base, k: base[k] + 1}) - first)
    return total


def vae_flops(model: PolicyModel, size: int, decode: bool) -> float:
    """FLOPs of the VAE decoding (or encoding) one size x size image."""

    def run() -> float:
        import torch

        with _meta():
            vae = model.architecture.vae_class()(**model.vae).eval()
        side = size // model.vae_scale
        frames = (1,) if model.architecture.vae_frames else ()
        if decode:
            x = torch.empty(1, model.latent_channels, *frames, side, side, device="meta")
        else:
            x = torch.empty(1, 3, *frames, size, size, device="meta")

        def step() -> None:
            with torch.no_grad():
                vae.decode(x) if decode else vae.encode(x)

        return counted_flops(step)

    return once(["flops", "vae", model.family, model.vae, size, decode], run)


def _text_flops(model: PolicyModel, cfg: Config) -> float:
    """2 x parameters x tokens of the text encoder(s) for one instruction (+ the source image's tokens
    where the encoder sees it)."""
    params = sum(n for k, n in model.params.items() if k.startswith("text_encoder"))
    tokens = model.text_tokens(cfg.policy.max_sequence_length)
    return 2.0 * params * tokens


def _no_grad_forwards(cfg: Config) -> int:
    """Forwards without gradient per trained timestep besides the one with (objective's old/ref)."""
    lr = cfg.learner
    if lr.objective == "grpo":
        return int(lr.grpo_kl_beta > 0)
    return 1 + int(lr.kl_weight > 0)


def rollout_work(cfg: Config, model: PolicyModel) -> RoleWork:
    r, p = cfg.rollout, cfg.policy
    size, edits, groups = cfg.data.image_size, cfg.data.n_items * cfg.data.group_size, cfg.data.n_items
    work = RoleWork("rollout", r.num_workers * r.gpus_per_worker)
    tokens = model.text_tokens(p.max_sequence_length)
    forward = transformer_flops(model, p, size, tokens, grad=False, checkpointing=False)
    work.lines[f"transformer: {edits} edits x {r.num_steps} steps"] = edits * r.num_steps * forward
    work.lines[f"VAE decode: {edits} edits"] = edits * vae_flops(model, size, decode=True)
    work.lines[f"VAE encode: {groups} sources"] = groups * vae_flops(model, size, decode=False)
    work.lines[f"text encoders: {groups} instructions (2 x params x tokens)"] = groups * _text_flops(
        model, cfg
    )
    work.notes.append(
        f"one transformer forward: {flops_text(forward)} per edit at {size} px, {tokens} text tokens"
    )
    return work


def learner_work(cfg: Config, model: PolicyModel) -> RoleWork:
    lr, p = cfg.learner, cfg.policy
    size, edits = cfg.data.image_size, cfg.data.n_items * cfg.data.group_size
    work = RoleWork("learner", lr.world_size * lr.gpus_per_rank)
    tokens = model.text_tokens(p.max_sequence_length)
    trained = edits * lr.train_timesteps
    both = transformer_flops(model, p, size, tokens, grad=True, checkpointing=p.gradient_checkpointing)
    forward = transformer_flops(model, p, size, tokens, grad=False, checkpointing=False)
    ckpt = "with" if p.gradient_checkpointing else "without"
    work.lines[f"forward + backward ({ckpt} recomputation): {trained} edit-timesteps"] = trained * both
    extra = _no_grad_forwards(cfg)
    if extra:
        work.lines[f"no-grad forwards (old/ref): {trained} x {extra}"] = trained * extra * forward
    work.notes.append(f"forward + backward / forward = {both / forward:.2f}")
    return work


def judge_work(cfg: Config, judge_size: Optional[JudgeSize]) -> Optional[RoleWork]:
    """None when the judge's size is unknown (judge_plan names the problem)."""
    j = cfg.rewards.mllm
    if judge_size is None:
        return None
    params, _, _, _, width = judge_size
    edits = cfg.data.n_items * cfg.data.group_size
    work = RoleWork("judge", j.scaling.replicas * j.scaling.gpus_per_replica)
    side = max(1, round(j.image_size / 28))
    image_tokens = side * side  # language tokens per image after the 2x2 merge
    patches = 4 * image_tokens
    vision = min(JUDGE_VISION_PARAMS, params / 2)  # the tiny judge's tower is far smaller
    language = params - vision
    tokens = j.images_per_prompt * image_tokens + JUDGE_PROMPT_TOKENS
    work.lines[f"vision tower: {edits} x {j.images_per_prompt} images of {patches} patches"] = (
        edits * j.images_per_prompt * 2.0 * vision * patches
    )
    work.lines[f"prefill: {edits} x {tokens} tokens"] = edits * 2.0 * language * tokens
    decode_tokens = 0 if j.score_mode == "logits" else j.max_tokens - 1
    if decode_tokens:
        replicas = max(j.scaling.replicas, 1)
        steps = decode_tokens * math.ceil(edits / replicas / VLLM_MAX_NUM_SEQS) * replicas
        work.read_bytes = steps * params * (width if j.dtype == "auto" else 2)
        work.notes.append(f"decode: {decode_tokens} tokens per edit, {VLLM_MAX_NUM_SEQS} sequences per step")
    return work


def pixel_work(cfg: Config) -> RoleWork:
    section = cfg.rewards.service("pixel")
    s = section.scaling
    edits = cfg.data.n_items * cfg.data.group_size
    work = RoleWork("pixel service", s.replicas * s.gpus_per_replica, cpus=s.replicas * s.cpus_per_replica)
    work.cpu_s = edits * PIXEL_CPU_S_PER_MPX * cfg.data.image_size**2 / 1e6
    return work

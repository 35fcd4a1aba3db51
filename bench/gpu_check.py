"""GPU check: the full-depth FLUX.1-Kontext-dev transformer (published widths, random bf16 weights, the
policy's LoRA) through the two GPU roles, timed and measured against `cocoedit plan`.

    python bench/gpu_check.py                                   # on a CUDA device: under 10 minutes
    python bench/gpu_check.py --depth 1 --device cpu --size 64  # smoke run of this script on CPU

1. rollout: one group of 12 edits at 512x512 px, 10 dpm2 steps with the `old` adapter, through
   FluxKontextPolicy.velocity and actors.samplers.sample (the rollout worker's code; the text encoders
   and VAE are left out: the condition is random, of the real shapes);
2. learner: Learner.update on one micro-batch of 4 edits, 1 training timestep, gradient checkpointing,
   ZeRO-2 on one rank: forwards with `old` and `ref`, forward + backward with `default`, the regularizer,
   one optimizer step, the soft update of `old`.
For each: seconds per step, peak device memory (torch.cuda.max_memory_allocated) against the plan's
estimate of the same parts (transformer weights, LoRA, optimizer states, simulated activations), and
MFU: the matmul FLOPs the step needs (frozen base: backward computes input gradients only; the
recomputation of gradient checkpointing not counted) per second over the device's dense bf16 peak.
On CPU the defaults shrink to a smoke run (group 2, 1 step, micro-batch 1, 32 text tokens, float32, no
warm-up); its numbers only show that the script works.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Dense bf16 peak TFLOP/s by device name (first match wins).
PEAK_BF16_TFLOPS = (
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("A10", 125.0),
)
GIB = 2**30


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tf for key, tf in PEAK_BF16_TFLOPS if key in name), None)


def build_transformer(depth: int | None, device: torch.device, dtype: torch.dtype) -> Any:
    """The FLUX.1-Kontext-dev transformer with `depth` dual + `depth` single blocks (None: 19 + 38),
    random N(0, 0.02) weights, made directly on `device` (no float32 copy on the host)."""
    from diffusers import FluxTransformer2DModel

    from cocoedit.actors.policies.builders import real_spec

    with torch.device("meta"):
        model = FluxTransformer2DModel(**real_spec("flux_kontext", depth).transformer)
    torch.nn.Module.to(model, dtype)  # on meta: the device never holds a float32 copy
    model = model.to_empty(device=device)
    g = torch.Generator(device).manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def flux_policy(transformer: Any, args: argparse.Namespace) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline

    from cocoedit.actors.config import PolicyConfig
    from cocoedit.actors.policies.flux_kontext import FLUX_SCHEDULER, FluxKontextPolicy

    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer,
    )
    cfg = PolicyConfig(
        family="flux_kontext",
        dtype=args.dtype,
        device=str(args.device),
        max_sequence_length=args.text_len,
        gradient_checkpointing=True,
    )
    return FluxKontextPolicy(cfg, pipe=pipe)


def condition(policy: Any, n: int, size: int, text_len: int) -> Any:
    """A random Condition of the real shapes: T5 [n, text_len, 4096], CLIP pooled [n, 768], source latents."""
    from cocoedit.actors.policies.flux_kontext import BATCHED
    from cocoedit.actors.types import Condition

    dev, dt = policy.device, policy.dtype
    length, dim = policy.latent_shape(size, size)
    grid = size // policy.vae_scale_factor // 2
    ids = policy.pipe._prepare_latent_image_ids(1, grid, grid, dev, dt)
    image_ids = ids.clone()
    image_ids[..., 0] = 1
    g = torch.Generator(dev).manual_seed(1)
    return Condition(
        {
            "prompt_embeds": torch.randn(n, text_len, 4096, generator=g, device=dev, dtype=dt),
            "pooled_prompt_embeds": torch.randn(n, 768, generator=g, device=dev, dtype=dt),
            "text_ids": torch.zeros(text_len, 3, device=dev, dtype=dt),
            "image_latents": torch.randn(n, length, dim, generator=g, device=dev, dtype=dt),
            "image_ids": image_ids,
            "latent_ids": ids,
            "guidance": torch.full((n,), 2.5, device=dev),
        },
        BATCHED,
    )


def forward_flops(policy: Any, size: int, text_len: int) -> float:
    """Matmul FLOPs of one velocity call for one edit: Linear layers + attention (QK^T and AV)."""
    from bench.learner_update import linear_flops

    length, _ = policy.latent_shape(size, size)
    cfg = policy.transformer.config
    seq = 2 * length + text_len
    layers = cfg.num_layers + cfg.num_single_layers
    width = cfg.num_attention_heads * cfg.attention_head_dim
    return float(linear_flops(policy.transformer, 2 * length, text_len) + 4 * seq * seq * width * layers)


class Device:
    """Synchronisation and peak memory of the device (CUDA allocator; on CPU: not measured)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> float | None:
        return float(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else None


def plan_model(policy: Any) -> Any:
    from cocoedit.actors.policies.builders import real_spec
    from cocoedit.cluster.plan import PolicyModel

    spec = real_spec("flux_kontext")
    config = {k: v for k, v in policy.transformer.config.items() if not k.startswith("_")}
    base = sum(p.numel() for n, p in policy.transformer.named_parameters() if "lora_" not in n)
    return PolicyModel("flux_kontext", {"transformer": base}, config, spec.vae, "gpu_check")


def rollout_check(policy: Any, dev: Device, args: argparse.Namespace, peak_tf: float | None) -> None:
    from cocoedit.actors.policies.flux_kontext import FLUX_SCHEDULER
    from cocoedit.actors.samplers import sample, shifted_sigmas
    from cocoedit.cluster.plan import DTYPE_BYTES, transformer_activation_bytes

    n, size = args.group, args.size
    cond = condition(policy, n, size, args.text_len)
    length, dim = policy.latent_shape(size, size)
    sigmas = shifted_sigmas(args.steps, length, FLUX_SCHEDULER)
    noise = torch.randn(n, length, dim, generator=torch.Generator().manual_seed(0)).to(policy.device)

    def run() -> float:
        dev.sync()
        start = time.perf_counter()
        with torch.no_grad(), policy.adapter("old"):
            sample(policy, cond, noise, sigmas, "dpm2")
        dev.sync()
        return time.perf_counter() - start

    for _ in range(args.warmup):  # kernel selection, allocator
        run()
    dev.reset_peak()
    seconds = min(run() for _ in range(args.repeats))
    model = plan_model(policy)
    lora = sum(p.numel() for name, p in policy.transformer.named_parameters() if "lora_" in name)
    estimate = (
        model.params["transformer"] * DTYPE_BYTES[args.dtype]
        + lora * DTYPE_BYTES[args.dtype]
        + transformer_activation_bytes(
            model, policy.cfg, n, size, args.text_len, grad=False, checkpointing=False
        )
        + _inputs_bytes(cond, noise)
    )
    flops = forward_flops(policy, size, args.text_len) * n * args.steps
    print(f"rollout: group of {n} at {size}x{size} px, {args.steps} dpm2 steps")
    _report(seconds, args.steps, flops, peak_tf, dev.peak(), estimate)


def learner_check(policy: Any, dev: Device, args: argparse.Namespace, peak_tf: float | None) -> None:
    from cocoedit.actors.policies.flux_kontext import FLUX_SCHEDULER
    from cocoedit.actors.samplers import shifted_sigmas
    from cocoedit.actors.types import RolloutBatch
    from cocoedit.cluster.plan import DTYPE_BYTES, transformer_activation_bytes
    from cocoedit.learner.config import LearnerConfig
    from cocoedit.learner.learner import Learner

    m, size = args.micro_batch, args.size
    cfg = LearnerConfig(micro_batch_size=m, train_timesteps=1, zero_stage=2, world_size=1, bf16=True)
    learner = Learner(policy.cfg, cfg, policy=policy)
    cond = condition(policy, m, size, args.text_len).to("cpu")
    length, dim = policy.latent_shape(size, size)
    g = torch.Generator().manual_seed(2)
    masks = torch.zeros(m, 1, size, size)
    masks[:, :, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1.0
    images = torch.zeros(m, 3, size, size, dtype=torch.uint8)
    batch = RolloutBatch(
        edit_ids=[f"0:check:{i}" for i in range(m)],
        item_ids=["check"] * m,
        group_ids=["0:check"] * m,
        instructions=["make the square blue"] * m,
        policy_version=0,
        x0=torch.randn(m, length, dim, generator=g),
        source_latents=cond.tensors["image_latents"].float(),
        condition=cond,
        group_index=torch.arange(m),  # one condition row per edit
        edited_images=images,
        source_images=images,
        edit_masks=(masks * 255).to(torch.uint8),
        sigmas=shifted_sigmas(10, length, FLUX_SCHEDULER),
        sampler="dpm2",
        height=size,
        width=size,
        seeds=list(range(m)),
    )
    adv, valid = torch.linspace(-1.0, 1.0, m), torch.ones(m, dtype=torch.bool)

    def run() -> float:
        dev.sync()
        start = time.perf_counter()
        learner.update(batch, adv, valid)
        dev.sync()
        return time.perf_counter() - start

    for _ in range(args.warmup):
        run()
    dev.reset_peak()
    seconds = min(run() for _ in range(args.repeats))
    model = plan_model(policy)
    lora = sum(p.numel() for name, p in policy.transformer.named_parameters() if ".default." in name)
    estimate = (
        model.params["transformer"] * DTYPE_BYTES[args.dtype]
        + 2 * lora * 4  # both adapters, float32
        + 4 * lora * 4  # AdamW moments + master copy + reduced gradients, float32 (one rank)
        + transformer_activation_bytes(
            model, policy.cfg, m, size, args.text_len, grad=True, checkpointing=True
        )
    )
    # no-grad forwards with `old` and `ref`, forward + backward (input gradients ~ one forward) with `default`
    flops = forward_flops(policy, size, args.text_len) * m * 4
    print(f"learner: micro-batch {m} at {size}x{size} px, 1 timestep, gradient checkpointing, ZeRO-2")
    _report(seconds, 1, flops, peak_tf, dev.peak(), estimate)


def _inputs_bytes(*tensors: Any) -> int:
    total = 0
    for t in tensors:
        values = t.tensors.values() if hasattr(t, "tensors") else [t]
        total += sum(v.numel() * v.element_size() for v in values if v.device.type != "cpu")
    return total


def _report(
    seconds: float, steps: int, flops: float, peak_tf: float | None, peak: float | None, estimate: float
) -> None:
    achieved = flops / seconds / 1e12
    mfu = f"MFU {100 * achieved / peak_tf:.1f}% of {peak_tf:g}" if peak_tf else "MFU n/a (no known bf16 peak)"
    print(
        f"  {seconds:.3f} s, {seconds / steps:.3f} s/step; {flops / 1e12:.3f} TFLOP -> {achieved:.3f} TFLOP/s, {mfu}"
    )
    measured = f"{peak / GIB:.2f} GiB" if peak is not None else "not measured on CPU"
    ratio = f" (estimate / measured {estimate / peak:.3f})" if peak else ""
    print(f"  peak memory {measured}; plan estimate {estimate / GIB:.2f} GiB{ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--depth", type=int, default=None, help="dual + single blocks each (default: 19 + 38)")
    p.add_argument("--size", type=int, default=512, help="image side, px")
    p.add_argument("--group", type=int, default=None, help="rollout group (default 12; CPU 2)")
    p.add_argument("--steps", type=int, default=None, help="dpm2 steps (default 10; CPU 1)")
    p.add_argument("--micro-batch", type=int, default=None, help="learner micro-batch (default 4; CPU 1)")
    p.add_argument("--text-len", type=int, default=None, help="T5 tokens (default 512; CPU 32)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs (default 2; CPU 1)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1; CPU 0)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the device")
    args = p.parse_args(argv)
    args.device = torch.device(args.device)
    cpu = args.device.type == "cpu"
    if args.device.type == "cuda" and not torch.cuda.is_available():
        print(
            "no CUDA device here: run with --depth 1 --device cpu --size 64 for a smoke run", file=sys.stderr
        )
        return 1
    defaults = {
        "group": (12, 2),
        "steps": (10, 1),
        "micro_batch": (4, 1),
        "text_len": (512, 32),
        "repeats": (2, 1),
        "warmup": (1, 0),
    }
    for name, (gpu, smoke) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, smoke if cpu else gpu)
    args.dtype = "float32" if cpu else "bfloat16"
    from cocoedit.actors.policies.common import DTYPES
    from cocoedit.loopback import apply_loopback_env

    apply_loopback_env()
    start = time.perf_counter()
    transformer = build_transformer(args.depth, args.device, DTYPES[args.dtype])
    policy = flux_policy(transformer, args)
    n = sum(p.numel() for name, p in transformer.named_parameters() if "lora_" not in name)
    name = torch.cuda.get_device_name(args.device) if not cpu else "CPU"
    print(
        f"{name}: FLUX.1-Kontext transformer {n / 1e9:.2f} B params ({args.dtype}, random), LoRA r={policy.cfg.lora_rank}; "
        f"built in {time.perf_counter() - start:.1f} s"
    )
    dev = Device(args.device)
    peak_tf = peak_tflops(args.device, args.peak_tflops)
    rollout_check(policy, dev, args, peak_tf)
    learner_check(policy, dev, args, peak_tf)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

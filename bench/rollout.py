"""Rollout benchmarks. Prints numbers and ratios; asserts nothing.

    python bench/rollout.py             # tiny FLUX-Kontext on CPU: edits/s of RolloutWorker vs the stock
                                        # FluxKontextPipeline, one group of 8 at 32 px, 10 steps.
                                        # Target: pipeline / worker time ratio within 1.1x.
    python bench/rollout.py --gpu       # full-size FLUX.1-Kontext transformer (its config, random bf16
                                        # weights, LoRA r=32 on the `old` adapter; no downloads):
                                        # seconds per 10-step dpm2 group of 12 at 512x512.
    python bench/rollout.py --bytes [--config FILE] [key=value ...]
                                        # bytes per epoch through the object store (the shards the
                                        # workers store, the pieces the learner ranks fetch; the driver
                                        # passes references), conditions once per group vs once per
                                        # edit, for a config's epoch (default: the tiny config).

Both paths run the same computation per edit: encode once per group, 10 transformer passes, decode.
The worker and the pipeline are interleaved so machine load hits both alike; medians are reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cocoedit.actors.config import PolicyConfig, RolloutConfig  # noqa: E402
from cocoedit.actors.types import EditItem, GroupedItem  # noqa: E402


def group(size: int, n: int, channels: int = 3, item_id: str = "bench", seed: int = 0) -> list[GroupedItem]:
    g = torch.Generator().manual_seed(seed)
    item = EditItem(
        item_id=item_id,
        instruction="make the square blue",
        source_image=torch.randint(0, 256, (channels, size, size), dtype=torch.uint8, generator=g),
        edit_mask=torch.ones(1, size, size),
    )
    return [GroupedItem(item, f"0:{item_id}", f"0:{item_id}:{k}", seed=1000 * seed + k) for k in range(n)]


def bench_tiny(repeats: int, size: int, group_size: int, steps: int) -> None:
    from PIL import Image

    from cocoedit.actors.policies.tiny import TINY_MAX_SEQUENCE_LENGTH, build_tiny_model
    from cocoedit.actors.rollout import RolloutWorker

    path = build_tiny_model("flux_kontext", tempfile.mkdtemp(prefix="bench_rollout_"))
    pcfg = PolicyConfig(
        family="flux_kontext",
        model_path=str(path),
        dtype="float32",
        device="cpu",
        lora_rank=8,
        lora_alpha=16,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        gradient_checkpointing=False,
    )
    worker = RolloutWorker(pcfg, RolloutConfig(sampler="euler", num_steps=steps, batch_size=group_size))
    # The baseline carries the same LoRA (exported from the worker), so both run the same layers.
    from diffusers import FluxKontextPipeline

    from cocoedit.actors.policies.lora import export_diffusers_lora

    lora_file = export_diffusers_lora(worker.policy, "old", Path(path) / "bench_lora.safetensors")
    pipe = FluxKontextPipeline.from_pretrained(str(path), dtype=torch.float32)
    pipe.load_lora_weights(str(lora_file))
    pipe.set_progress_bar_config(disable=True)
    items = group(size, group_size)
    image = Image.fromarray(items[0].item.source_image.permute(1, 2, 0).numpy())

    def run_worker() -> float:
        start = time.perf_counter()
        worker.sample(items, policy_version=0)
        return time.perf_counter() - start

    def run_pipeline() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            pipe(
                image=image,
                prompt=items[0].item.instruction,
                height=size,
                width=size,
                max_area=size * size,
                _auto_resize=False,
                num_inference_steps=steps,
                guidance_scale=2.5,
                num_images_per_prompt=group_size,
                max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
                generator=torch.Generator().manual_seed(0),
                output_type="pt",
            )
        return time.perf_counter() - start

    run_worker(), run_pipeline()  # warm-up
    t_worker, t_pipe = [], []
    for _ in range(repeats):
        t_worker.append(run_worker())
        t_pipe.append(run_pipeline())
    w, p = statistics.median(t_worker), statistics.median(t_pipe)
    print(
        f"tiny FLUX-Kontext, CPU ({torch.get_num_threads()} threads), group of {group_size} at {size}px, {steps} steps"
    )
    print(f"  RolloutWorker (LoRA, euler):    {w:.3f} s/group  {group_size / w:7.1f} edits/s")
    print(f"  stock FluxKontextPipeline+LoRA: {p:.3f} s/group  {group_size / p:7.1f} edits/s")
    print(f"  ratio worker/pipeline time:     {w / p:.3f}  (target <= 1.1)")


def bench_gpu(repeats: int, size: int, group_size: int, steps: int) -> None:
    """Full-size FLUX.1-Kontext transformer with random bf16 weights; text embeddings are random too
    (CLIP/T5/VAE are not timed: the rollout cost is the transformer passes)."""
    if not torch.cuda.is_available():
        raise SystemExit("--gpu needs a CUDA device")
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel

    from cocoedit.actors.policies.flux_kontext import BATCHED, FluxKontextPolicy
    from cocoedit.actors.policies.tiny import FLUX_SCHEDULER
    from cocoedit.actors.samplers import sample, shifted_sigmas
    from cocoedit.actors.types import Condition

    device = torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(device):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        transformer = FluxTransformer2DModel(guidance_embeds=True)  # the FLUX.1-dev / Kontext-dev config
        torch.set_default_dtype(previous)
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=None,
        text_encoder=None,
        tokenizer=None,
        text_encoder_2=None,
        tokenizer_2=None,
        transformer=transformer.eval(),
    )
    cfg = PolicyConfig(family="flux_kontext", dtype="bfloat16", device="cuda", gradient_checkpointing=False)
    policy = FluxKontextPolicy(cfg, pipe=pipe)
    n_params = sum(p.numel() for p in transformer.parameters())
    length, dim = policy.latent_shape(size, size)
    grid = size // policy.vae_scale_factor // 2
    text_len = cfg.max_sequence_length
    ids = pipe._prepare_latent_image_ids(1, grid, grid, device, torch.bfloat16)
    image_ids = ids.clone()
    image_ids[..., 0] = 1
    g = torch.Generator(device).manual_seed(0)
    condition = Condition(
        {
            "prompt_embeds": torch.randn(
                group_size, text_len, 4096, generator=g, device=device, dtype=torch.bfloat16
            ),
            "pooled_prompt_embeds": torch.randn(
                group_size, 768, generator=g, device=device, dtype=torch.bfloat16
            ),
            "text_ids": torch.zeros(text_len, 3, device=device, dtype=torch.bfloat16),
            "image_latents": torch.randn(
                group_size, length, dim, generator=g, device=device, dtype=torch.bfloat16
            ),
            "image_ids": image_ids,
            "latent_ids": ids,
            "guidance": torch.full((group_size,), 2.5, device=device),
        },
        BATCHED,
    )
    sigmas = shifted_sigmas(steps, length, FLUX_SCHEDULER)
    noise = torch.randn(group_size, length, dim, generator=g, device=device)

    def run() -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with policy.adapter("old"):
            sample(policy, condition, noise, sigmas, "dpm2")
        torch.cuda.synchronize()
        return time.perf_counter() - start

    run()
    times = [run() for _ in range(repeats)]
    t = statistics.median(times)
    tokens = length * 2 + text_len
    print(f"FLUX.1-Kontext transformer ({n_params / 1e9:.2f} B params, random bf16, LoRA r={cfg.lora_rank})")
    print(f"  {torch.cuda.get_device_name()}: group of {group_size} at {size}x{size} ({tokens} tokens/edit)")
    print(
        f"  dpm2, {steps} steps: {t:.2f} s/group  ({group_size / t:.2f} edits/s, {t / steps * 1000:.0f} ms/step)"
    )
    print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def bench_bytes(config: str | None, overrides: list[str]) -> None:
    """One epoch of the config (n_items x group_size edits, its image size, sampler and model
    architecture with random weights: the bytes depend on shapes only) sampled by rollout.num_workers
    shards and cut into learner.world_size rank shards, as RolloutGroup / LearnerGroup move them: each
    worker stores its shard, each rank fetches its piece (the driver passes references only). Bytes are
    the pickled sizes (protocol 5, what Ray stores for these tensors)."""
    from cocoedit.actors.policies.tiny import build_tiny_model
    from cocoedit.actors.rollout import RolloutWorker
    from cocoedit.actors.types import RolloutBatch
    from cocoedit.cluster.config import load_config
    from cocoedit.cluster.train.groups import shard_bounds

    cfg = load_config(config, overrides)
    model = cfg.policy.model_path
    if model is None:  # tiny mode: the tiny editor's architecture (cfg.pretrain), random weights
        p = cfg.pretrain
        model = build_tiny_model(
            cfg.policy.family,
            tempfile.mkdtemp(prefix="bench_bytes_"),
            num_layers=p.num_layers,
            num_single_layers=p.num_single_layers,
            num_attention_heads=p.num_attention_heads,
            attention_head_dim=p.attention_head_dim,
            text_dim=p.text_dim,
            vae_channels=p.vae_channels,
            vae_blocks=p.vae_blocks,
        )
    pcfg = dataclasses.replace(cfg.policy, model_path=str(model), device="cpu")
    worker = RolloutWorker(pcfg, cfg.rollout)
    d = cfg.data
    items = [
        gi for k in range(d.n_items) for gi in group(d.image_size, d.group_size, item_id=f"item{k}", seed=k)
    ]
    shards = [worker.sample(items[a:b], 0) for a, b in shard_bounds(len(items), cfg.rollout.num_workers)]

    def epoch_bytes(shards: list[RolloutBatch]) -> tuple[int, int]:
        batch = RolloutBatch.cat(shards)
        ranks = shard_bounds(len(batch), cfg.learner.world_size)
        stored = sum(len(pickle.dumps(s, protocol=5)) for s in shards)
        to_ranks = sum(len(pickle.dumps(batch.select(list(range(a, b))), protocol=5)) for a, b in ranks)
        return stored, to_ranks

    after = epoch_bytes(shards)
    before = epoch_bytes([s.per_edit() for s in shards])
    n = len(items)
    print(
        f"{cfg.policy.family}, {d.n_items} groups x {d.group_size} edits at {d.image_size}px, "
        f"{cfg.rollout.num_workers} rollout worker(s), {cfg.learner.world_size} learner rank(s)"
    )
    for name, (a, b) in (("condition per edit (before)", before), ("condition per group (after)", after)):
        print(
            f"  {name}: stored by workers {a / 2**20:8.2f} MiB, fetched by ranks {b / 2**20:8.2f} MiB, "
            f"total {(a + b) / 2**20:8.2f} MiB per epoch ({(a + b) / n / 1024:.1f} KiB per edit)"
        )
    print(f"  ratio after / before: {sum(after) / sum(before):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gpu", action="store_true")
    parser.add_argument("--bytes", action="store_true", help="object-store bytes per epoch")
    parser.add_argument("--config", default=None, help="--bytes: experiment YAML (default: the tiny config)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="--bytes: config overrides")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 avoids OpenMP spinning on busy cores)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from cocoedit.loopback import apply_loopback_env

    apply_loopback_env()
    if args.bytes:
        bench_bytes(args.config, args.overrides)
    elif args.gpu:
        bench_gpu(args.repeats or 3, 512, 12, args.steps)
    else:
        bench_tiny(args.repeats or 5, 32, 8, args.steps)


if __name__ == "__main__":
    main()

"""Pre-train the tiny editor on the synthetic edit task: the starting policy of the tiny CPU mode.

    cocoedit pretrain-tiny --out DIR [--config FILE] [pretrain.steps=2000 ...]

RL post-trains an editor that can already edit (FLUX.1-Kontext or Qwen-Image-Edit in production).
The tiny mode has no such checkpoint, so this builds one from the same diffusers classes:
  1. a tiny VAE trained to reconstruct synthetic images (its latent statistics become the VAE's
     shift_factor / scaling_factor, as FLUX's are for its VAE);
  2. the whole tiny transformer trained by flow matching, conditioned on (instruction, source image)
     exactly as the policy conditions it, towards the known target: v* = eps - x0_target.
The result is a normal diffusers directory (loads with FluxKontextPipeline.from_pretrained), plus
`pretrain.json` with the losses and a held-out evaluation. Deterministic from the seed on CPU: the
build runs on one thread with torch's deterministic algorithms (`deterministic_cpu`), so the thread
settings of the machine (OMP_NUM_THREADS, cores) do not change a bit of the weights.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch

from cocoedit.actors.config import PolicyConfig, PretrainConfig
from cocoedit.actors.types import EditItem

log = logging.getLogger(__name__)

GRID_ITEMS = 8  # held-out items shown in grid.png (two of each edit type)


@contextmanager
def deterministic_cpu() -> Iterator[None]:
    """One intra-op thread and torch's deterministic algorithms inside, the caller's settings restored
    after. A float sum split over N threads is added in another order for each N, so without this the
    weights depend on the machine's core count and OMP_NUM_THREADS."""
    threads, strict = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(strict)
        torch.set_num_threads(threads)


def pretrain_tiny(cfg: PretrainConfig, out_dir: str | Path, progress: bool = False) -> Path:
    """Build and pre-train a tiny editor into out_dir (written atomically); returns out_dir.

    Bit-identical for one cfg whatever the thread settings (`deterministic_cpu`)."""
    with deterministic_cpu():
        return _pretrain_tiny(cfg, Path(out_dir), progress)


def _pretrain_tiny(cfg: PretrainConfig, out: Path, progress: bool) -> Path:
    from cocoedit.actors.policies import load_policy
    from cocoedit.actors.policies.common import DiffusersEditPolicy
    from cocoedit.actors.policies.tiny import TINY_MAX_SEQUENCE_LENGTH, build_tiny_model
    from cocoedit.actors.synth import synthetic_items

    work = Path(tempfile.mkdtemp(prefix=".pretrain_", dir=out.parent if out.parent.exists() else None))
    torch.manual_seed(cfg.seed)
    t_start, cpu_start = time.perf_counter(), time.process_time()
    build_tiny_model(
        cfg.family,
        work,
        seed=cfg.seed,
        num_layers=cfg.num_layers,
        num_single_layers=cfg.num_single_layers,
        num_attention_heads=cfg.num_attention_heads,
        attention_head_dim=cfg.attention_head_dim,
        text_dim=cfg.text_dim,
        vae_channels=cfg.vae_channels,
        vae_blocks=cfg.vae_blocks,
    )
    items = synthetic_items(cfg.num_items + cfg.eval_items, cfg.image_size, cfg.seed)
    train_items, eval_items = items[: cfg.num_items], items[cfg.num_items :]
    policy_cfg = PolicyConfig(
        family=cfg.family,
        model_path=str(work),
        dtype="float32",
        device="cpu",
        lora_rank=1,  # the policy class always carries adapters; pre-training trains the base weights
        lora_alpha=1,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        gradient_checkpointing=False,
    )
    policy = cast(DiffusersEditPolicy, load_policy(policy_cfg, seed=cfg.seed))  # what the tiny families build
    vae = policy.pipe.vae
    report: dict[str, Any] = {"config": dataclasses.asdict(cfg)}
    t_vae = time.perf_counter()
    report["vae"] = _train_vae(vae, train_items, cfg, progress)
    report["vae"]["seconds"] = time.perf_counter() - t_vae
    policy.pipe.vae.save_pretrained(work / "vae")
    t_flow = time.perf_counter()
    report["flow"] = _train_flow(policy, train_items, cfg, progress)
    report["flow"]["seconds"] = time.perf_counter() - t_flow
    edited = edit_items(policy, eval_items)
    report["eval"] = {"vae_psnr": vae_psnr(vae, eval_items), **edit_metrics(eval_items, edited)}
    save_grid(eval_items[:GRID_ITEMS], edited[:GRID_ITEMS], work / "grid.png")
    policy.transformer.unload_lora()  # back to the plain diffusers transformer
    policy.transformer.save_pretrained(work / "transformer")
    report["seconds"] = time.perf_counter() - t_start
    report["cpu_seconds"] = time.process_time() - cpu_start  # all threads: wall on 2 idle cores >= half this
    (work / "pretrain.json").write_text(json.dumps(report, indent=2))
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return out


def _images(items: list[EditItem], attr: str) -> torch.Tensor:
    return torch.stack([getattr(i, attr) for i in items]).float() / 127.5 - 1.0


def _target(item: EditItem) -> torch.Tensor:
    """The item's known target image (pre-training runs on the synthetic task: every item has one)."""
    if item.target_image is None:
        raise ValueError(f"item {item.item_id!r} has no target image; pre-training needs items with targets")
    return item.target_image


def _train_vae(vae: Any, items: list[EditItem], cfg: PretrainConfig, progress: bool) -> dict[str, float]:
    """Reconstruction + tiny KL on sources and targets; then set the latent normalisation."""
    images = torch.cat([_images(items, "source_image"), _images(items, "target_image")])
    vae.train().requires_grad_(True)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    # 10% warm-up then cosine: the constant-then-cosine schedule plateaued ~4 dB lower in as many steps
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.vae_lr, total_steps=max(1, cfg.vae_steps), pct_start=0.1
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_first = loss_last = float("nan")
    for step in range(cfg.vae_steps):
        x = images[torch.randint(len(images), (cfg.vae_batch_size,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        # Decode the mean, as the editor does (encode -> latent_dist.mean): a sampled latent taught the
        # decoder to average over the posterior's noise, a blur the editor never needs.
        rec = vae.decode(posterior.mean).sample
        loss = torch.nn.functional.mse_loss(rec, x) + cfg.vae_kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_last = loss.item()
        loss_first = loss_last if step == 0 else loss_first
        if progress and step % 50 == 0:
            log.info("vae step %d loss %.5f", step, loss_last)
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        mean = torch.cat(
            [vae.encode(images[i : i + 256]).latent_dist.mean for i in range(0, len(images), 256)]
        )
        rec = torch.cat([vae.decode(mean[i : i + 256]).sample for i in range(0, len(mean), 256)])
    mse = ((rec.clamp(-1, 1) - images) / 2).pow(2).mean().item()
    shift, scale = mean.mean().item(), 1.0 / mean.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    return {
        "loss_first": loss_first,
        "loss_last": loss_last,
        "recon_psnr": _psnr(mse),
        "shift": shift,
        "scale": scale,
    }


def _train_flow(policy: Any, items: list[EditItem], cfg: PretrainConfig, progress: bool) -> dict[str, float]:
    """Flow matching of the base transformer (adapters disabled) from noise to the target latents."""
    from cocoedit.actors.types import Condition

    sources = torch.stack([i.source_image for i in items])
    targets = torch.stack([_target(i) for i in items])
    instructions = [i.instruction for i in items]
    with torch.no_grad():
        chunks = [
            policy.encode_condition(instructions[i : i + 128], sources[i : i + 128])
            for i in range(0, len(items), 128)
        ]
        cond_all = Condition.cat(chunks)
        # Target latents through the same encoder path as the source latents of the condition.
        x0_all = torch.cat(
            [
                policy.source_latents(
                    policy.encode_condition(instructions[i : i + 128], targets[i : i + 128])
                )
                for i in range(0, len(items), 128)
            ]
        )
    transformer = policy.transformer
    base = [p for n, p in transformer.named_parameters() if "lora_" not in n]
    for p in base:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(base, lr=cfg.lr, weight_decay=0.0)
    warmup = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps)),
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    losses = []
    transformer.train()
    with policy.adapter("ref"):
        for step in range(cfg.steps):
            idx = torch.randint(len(items), (cfg.batch_size,), generator=gen)
            x0 = x0_all[idx]
            eps = torch.randn(x0.shape, generator=gen)
            # logit-normal t (as SD3/FLUX training), shifted towards noise by cfg.logit_mean
            t = torch.sigmoid(torch.randn(cfg.batch_size, generator=gen) + cfg.logit_mean)
            x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * eps
            v = policy.velocity(x_t, t, cond_all.select(idx))
            loss = (v - (eps - x0)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(base, 1.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress and step % 50 == 0:
                log.info("flow step %d loss %.4f", step, sum(losses[-100:]) / len(losses[-100:]))
    transformer.eval()
    for p in base:
        p.requires_grad_(False)
    k = max(1, len(losses) // 10)
    return {"loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}


@torch.no_grad()
def edit_items(policy: Any, items: list[EditItem], num_steps: int = 10, seed: int = 0) -> torch.Tensor:
    """One dpm2 edit per item with the reference weights (adapters off): uint8 [N, 3, H, W]."""
    from cocoedit.actors.samplers import sample, shifted_sigmas

    h, w = items[0].source_image.shape[-2:]
    sources = torch.stack([i.source_image for i in items])
    cond = policy.encode_condition([i.instruction for i in items], sources)
    length, dim = policy.latent_shape(h, w)
    noise = torch.randn((len(items), length, dim), generator=torch.Generator().manual_seed(seed))
    sigmas = shifted_sigmas(num_steps, length, dict(policy.pipe.scheduler.config))
    with policy.adapter("ref"):
        x0 = sample(policy, cond, noise, sigmas, "dpm2").x0
    return policy.decode(x0, h, w)


def edit_metrics(items: list[EditItem], edited: torch.Tensor) -> dict[str, float]:
    """Means over items of the synthetic instruction score, edit-region PSNR against the target and
    keep-region PSNR against the source (dB, images in [0, 1]); edited: uint8 [N, 3, H, W]."""
    from cocoedit.rewards.synthetic import instruction_scores

    src = torch.stack([i.source_image for i in items]).float() / 255
    tgt = torch.stack([_target(i) for i in items]).float() / 255
    masks = torch.stack([i.edit_mask for i in items])
    out = edited.float() / 255
    scores = instruction_scores(src, out, tgt, masks)
    keep = 1 - masks
    keep_mse = ((out - src) ** 2 * keep).sum(dim=(1, 2, 3)) / (keep.sum(dim=(1, 2, 3)) * 3).clamp_min(1)
    return {
        "instruction_score": scores["score"].nanmean().item(),
        "edit_psnr": scores["edit_psnr"].nanmean().item(),
        "keep_psnr": (10 * torch.log10(1 / keep_mse.clamp_min(1e-8))).mean().item(),
    }


def save_grid(items: list[EditItem], edited: torch.Tensor, path: Path, scale: int = 2) -> None:
    """PNG of one column per item, rows source / edit / target, upscaled `scale` x (nearest)."""
    from PIL import Image

    cols = [torch.cat([i.source_image, e, _target(i)], dim=1) for i, e in zip(items, edited, strict=True)]
    grid = torch.cat(cols, dim=2).permute(1, 2, 0).numpy()
    image = Image.fromarray(grid)
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(
        path, optimize=True
    )


@torch.no_grad()
def vae_psnr(vae: Any, items: list[EditItem]) -> float:
    """PSNR (dB) of the VAE's reconstruction (encode -> posterior mean -> decode) of the items' sources
    and targets, images in [0, 1]."""
    images = torch.cat([_images(items, "source_image"), _images(items, "target_image")])
    rec = torch.cat(
        [
            vae.decode(vae.encode(images[i : i + 256]).latent_dist.mean).sample
            for i in range(0, len(images), 256)
        ]
    )
    return _psnr(((rec.clamp(-1, 1) - images) / 2).pow(2).mean().item())


def _psnr(mse: float) -> float:
    return 10 * torch.log10(torch.tensor(1 / max(mse, 1e-10))).item()


def summary(out: Path) -> str:
    """What `cocoedit pretrain-tiny` prints: where the editor went and its pretrain.json numbers."""
    report = json.loads((out / "pretrain.json").read_text())
    return "\n".join(
        [
            f"tiny editor written to {out} in {report['seconds']:.0f} s "
            f"(vae {report['vae']['seconds']:.0f} s, flow {report['flow']['seconds']:.0f} s)",
            f"  vae reconstruction PSNR on its training images {report['vae']['recon_psnr']:.2f} dB",
            f"  flow loss {report['flow']['loss_first']:.4f} -> {report['flow']['loss_last']:.4f}",
            f"  held-out ({report['config']['eval_items']} items): "
            + ", ".join(f"{k} {v:.3f}" for k, v in report["eval"].items()),
            f"  held-out edits (columns: source / edit / target): {out / 'grid.png'}",
        ]
    )

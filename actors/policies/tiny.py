"""Tiny editors built in code: the real diffusers / transformers classes with tiny configs and
tokenizers built from an in-memory vocabulary (no hub access). Used by tests, the CPU tiny mode and the
lead's synthetic pre-training. The same code path builds the real model sizes (builders.py).

    path = build_tiny_model("flux_kontext", "/tmp/tiny_flux")     # a normal diffusers directory
    pipe = FluxKontextPipeline.from_pretrained(path)               # loads like any checkpoint

Size knobs (keyword args of `build_tiny_model`) trade capacity for speed: `num_layers` (dual-stream
blocks), `num_single_layers`, `num_attention_heads`, `attention_head_dim`, `text_dim` (text encoders and
the transformer's joint attention width), `vae_channels`, `vae_blocks` (VAE down-sampling factor is
2 ** (vae_blocks - 1); with the 2x2 packing one token covers (2 ** vae_blocks) ** 2 pixels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from cocoedit.actors.policies.architecture import TINY_MAX_SEQUENCE_LENGTH
from cocoedit.actors.policies.builders import build_model
from cocoedit.actors.policies.flux_kontext import FLUX_SCHEDULER
from cocoedit.actors.policies.qwen_image_edit import QWEN_SCHEDULER

__all__ = ["FLUX_SCHEDULER", "QWEN_SCHEDULER", "TINY_MAX_SEQUENCE_LENGTH", "build_tiny_model"]


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    *,
    num_layers: int = 2,
    num_single_layers: int = 2,
    num_attention_heads: int = 4,
    attention_head_dim: int = 16,
    text_dim: int = 32,
    vae_channels: int = 16,
    vae_blocks: int = 2,
    latent_channels: Optional[int] = None,
) -> Path:
    """Build a tiny editor of `family` with random weights (seeded) and save it as a diffusers directory
    that `<Pipeline>.from_pretrained(out_dir)` loads. Returns out_dir.

    FLUX-Kontext: `latent_channels` defaults to 16 (packed D = 64, as FLUX); Qwen-Image-Edit: 4 (D = 16).
    Qwen-Image-Edit has one kind of block: it gets num_layers + num_single_layers of them.
    `attention_head_dim` must be a multiple of 8 (it is split over the 3 rope axes as h/4, 3h/8, 3h/8).
    """
    return build_model(
        family,
        out_dir,
        seed,
        dims="tiny",
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        text_dim=text_dim,
        vae_channels=vae_channels,
        vae_blocks=vae_blocks,
        latent_channels=latent_channels,
    )

"""FLUX.1-Kontext behind EditPolicy, over the stock `FluxKontextPipeline`'s components and helpers.

Conditioning as the pipeline builds it: CLIP pooled + T5 sequence embeddings (`encode_prompt`), the
source image VAE-encoded (mode of the posterior, shifted/scaled), 2x2-packed and appended to the noisy
latents along the sequence, with image ids whose first coordinate is 1 (the target's are 0), and the
distilled guidance value (2.5 in CoCoEdit) as an embedding. The output image has the source's size.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies.base import Parts
from cocoedit.actors.policies.common import (
    DTYPES,
    DiffusersEditPolicy,
    resolve_device,
    to_uint8,
    to_unit_float,
)
from cocoedit.actors.types import Condition

BATCHED = frozenset({"prompt_embeds", "pooled_prompt_embeds", "image_latents", "guidance"})


class FluxKontextPolicy(DiffusersEditPolicy):
    family = "flux_kontext"
    ENCODING = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "vae")

    def __init__(
        self, cfg: PolicyConfig, seed: int = 0, pipe: Optional[Any] = None, parts: Parts = "all"
    ) -> None:
        """Loads cfg.model_path (with parts="transformer": the transformer and scheduler only), or wraps
        `pipe` (a FluxKontextPipeline already built, e.g. a transformer-only one for benchmarks; it is
        moved to cfg's device/dtype)."""
        self.device = resolve_device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        if pipe is None:
            pipe = self._load_pipeline(cfg, parts)
        self.pipe = pipe.to(self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        # T5 cannot use more tokens than its tokenizer allows (512 for FLUX, 32 for the tiny model).
        tokenizer_2 = self.pipe.tokenizer_2
        limit = tokenizer_2.model_max_length if tokenizer_2 is not None else cfg.max_sequence_length
        self.max_sequence_length = min(cfg.max_sequence_length, limit)
        self.guidance = cfg.guidance
        self._setup(cfg, seed, parts)

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import FluxKontextPipeline

        return FluxKontextPipeline

    @classmethod
    def stock_call_kwargs(cls, pipe: Any, height: int, width: int, guidance: float) -> dict:
        # the pipeline would otherwise resize to its preferred resolutions and cap the prompt at 512
        return dict(
            guidance_scale=guidance,
            max_area=height * width,
            _auto_resize=False,
            max_sequence_length=min(512, pipe.tokenizer_2.model_max_length),
        )

    @staticmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        return 2 ** (len(vae_config["block_out_channels"]) - 1), vae_config["latent_channels"]

    @torch.no_grad()
    def encode_condition(self, instructions: list[str], source_images: torch.Tensor) -> Condition:
        self._require_all("encode_condition")
        n, _, height, width = source_images.shape
        if len(instructions) != n:
            raise ValueError(f"{len(instructions)} instructions for {n} source images")
        self.check_size(height, width)
        pipe = self.pipe
        prompt_embeds, pooled, text_ids = pipe.encode_prompt(
            prompt=list(instructions),
            prompt_2=None,
            device=self.device,
            max_sequence_length=self.max_sequence_length,
        )
        image = to_unit_float(source_images).to(self.device, prompt_embeds.dtype)
        latents = pipe._encode_vae_image(image=image, generator=None)
        h, w = latents.shape[2:]
        image_latents = pipe._pack_latents(latents, n, latents.shape[1], h, w)
        image_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, self.device, prompt_embeds.dtype)
        image_ids[..., 0] = 1
        latent_ids = pipe._prepare_latent_image_ids(n, h // 2, w // 2, self.device, prompt_embeds.dtype)
        return Condition(
            {
                "prompt_embeds": prompt_embeds,
                "pooled_prompt_embeds": pooled,
                "text_ids": text_ids,
                "image_latents": image_latents,
                "image_ids": image_ids,
                "latent_ids": latent_ids,  # [L, 3] ids of the target tokens (same grid as the source)
                "guidance": torch.full((n,), self.guidance, device=self.device, dtype=torch.float32),
            },
            BATCHED,
        )

    def source_latents(self, condition: Condition) -> torch.Tensor:
        return condition.tensors["image_latents"]

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        c = condition.tensors
        n, length, _ = x_t.shape
        hidden = torch.cat([x_t.to(self.dtype), c["image_latents"].to(self.dtype)], dim=1)
        out = self.transformer(
            hidden_states=hidden,
            timestep=t.to(self.dtype).expand(n),
            guidance=c["guidance"],
            pooled_projections=c["pooled_prompt_embeds"].to(self.dtype),
            encoder_hidden_states=c["prompt_embeds"].to(self.dtype),
            txt_ids=c["text_ids"],
            img_ids=torch.cat([c["latent_ids"], c["image_ids"]], dim=0),
            return_dict=False,
        )[0]
        return out[:, :length].to(x_t.dtype)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self._require_all("decode")
        vae = self.pipe.vae
        latents = self.unpack(x0.to(self.device), height, width)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        return to_uint8(vae.decode(latents.to(vae.dtype), return_dict=False)[0])

"""Qwen-Image-Edit and Qwen-Image-Edit-2509 ("Plus") behind EditPolicy, over the stock pipelines' parts.

Conditioning as `QwenImageEditPipeline` / `QwenImageEditPlusPipeline` build it: the Qwen2.5-VL text
encoder sees the instruction in the pipeline's chat template together with the source image
(`encode_prompt`; Plus prefixes "Picture 1:"), the last hidden states minus the system prompt are the
text tokens (padded + masked); the source image is VAE-encoded (normalised by latents_mean/std),
2x2-packed and appended to the noisy latents along the sequence, with `img_shapes` giving both grids.
No CFG (CoCoEdit trains Qwen-Image-Edit with true_cfg_scale 1).

Sizes: the stock pipelines resize the source to ~1 MP for the VAE (and Plus to ~384^2 for the text
encoder) whatever the output size. Rollouts instead keep the source at the training size for the VAE
and the text encoder (Plus: shrunk to 384^2 area when larger, as the pipeline does), so x_src and x0
share one grid, which the region regularizer needs.
"""

from __future__ import annotations

import torch
from PIL import Image

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

BATCHED = frozenset({"prompt_embeds", "prompt_embeds_mask", "image_latents"})
CONDITION_IMAGE_AREA = 384 * 384  # QwenImageEditPlusPipeline's text-encoder image area


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).cpu().numpy())


def _pad_text(
    embeds: list[torch.Tensor], masks: list[torch.Tensor], longest: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad text token embeddings [S_i, C] (and masks [S_i]) to `longest`: [N, S, C], [N, S]."""
    padded = torch.stack([torch.cat([e, e.new_zeros(longest - e.shape[0], e.shape[1])]) for e in embeds])
    mask = torch.stack(
        [
            torch.cat([m.to(e.device), m.new_zeros(longest - m.shape[0]).to(e.device)])
            for e, m in zip(embeds, masks, strict=True)
        ]
    )
    return padded, mask.long()


class QwenImageEditPolicy(DiffusersEditPolicy):
    family = "qwen_image_edit"
    plus = False
    ENCODING = ("text_encoder", "tokenizer", "processor", "vae")

    def __init__(self, cfg: PolicyConfig, seed: int = 0, parts: Parts = "all") -> None:
        """Loads cfg.model_path (with parts="transformer": the transformer and scheduler only)."""
        self.device = resolve_device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        self.pipe = self._load_pipeline(cfg, parts)
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.text_length = cfg.max_sequence_length  # text tokens are padded (masked) to this length
        if cfg.true_cfg_scale != 1.0:
            raise ValueError(
                f"policy.true_cfg_scale={cfg.true_cfg_scale}: rollouts of Qwen-Image-Edit run without CFG "
                "(CoCoEdit's setting); set it to 1.0"
            )
        self._setup(cfg, seed, parts)

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import QwenImageEditPipeline

        return QwenImageEditPipeline

    @staticmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        return 2 ** len(vae_config["temperal_downsample"]), vae_config["z_dim"]

    def _text_image(self, image: torch.Tensor) -> Image.Image:
        """The source image as the text encoder sees it."""
        pil = _pil(image)
        if self.plus and pil.width * pil.height > CONDITION_IMAGE_AREA:
            from diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus import calculate_dimensions

            w, h = calculate_dimensions(CONDITION_IMAGE_AREA, pil.width / pil.height)
            pil = self.pipe.image_processor.resize(pil, h, w)
        return pil

    @torch.no_grad()
    def encode_condition(self, instructions: list[str], source_images: torch.Tensor) -> Condition:
        self._require_all("encode_condition")
        n, _, height, width = source_images.shape
        if len(instructions) != n:
            raise ValueError(f"{len(instructions)} instructions for {n} source images")
        self.check_size(height, width)
        pipe = self.pipe
        # One prompt at a time: Plus treats a list of images as several pictures of ONE prompt, and a
        # single-prompt encoding is exactly what the pipeline computes (no batch padding effects).
        embeds = []
        for text, image in zip(instructions, source_images, strict=True):
            e, _ = pipe.encode_prompt(prompt=[text], image=[self._text_image(image)], device=self.device)
            embeds.append(e[0])
        longest = max(e.shape[0] for e in embeds)
        if longest > self.text_length:
            raise ValueError(
                f"an instruction + source image encode to {longest} text tokens, more than "
                f"policy.max_sequence_length={self.text_length}; raise policy.max_sequence_length"
            )
        # Fixed padded length, so Conditions of different workers concatenate (velocity trims the padding).
        prompt_embeds, mask = _pad_text(
            embeds, [torch.ones(e.shape[0], dtype=torch.long) for e in embeds], self.text_length
        )
        image = to_unit_float(source_images).to(self.device, prompt_embeds.dtype).unsqueeze(2)
        latents = pipe._encode_vae_image(image=image, generator=None)  # [N, C, 1, h, w]
        h, w = latents.shape[3:]
        image_latents = pipe._pack_latents(latents, n, latents.shape[1], h, w)
        grid = (1, h // 2, w // 2)
        return Condition(
            {
                "prompt_embeds": prompt_embeds,
                "prompt_embeds_mask": mask,
                "image_latents": image_latents,
                "img_shapes": torch.tensor([grid, grid]),  # [2, 3] (frames, h, w) of target and source
            },
            BATCHED,
        )

    def merge_conditions(self, conditions: list[Condition]) -> Condition:
        """Concatenate per-item Conditions, padding their text tokens to the longest (masked)."""
        embeds = [e for c in conditions for e in c.tensors["prompt_embeds"]]
        masks = [m for c in conditions for m in c.tensors["prompt_embeds_mask"]]
        prompt_embeds, mask = _pad_text(embeds, masks, max(self.text_length, max(e.shape[0] for e in embeds)))
        first = conditions[0].tensors
        tensors = {k: torch.cat([c.tensors[k] for c in conditions]) for k in ("image_latents",)}
        tensors.update(prompt_embeds=prompt_embeds, prompt_embeds_mask=mask, img_shapes=first["img_shapes"])
        return Condition(tensors, BATCHED)

    def source_latents(self, condition: Condition) -> torch.Tensor:
        return condition.tensors["image_latents"]

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        c = condition.tensors
        n, length, _ = x_t.shape
        mask = c["prompt_embeds_mask"]
        # Trim padding no edit of this batch uses; an all-valid mask is passed as None, as the pipeline does.
        used = int(mask.sum(dim=1).max())
        mask, embeds = mask[:, :used], c["prompt_embeds"][:, :used]
        hidden = torch.cat([x_t.to(self.dtype), c["image_latents"].to(self.dtype)], dim=1)
        shapes = [tuple(int(v) for v in row) for row in c["img_shapes"]]
        out = self.transformer(
            hidden_states=hidden,
            timestep=t.to(self.dtype).expand(n),
            guidance=None,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,
            encoder_hidden_states=embeds.to(self.dtype),
            img_shapes=[shapes] * n,
            return_dict=False,
        )[0]
        return out[:, :length].to(x_t.dtype)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self._require_all("decode")
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(x0.to(self.device), height, width, self.vae_scale_factor)
        z = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, z, 1, 1, 1).to(latents.device, latents.dtype)
        latents = latents * std + mean
        return to_uint8(vae.decode(latents.to(vae.dtype), return_dict=False)[0][:, :, 0])


class QwenImageEditPlusPolicy(QwenImageEditPolicy):
    family = "qwen_image_edit_plus"
    plus = True

    @classmethod
    def pipeline_class(cls) -> type:
        from diffusers import QwenImageEditPlusPipeline

        return QwenImageEditPlusPipeline

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
from cocoedit.actors.policies.architecture import (
    REAL_VOCAB,
    TINY_MAX_SEQUENCE_LENGTH,
    Architecture,
    ModelSpec,
    byte_chars,
    tiny_rope,
)
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

# FLUX.1-dev's scheduler (resolution-dependent exponential shift).
FLUX_SCHEDULER = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)


def _clip_tokenizer(max_length: int) -> Any:
    from transformers import CLIPTokenizer

    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _t5_tokenizer(max_length: int) -> Any:
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/ "
    pieces += [(c, -3.0) for c in letters]
    pieces += [("\u2581" + c, -2.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


class FluxKontextArchitecture(Architecture):
    """FLUX.1-Kontext-dev: transformer hidden 3072 (24 heads x 128), joint attention 4096, pooled 768,
    guidance embeds, rope axes (16, 56, 56), 19 dual-stream + 38 single-stream blocks; the FLUX VAE
    (16 latent channels, factor 8); CLIP-L (768) and T5-XXL (4096) text encoders (12 and 24 layers)."""

    block_keys = ("num_layers", "num_single_layers")

    @classmethod
    def tiny_spec(
        cls,
        family: str,
        *,
        num_layers: int,
        num_single_layers: int,
        num_attention_heads: int,
        attention_head_dim: int,
        text_dim: int,
        vae_channels: int,
        vae_blocks: int,
        latent_channels: Optional[int],
    ) -> ModelSpec:
        rope = tiny_rope(attention_head_dim)
        latent = latent_channels or 16
        return ModelSpec(
            family=family,
            transformer=dict(
                patch_size=1,
                in_channels=4 * latent,
                num_layers=num_layers,
                num_single_layers=num_single_layers,
                attention_head_dim=attention_head_dim,
                num_attention_heads=num_attention_heads,
                joint_attention_dim=text_dim,
                pooled_projection_dim=text_dim,
                guidance_embeds=True,
                axes_dims_rope=rope,
            ),
            text_encoder=dict(
                hidden_size=text_dim,
                intermediate_size=2 * text_dim,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=TINY_MAX_SEQUENCE_LENGTH,
                projection_dim=text_dim,
            ),
            text_encoder_2=dict(
                d_model=text_dim,
                d_kv=text_dim // 4,
                d_ff=2 * text_dim,
                num_layers=1,
                num_heads=4,
                relative_attention_num_buckets=8,
            ),
            vae=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * vae_blocks,
                up_block_types=("UpDecoderBlock2D",) * vae_blocks,
                block_out_channels=(vae_channels,) * vae_blocks,
                layers_per_block=1,
                latent_channels=latent,
                norm_num_groups=min(8, vae_channels),
                use_quant_conv=False,
                use_post_quant_conv=False,
                shift_factor=0.0609,
                scaling_factor=1.5035,
            ),
        )

    @classmethod
    def real_spec(cls, family: str, depth: Optional[int], real_vocab: bool) -> ModelSpec:
        full = depth is None
        return ModelSpec(
            family=family,
            transformer=dict(
                patch_size=1,
                in_channels=64,
                num_layers=19 if full else depth,
                num_single_layers=38 if full else depth,
                attention_head_dim=128,
                num_attention_heads=24,
                joint_attention_dim=4096,
                pooled_projection_dim=768,
                guidance_embeds=True,
                axes_dims_rope=(16, 56, 56),
            ),
            # CLIP ViT-L/14's text tower
            text_encoder=dict(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12 if full else 1,
                num_attention_heads=12,
                max_position_embeddings=77,
                projection_dim=768,
                hidden_act="quick_gelu",
                **({"vocab_size": REAL_VOCAB["clip"]} if real_vocab else {}),
            ),
            # T5 v1.1 XXL's encoder
            text_encoder_2=dict(
                d_model=4096,
                d_kv=64,
                d_ff=10240,
                num_layers=24 if full else 1,
                num_heads=64,
                relative_attention_num_buckets=32,
                relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu",
                layer_norm_epsilon=1e-6,
                tie_word_embeddings=False,
                **({"vocab_size": REAL_VOCAB["t5"]} if real_vocab else {}),
            ),
            # FLUX.1-dev's VAE (16 latent channels, factor 8)
            vae=dict(
                in_channels=3,
                out_channels=3,
                down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4,
                block_out_channels=(128, 256, 512, 512),
                layers_per_block=2,
                act_fn="silu",
                latent_channels=16,
                norm_num_groups=32,
                sample_size=1024,
                force_upcast=True,
                use_quant_conv=False,
                use_post_quant_conv=False,
                mid_block_add_attention=True,
                shift_factor=0.1159,
                scaling_factor=0.3611,
            ),
            token_limits=(77, 512),
        )

    @classmethod
    def assemble(cls, spec: ModelSpec, pipeline_class: type) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

        assert spec.text_encoder_2 is not None
        transformer = cls.transformer_class()(**spec.transformer)
        clip_tok = _clip_tokenizer(spec.token_limits[0])
        clip = CLIPTextModel(
            CLIPTextConfig(
                **{"vocab_size": len(clip_tok), **spec.text_encoder},
                bos_token_id=clip_tok.bos_token_id,
                eos_token_id=clip_tok.eos_token_id,
                pad_token_id=clip_tok.pad_token_id,
            )
        )
        t5_tok = _t5_tokenizer(spec.token_limits[1])
        t5 = T5EncoderModel(
            T5Config(
                **{"vocab_size": len(t5_tok), **spec.text_encoder_2},
                decoder_start_token_id=0,  # type: ignore[call-arg]  # T5Config takes it through **kwargs
                pad_token_id=t5_tok.pad_token_id,
                eos_token_id=t5_tok.eos_token_id,
            )
        )
        vae = cls.vae_class()(**spec.vae)
        # eval(): T5 dropout is on by default and would make runs differ
        return pipeline_class(
            scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
            vae=vae.eval(),
            text_encoder=clip.eval(),
            tokenizer=clip_tok,
            text_encoder_2=t5.eval(),
            tokenizer_2=t5_tok,
            transformer=transformer.eval(),
        )

    @classmethod
    def transformer_class(cls) -> type:
        from diffusers import FluxTransformer2DModel

        return FluxTransformer2DModel

    @classmethod
    def vae_class(cls) -> type:
        from diffusers import AutoencoderKL

        return AutoencoderKL

    @staticmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        return 2 ** (len(vae_config["block_out_channels"]) - 1), vae_config["latent_channels"]

    @classmethod
    def text_tokens(cls, max_sequence_length: int) -> int:
        # T5 pads to max_sequence_length, which its tokenizer caps at 512
        return min(max_sequence_length, 512)

    @classmethod
    def transformer_inputs(
        cls, config: dict[str, Any], batch: int, side: int, text_tokens: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        length = 2 * side * side

        def empty(*shape: int, dtype: torch.dtype = dtype) -> torch.Tensor:
            return torch.empty(*shape, device="meta", dtype=dtype)

        return dict(
            hidden_states=empty(batch, length, config["in_channels"]),
            encoder_hidden_states=empty(batch, text_tokens, config["joint_attention_dim"]),
            pooled_projections=empty(batch, config["pooled_projection_dim"]),
            timestep=empty(batch),
            guidance=empty(batch, dtype=torch.float32) if config.get("guidance_embeds") else None,
            txt_ids=empty(text_tokens, 3),
            img_ids=empty(length, 3),
            return_dict=False,
        )


class FluxKontextPolicy(DiffusersEditPolicy):
    family = "flux_kontext"
    architecture = FluxKontextArchitecture
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

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

import re
from typing import Any, Optional

import torch
from PIL import Image

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies.architecture import REAL_VOCAB, Architecture, ModelSpec, byte_chars, tiny_rope
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

# Qwen-Image's scheduler (exponential shift + terminal stretch to 0.02).
QWEN_SCHEDULER = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    invert_sigmas=False,
    max_image_seq_len=8192,
    max_shift=0.9,
    num_train_timesteps=1000,
    shift=1.0,
    shift_terminal=0.02,
    stochastic_sampling=False,
    time_shift_type="exponential",
    use_beta_sigmas=False,
    use_dynamic_shifting=True,
    use_exponential_sigmas=False,
    use_karras_sigmas=False,
)

# Per-channel latent statistics of Qwen-Image's VAE (its config.json).
# fmt: off
QWEN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
QWEN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# fmt: on

# Qwen-Image-Edit's chat template up to the user turn (identical in the Edit and Edit-Plus pipelines).
_SYSTEM = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate."
)
_PREFIX = "<|im_start|>system\n"
_SUFFIX = "<|im_end|>\n<|im_start|>user\n"
_DROP_IDX = 64


def _qwen_tokenizer() -> Any:
    from transformers import Qwen2Tokenizer

    from cocoedit.rewards.tiny_judge import SPECIAL_TOKENS  # the Qwen2.5-VL special tokens

    vocab = {c: i for i, c in enumerate(byte_chars())}
    for special in SPECIAL_TOKENS:
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    # The pipelines drop the first 64 tokens (the system prompt in the real tokenizer). Whole-word
    # tokens for the system prompt make the built tokenizer drop exactly that prefix too, and keep the
    # text sequence short; words are halved until the prefix is 64 tokens.
    words = re.findall(r"\s?\S+", _SYSTEM)
    base = len(tok(_PREFIX + _SUFFIX).input_ids)
    while base + len(words) < _DROP_IDX:
        i = max(range(len(words)), key=lambda j: len(words[j]))
        words[i : i + 1] = [words[i][: len(words[i]) // 2], words[i][len(words[i]) // 2 :]]
    tok.add_tokens(words)
    n = len(tok(_PREFIX + _SYSTEM + _SUFFIX).input_ids)
    if n != _DROP_IDX:
        raise RuntimeError(f"built Qwen tokenizer: system prompt prefix is {n} tokens, the pipelines drop 64")
    return tok


class QwenImageArchitecture(Architecture):
    """Qwen-Image-Edit(-Plus): the Qwen-Image transformer (3072 = 24 x 128, text width 3584, rope
    (16, 56, 56), 60 blocks of one kind); the Qwen-Image VAE (Wan-2.1 layout, 16 latent channels,
    factor 8, on [N, C, frames, H, W]); a Qwen2.5-VL-7B text encoder (3584 wide, 28 heads / 4 KV heads,
    28 layers; vision tower 1280 wide, 32 layers)."""

    block_keys = ("num_layers",)
    vae_frames = True

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
        latent = latent_channels or 4
        # The Qwen2.5-VL language model keeps 3-axis mrope; its sections must sum to head_dim / 2.
        lm_head_dim = 16
        return ModelSpec(
            family=family,
            transformer=dict(
                patch_size=2,
                in_channels=4 * latent,
                out_channels=latent,
                num_layers=num_layers + num_single_layers,
                attention_head_dim=attention_head_dim,
                num_attention_heads=num_attention_heads,
                joint_attention_dim=text_dim,
                axes_dims_rope=rope,
            ),
            text_encoder=dict(
                text_config=dict(
                    hidden_size=text_dim,
                    intermediate_size=2 * text_dim,
                    num_hidden_layers=1,
                    num_attention_heads=text_dim // lm_head_dim,
                    num_key_value_heads=text_dim // lm_head_dim,
                    head_dim=lm_head_dim,
                    max_position_embeddings=4096,
                    rope_parameters={
                        "rope_type": "default",
                        "rope_theta": 10000.0,
                        "mrope_section": [2, 3, 3],
                    },
                ),
                vision_config=dict(
                    depth=1,
                    hidden_size=16,
                    intermediate_size=32,
                    num_heads=2,
                    out_hidden_size=text_dim,
                    patch_size=14,
                    spatial_merge_size=2,
                    temporal_patch_size=2,
                    window_size=112,
                    fullatt_block_indexes=[0],
                ),
            ),
            # vae_scale_factor = 2 ** len(temperal_downsample); dim_mult has one more entry than the list.
            vae=dict(
                base_dim=vae_channels,
                z_dim=latent,
                dim_mult=[1] * vae_blocks,
                num_res_blocks=1,
                temperal_downsample=[False] * (vae_blocks - 1),
                latents_mean=[0.0] * latent,
                latents_std=[1.0] * latent,
            ),
        )

    @classmethod
    def real_spec(cls, family: str, depth: Optional[int], real_vocab: bool) -> ModelSpec:
        full = depth is None
        return ModelSpec(
            family=family,
            transformer=dict(
                patch_size=2,
                in_channels=64,
                out_channels=16,
                num_layers=60 if full else depth,
                attention_head_dim=128,
                num_attention_heads=24,
                joint_attention_dim=3584,
                guidance_embeds=False,
                axes_dims_rope=(16, 56, 56),
            ),
            # Qwen2.5-VL-7B-Instruct
            text_encoder=dict(
                text_config=dict(
                    hidden_size=3584,
                    intermediate_size=18944,
                    num_hidden_layers=28 if full else 1,
                    num_attention_heads=28,
                    num_key_value_heads=4,
                    head_dim=128,
                    hidden_act="silu",
                    rms_norm_eps=1e-6,
                    max_position_embeddings=128000,
                    tie_word_embeddings=False,
                    rope_parameters={
                        "rope_type": "default",
                        "rope_theta": 1000000.0,
                        "mrope_section": [16, 24, 24],
                    },
                    **({"vocab_size": REAL_VOCAB["qwen"]} if real_vocab else {}),
                ),
                vision_config=dict(
                    depth=32 if full else 1,
                    hidden_size=1280,
                    intermediate_size=3420,
                    num_heads=16,
                    in_chans=3,
                    out_hidden_size=3584,
                    patch_size=14,
                    spatial_merge_size=2,
                    temporal_patch_size=2,
                    window_size=112,
                    fullatt_block_indexes=[7, 15, 23, 31],
                    hidden_act="silu",
                ),
                tie_word_embeddings=False,
            ),
            # Qwen-Image's VAE (Wan-2.1 layout: causal 3-D convolutions, 16 latent channels, factor 8)
            vae=dict(
                base_dim=96,
                z_dim=16,
                dim_mult=[1, 2, 4, 4],
                num_res_blocks=2,
                attn_scales=[],
                temperal_downsample=[False, True, True],
                dropout=0.0,
                latents_mean=list(QWEN_LATENTS_MEAN),
                latents_std=list(QWEN_LATENTS_STD),
            ),
            image_pixels=(3136, 12845056),  # Qwen2.5-VL's processor
        )

    @classmethod
    def assemble(cls, spec: ModelSpec, pipeline_class: type) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLForConditionalGeneration,
            Qwen2VLImageProcessor,
            Qwen2VLProcessor,
            Qwen2VLVideoProcessor,
        )

        from cocoedit.rewards.tiny_judge import SPECIAL_TOKENS

        tokenizer = _qwen_tokenizer()
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        text = dict(spec.text_encoder)
        text_config = {
            "vocab_size": len(tokenizer),
            **text.pop("text_config"),
            "pad_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "bos_token_id": None,
        }
        config = Qwen2_5_VLConfig(
            text_config=text_config,
            vision_config=text.pop("vision_config"),
            image_token_id=ids["<|image_pad|>"],
            video_token_id=ids["<|video_pad|>"],
            vision_start_token_id=ids["<|vision_start|>"],
            vision_end_token_id=ids["<|vision_end|>"],
            **text,
        )
        text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
        min_pixels, max_pixels = spec.image_pixels
        processor = Qwen2VLProcessor(
            image_processor=Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
            tokenizer=tokenizer,
            video_processor=Qwen2VLVideoProcessor(),
        )
        transformer = cls.transformer_class()(**spec.transformer).eval()
        vae = cls.vae_class()(**spec.vae).eval()
        return pipeline_class(
            scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER),
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            processor=processor,
            transformer=transformer,
        )

    @classmethod
    def transformer_class(cls) -> type:
        from diffusers import QwenImageTransformer2DModel

        return QwenImageTransformer2DModel

    @classmethod
    def vae_class(cls) -> type:
        from diffusers import AutoencoderKLQwenImage

        return AutoencoderKLQwenImage

    @staticmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        return 2 ** len(vae_config["temperal_downsample"]), vae_config["z_dim"]

    @classmethod
    def transformer_inputs(
        cls, config: dict[str, Any], batch: int, side: int, text_tokens: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        # the policy trims the text padding to the longest prompt, which max_sequence_length bounds
        return dict(
            hidden_states=torch.empty(
                batch, 2 * side * side, config["in_channels"], device="meta", dtype=dtype
            ),
            encoder_hidden_states=torch.empty(
                batch, text_tokens, config["joint_attention_dim"], device="meta", dtype=dtype
            ),
            encoder_hidden_states_mask=None,
            timestep=torch.empty(batch, device="meta", dtype=dtype),
            img_shapes=[[(1, side, side), (1, side, side)]] * batch,
            return_dict=False,
        )


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
    architecture = QwenImageArchitecture
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

"""Tiny editors built in code: the real diffusers / transformers classes with tiny configs and
tokenizers built from an in-memory vocabulary (no hub access). Used by tests, the CPU tiny mode and the
lead's synthetic pre-training.

    path = build_tiny_model("flux_kontext", "/tmp/tiny_flux")     # a normal diffusers directory
    pipe = FluxKontextPipeline.from_pretrained(path)               # loads like any checkpoint

Size knobs (keyword args of `build_tiny_model`) trade capacity for speed: `num_layers` (dual-stream
blocks), `num_single_layers`, `num_attention_heads`, `attention_head_dim`, `text_dim` (text encoders and
the transformer's joint attention width), `vae_channels`, `vae_blocks` (VAE down-sampling factor is
2 ** (vae_blocks - 1); with the 2x2 packing one token covers (2 ** vae_blocks) ** 2 pixels).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch

from cocoedit.actors.policies import FAMILIES

TINY_MAX_SEQUENCE_LENGTH = 32  # T5 / CLIP token budget of the tiny tokenizers (model_max_length)

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

_QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


# Qwen-Image-Edit's chat template up to the user turn (identical in the Edit and Edit-Plus pipelines).
_QWEN_SYSTEM = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate."
)
_QWEN_PREFIX = "<|im_start|>system\n"
_QWEN_SUFFIX = "<|im_end|>\n<|im_start|>user\n"
_QWEN_DROP_IDX = 64


def _byte_chars() -> list[str]:
    """The 256 printable stand-ins of GPT-2 style byte-level BPE (every byte is one vocab entry)."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def _clip_tokenizer(max_length: int):
    from transformers import CLIPTokenizer

    chars = _byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab[tok] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _t5_tokenizer(max_length: int):
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"-()/ "
    pieces += [(c, -3.0) for c in letters]
    pieces += [("\u2581" + c, -2.5) for c in letters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=max_length)


def _qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for tok in _QWEN_SPECIAL:
        vocab[tok] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": _QWEN_SPECIAL[1:]})
    # The pipelines drop the first 64 tokens (the system prompt in the real tokenizer). Whole-word
    # tokens for the system prompt make the tiny tokenizer drop exactly that prefix too, and keep the
    # text sequence short; words are halved until the prefix is 64 tokens.
    words = re.findall(r"\s?\S+", _QWEN_SYSTEM)
    base = len(tok(_QWEN_PREFIX + _QWEN_SUFFIX).input_ids)
    while base + len(words) < _QWEN_DROP_IDX:
        i = max(range(len(words)), key=lambda j: len(words[j]))
        words[i : i + 1] = [words[i][: len(words[i]) // 2], words[i][len(words[i]) // 2 :]]
    tok.add_tokens(words)
    n = len(tok(_QWEN_PREFIX + _QWEN_SYSTEM + _QWEN_SUFFIX).input_ids)
    if n != _QWEN_DROP_IDX:
        raise RuntimeError(f"tiny Qwen tokenizer: system prompt prefix is {n} tokens, the pipelines drop 64")
    return tok


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown policy family {family!r}; expected one of {sorted(FAMILIES)}")


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
    `attention_head_dim` must be divisible by 4 (it is split over the 3 rope axes as h/4, 3h/8, 3h/8).
    """
    _check_family(family)
    if attention_head_dim % 8:
        raise ValueError(f"attention_head_dim={attention_head_dim} must be a multiple of 8 (rope axes)")
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rope = (attention_head_dim // 4, 3 * attention_head_dim // 8, 3 * attention_head_dim // 8)
    if family == "flux_kontext":
        pipe = _tiny_flux(
            num_layers,
            num_single_layers,
            num_attention_heads,
            attention_head_dim,
            rope,
            text_dim,
            vae_channels,
            vae_blocks,
            latent_channels or 16,
        )
    else:
        pipe = _tiny_qwen(
            family,
            num_layers + num_single_layers,
            num_attention_heads,
            attention_head_dim,
            rope,
            text_dim,
            vae_channels,
            vae_blocks,
            latent_channels or 4,
        )
    pipe.save_pretrained(out)
    return out


def _tiny_flux(
    num_layers: int,
    num_single_layers: int,
    heads: int,
    head_dim: int,
    rope: tuple[int, int, int],
    text_dim: int,
    vae_channels: int,
    vae_blocks: int,
    latent_channels: int,
) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * latent_channels,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        pooled_projection_dim=text_dim,
        guidance_embeds=True,
        axes_dims_rope=rope,
    )
    clip_tok = _clip_tokenizer(TINY_MAX_SEQUENCE_LENGTH)
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=TINY_MAX_SEQUENCE_LENGTH,
            projection_dim=text_dim,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    t5_tok = _t5_tokenizer(TINY_MAX_SEQUENCE_LENGTH)
    t5 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok),
            d_model=text_dim,
            d_kv=text_dim // 4,
            d_ff=2 * text_dim,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * vae_blocks,
        up_block_types=("UpDecoderBlock2D",) * vae_blocks,
        block_out_channels=(vae_channels,) * vae_blocks,
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=min(8, vae_channels),
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    pipe = FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae.eval(),
        text_encoder=clip.eval(),
        tokenizer=clip_tok,
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tok,
        transformer=transformer.eval(),
    )
    return pipe


def _tiny_qwen(
    family: str,
    num_layers: int,
    heads: int,
    head_dim: int,
    rope: tuple[int, int, int],
    text_dim: int,
    vae_channels: int,
    vae_blocks: int,
    latent_channels: int,
) -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageEditPlusPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tokenizer = _qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in _QWEN_SPECIAL}
    # The Qwen2.5-VL language model keeps 3-axis mrope; its sections must sum to head_dim / 2.
    lm_head_dim = 16
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=2 * text_dim,
            num_hidden_layers=1,
            num_attention_heads=text_dim // lm_head_dim,
            num_key_value_heads=text_dim // lm_head_dim,
            head_dim=lm_head_dim,
            max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
            pad_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            bos_token_id=None,
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
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config).eval()
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * latent_channels,
        out_channels=latent_channels,
        num_layers=num_layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=text_dim,
        axes_dims_rope=rope,
    ).eval()
    # vae_scale_factor = 2 ** len(temperal_downsample); dim_mult has one more entry than the list.
    vae = AutoencoderKLQwenImage(
        base_dim=vae_channels,
        z_dim=latent_channels,
        dim_mult=[1] * vae_blocks,
        num_res_blocks=1,
        temperal_downsample=[False] * (vae_blocks - 1),
        latents_mean=[0.0] * latent_channels,
        latents_std=[1.0] * latent_channels,
    ).eval()
    cls = QwenImageEditPlusPipeline if family == "qwen_image_edit_plus" else QwenImageEditPipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )

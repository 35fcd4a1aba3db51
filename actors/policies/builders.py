"""Editors built in code: the real diffusers / transformers classes with random (seeded) weights and
tokenizers built from an in-memory vocabulary (no hub access). One code path, two sizes:

- `dims="tiny"`: a few dozen units wide (tests, the CPU tiny mode; `tiny.build_tiny_model`);
- `dims="real"`: the published widths of FLUX.1-Kontext-dev and Qwen-Image-Edit(-2509) at a chosen
  depth, to dry-run a production config on a workstation (`cocoedit train --config X --dry-run`) and
  to size memory (`cocoedit plan`).

    cocoedit build-model --family flux_kontext --dims real --depth 1 --out /tmp/flux_d1
    path = build_model("qwen_image_edit", "/tmp/qwen_d1", dims="real", depth=1)

Real dims (depth d; None = the full model):
- FLUX.1-Kontext-dev: transformer hidden 3072 (24 heads x 128), joint attention 4096, pooled 768,
  guidance embeds, rope axes (16, 56, 56), d dual-stream + d single-stream blocks (full: 19 + 38);
  the FLUX VAE; CLIP-L (768) and T5-XXL (4096) text encoders with 1 layer each (full: 12 and 24).
- Qwen-Image-Edit(-Plus): the Qwen-Image transformer (3072 = 24 x 128, text width 3584, rope
  (16, 56, 56)) with d blocks (full: 60); the Qwen-Image VAE; a Qwen2.5-VL-7B text encoder (3584 wide,
  28 heads / 4 KV heads, vision tower 1280 wide) with 1 language and 1 vision layer (full: 28 and 32).
Text encoders use the vocabulary of the offline tokenizer (a few hundred tokens) unless the spec says
otherwise (`real_vocab=True`, what `cocoedit plan` counts); every other width is the published one.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from cocoedit.actors.policies import FAMILIES
from cocoedit.rewards.tiny_judge import SPECIAL_TOKENS

Dims = Literal["tiny", "real"]

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

# Per-channel latent statistics of Qwen-Image's VAE (its config.json).
# fmt: off
QWEN_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                     0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
QWEN_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# fmt: on

# Vocabulary sizes of the published tokenizers (only used when a spec asks for real_vocab).
REAL_VOCAB = {"clip": 49408, "t5": 32128, "qwen": 152064}


@dataclass(frozen=True)
class ModelSpec:
    """Every size setting of an editor: the constructor arguments of each component.

    transformer: FluxTransformer2DModel / QwenImageTransformer2DModel kwargs; vae: AutoencoderKL /
    AutoencoderKLQwenImage kwargs; text_encoder: CLIPTextConfig (FLUX) or Qwen2_5_VLConfig (Qwen) kwargs;
    text_encoder_2: T5Config kwargs (FLUX). A text config without `vocab_size` gets its tokenizer's.
    """

    family: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: Optional[dict[str, Any]] = None
    token_limits: tuple[int, int] = (TINY_MAX_SEQUENCE_LENGTH, TINY_MAX_SEQUENCE_LENGTH)  # FLUX: CLIP, T5
    image_pixels: tuple[int, int] = (56 * 56, 112 * 112)  # Qwen processor: min, max pixels per image


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


_QWEN_SPECIAL = SPECIAL_TOKENS  # the Qwen2.5-VL special tokens the judge tokenizer has too
# Qwen-Image-Edit's chat template up to the user turn (identical in the Edit and Edit-Plus pipelines).
_QWEN_SYSTEM = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), then "
    "explain how the user's text instruction should alter or modify the image. Generate a new image that "
    "meets the user's requirements while maintaining consistency with the original input where appropriate."
)
_QWEN_PREFIX = "<|im_start|>system\n"
_QWEN_SUFFIX = "<|im_end|>\n<|im_start|>user\n"
_QWEN_DROP_IDX = 64


def _qwen_tokenizer():
    from transformers import Qwen2Tokenizer

    vocab = {c: i for i, c in enumerate(_byte_chars())}
    for special in _QWEN_SPECIAL:
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=[], model_max_length=4096)
    tok.add_special_tokens({"additional_special_tokens": _QWEN_SPECIAL[1:]})
    # The pipelines drop the first 64 tokens (the system prompt in the real tokenizer). Whole-word
    # tokens for the system prompt make the built tokenizer drop exactly that prefix too, and keep the
    # text sequence short; words are halved until the prefix is 64 tokens.
    words = re.findall(r"\s?\S+", _QWEN_SYSTEM)
    base = len(tok(_QWEN_PREFIX + _QWEN_SUFFIX).input_ids)
    while base + len(words) < _QWEN_DROP_IDX:
        i = max(range(len(words)), key=lambda j: len(words[j]))
        words[i : i + 1] = [words[i][: len(words[i]) // 2], words[i][len(words[i]) // 2 :]]
    tok.add_tokens(words)
    n = len(tok(_QWEN_PREFIX + _QWEN_SYSTEM + _QWEN_SUFFIX).input_ids)
    if n != _QWEN_DROP_IDX:
        raise RuntimeError(f"built Qwen tokenizer: system prompt prefix is {n} tokens, the pipelines drop 64")
    return tok


def _check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"unknown policy family {family!r}; expected one of {sorted(FAMILIES)}")


# ----------------------------------------------------------------------------------------------------
# specs


def tiny_spec(
    family: str,
    *,
    num_layers: int = 2,
    num_single_layers: int = 2,
    num_attention_heads: int = 4,
    attention_head_dim: int = 16,
    text_dim: int = 32,
    vae_channels: int = 16,
    vae_blocks: int = 2,
    latent_channels: Optional[int] = None,
) -> ModelSpec:
    """The tiny editor's spec (see tiny.build_tiny_model for the knobs)."""
    _check_family(family)
    if attention_head_dim % 8:
        raise ValueError(f"attention_head_dim={attention_head_dim} must be a multiple of 8 (rope axes)")
    rope = (attention_head_dim // 4, 3 * attention_head_dim // 8, 3 * attention_head_dim // 8)
    if family == "flux_kontext":
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
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
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


def real_spec(family: str, depth: Optional[int] = None, real_vocab: bool = False) -> ModelSpec:
    """The published widths of `family` with `depth` transformer blocks (FLUX: depth dual-stream +
    depth single-stream; Qwen: depth) and 1-layer text encoders; depth=None: the full model, text
    encoders included. real_vocab: the published tokenizers' vocabulary sizes (for counting)."""
    _check_family(family)
    if depth is not None and depth < 1:
        raise ValueError(f"depth={depth} must be >= 1 (or None for the full model)")
    full = depth is None
    if family == "flux_kontext":
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


def model_spec(family: str, dims: Dims = "tiny", depth: Optional[int] = None, **size: Any) -> ModelSpec:
    """The spec of a `dims` editor of `family`: tiny (size kwargs of tiny_spec; depth sets both block
    counts) or real (real_spec; no size kwargs)."""
    if dims == "tiny":
        if depth is not None:
            size = {"num_layers": depth, "num_single_layers": depth, **size}
        return tiny_spec(family, **size)
    if dims == "real":
        if size:
            raise ValueError(
                f"dims='real' takes the published widths; size settings {sorted(size)} are tiny-only"
            )
        return real_spec(family, depth if depth is not None else 1)
    raise ValueError(f"dims={dims!r} must be 'tiny' or 'real'")


# ----------------------------------------------------------------------------------------------------
# building


def assemble(spec: ModelSpec) -> Any:
    """The diffusers pipeline of `spec` with freshly initialised weights (global torch RNG; float32).

    Under `with torch.device("meta")` nothing is allocated: `cocoedit plan` counts parameters that way."""
    if spec.family == "flux_kontext":
        return _assemble_flux(spec)
    return _assemble_qwen(spec)


def _assemble_flux(spec: ModelSpec) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxKontextPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    assert spec.text_encoder_2 is not None
    transformer = FluxTransformer2DModel(**spec.transformer)
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
        T5Config(  # type: ignore[call-arg]  # token ids go through PreTrainedConfig's **kwargs
            **{"vocab_size": len(t5_tok), **spec.text_encoder_2},
            decoder_start_token_id=0,
            pad_token_id=t5_tok.pad_token_id,
            eos_token_id=t5_tok.eos_token_id,
        )
    )
    vae = AutoencoderKL(**spec.vae)
    # eval(): T5 dropout is on by default and would make runs differ
    return FluxKontextPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER),
        vae=vae.eval(),  # type: ignore[attr-defined]  # mypy sees diffusers' dummy class
        text_encoder=clip.eval(),
        tokenizer=clip_tok,
        text_encoder_2=t5.eval(),
        tokenizer_2=t5_tok,
        transformer=transformer.eval(),  # type: ignore[attr-defined]  # mypy sees diffusers' dummy class
    )


def _assemble_qwen(spec: ModelSpec) -> Any:
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
    transformer = QwenImageTransformer2DModel(**spec.transformer).eval()  # type: ignore[attr-defined]  # mypy sees diffusers' dummy class
    vae = AutoencoderKLQwenImage(**spec.vae).eval()  # type: ignore[attr-defined]  # mypy sees diffusers' dummy class
    cls = QwenImageEditPlusPipeline if spec.family == "qwen_image_edit_plus" else QwenImageEditPipeline
    return cls(
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )


def build_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    *,
    dims: Dims = "tiny",
    depth: Optional[int] = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    **size: Any,
) -> Path:
    """Build an editor of `family` with random weights (seeded) and save it as a diffusers directory
    that `<Pipeline>.from_pretrained(out_dir)` loads. Returns out_dir.

    dims="tiny": size kwargs as tiny.build_tiny_model; dims="real": the published widths with `depth`
    blocks (default 1). dtype: the saved weights' type (bfloat16 halves the disk; loading casts).
    A real-dims FLUX of depth 1 is ~0.55 B transformer parameters + 0.28 B in the text encoders and VAE:
    ~3.3 GB of float32 while building."""
    from cocoedit.actors.policies.common import DTYPES

    _check_family(family)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    spec = model_spec(family, dims, depth, **size)
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = assemble(spec)
    if dtype != "float32":
        pipe.to(dtype=DTYPES[dtype])
    pipe.save_pretrained(out)
    return out


def safetensors_shapes(directory: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype)} of the *.safetensors files in `directory`, read from
    their headers (nothing is loaded)."""
    import json
    import struct

    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                tensors[name] = (tuple(meta["shape"]), meta["dtype"])
    return tensors


def parameter_counts(model_dir: str | Path) -> dict[str, int]:
    """component -> number of parameters (elements of its saved tensors) of a diffusers directory;
    components without safetensors weights (tokenizers, scheduler) are left out."""
    counts = {}
    for sub in sorted(p for p in Path(model_dir).iterdir() if p.is_dir()):
        tensors = safetensors_shapes(sub)
        if tensors:
            counts[sub.name] = sum(math.prod(shape) for shape, _ in tensors.values())
    return counts


def cli_build_model(args: argparse.Namespace) -> int:
    """`cocoedit build-model --family F [--dims tiny|real] [--depth N] --out DIR`: write an editor with
    random weights (a real-dims one to dry-run a cluster config on a workstation)."""
    import time

    start = time.perf_counter()
    path = build_model(args.family, args.out, args.seed, dims=args.dims, depth=args.depth, dtype=args.dtype)
    depth = args.depth if args.depth is not None else (1 if args.dims == "real" else "default")
    print(f"{args.family}, {args.dims} dims, depth {depth}: {path} ({time.perf_counter() - start:.0f} s)")
    for component, n in parameter_counts(path).items():
        print(f"  {component:<16} {n / 1e6:10.1f} M parameters")
    return 0

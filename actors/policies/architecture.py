"""What building, counting and simulating an editor needs of its family (`Architecture`), and the size
settings of one editor (`ModelSpec`).

Every family-specific fact outside the running policy lives in the family's module as an
`Architecture` subclass that its EditPolicy names (`FluxKontextPolicy.architecture`): its tiny and
published specs, how the components assemble into the stock pipeline, the transformer and VAE classes,
which config keys count transformer blocks, and the inputs of one velocity call as the policy builds
them. `builders.py` (build-model) and `cocoedit plan` (memory and FLOPs on the meta device) reach a
family only through it, so no code outside the family modules compares family names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

TINY_MAX_SEQUENCE_LENGTH = 32  # T5 / CLIP token budget of the tiny tokenizers (model_max_length)

# Vocabulary sizes of the published tokenizers (only used when a spec asks for real_vocab).
REAL_VOCAB = {"clip": 49408, "t5": 32128, "qwen": 152064}


@dataclass(frozen=True)
class ModelSpec:
    """Every size setting of an editor: the constructor arguments of each component.

    transformer / vae: the family's transformer and VAE class kwargs; text_encoder, text_encoder_2: the
    family's text-encoder config kwargs (a text config without `vocab_size` gets its tokenizer's).
    """

    family: str
    transformer: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]
    text_encoder_2: Optional[dict[str, Any]] = None
    token_limits: tuple[int, int] = (TINY_MAX_SEQUENCE_LENGTH, TINY_MAX_SEQUENCE_LENGTH)  # FLUX: CLIP, T5
    image_pixels: tuple[int, int] = (56 * 56, 112 * 112)  # Qwen processor: min, max pixels per image


def byte_chars() -> list[str]:
    """The 256 printable stand-ins of GPT-2 style byte-level BPE (every byte is one vocab entry)."""
    from tokenizers.pre_tokenizers import ByteLevel

    return sorted(ByteLevel.alphabet())


def tiny_rope(attention_head_dim: int) -> tuple[int, int, int]:
    """Rope axes of a tiny transformer: the head dim split h/4, 3h/8, 3h/8 over (frame, row, column)."""
    if attention_head_dim % 8:
        raise ValueError(f"attention_head_dim={attention_head_dim} must be a multiple of 8 (rope axes)")
    return attention_head_dim // 4, 3 * attention_head_dim // 8, 3 * attention_head_dim // 8


class Architecture(ABC):
    """A family's architecture, as classmethods (no instance: nothing to hold).

    Tiny size knobs (every family takes them, see tiny.build_tiny_model): num_layers,
    num_single_layers (a family with one kind of block gets num_layers + num_single_layers of them),
    num_attention_heads, attention_head_dim, text_dim, vae_channels, vae_blocks, latent_channels.
    """

    block_keys: ClassVar[tuple[str, ...]]  # transformer config keys that count its blocks
    vae_frames: ClassVar[bool] = False  # the VAE works on [N, C, frames, H, W] (one frame)

    @classmethod
    @abstractmethod
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
        """The tiny editor's spec."""

    @classmethod
    def real_spec(cls, family: str, depth: Optional[int], real_vocab: bool) -> ModelSpec:
        """The published widths with `depth` transformer blocks of each kind and 1-layer text encoders
        (depth None: the full model); real_vocab: the published tokenizers' vocabulary sizes."""
        raise ValueError(f"policy family {family!r} has no published size: use dims='tiny'")

    @classmethod
    @abstractmethod
    def assemble(cls, spec: ModelSpec, pipeline_class: type) -> Any:
        """`pipeline_class` built from `spec` with freshly initialised weights (global torch RNG)."""

    @classmethod
    @abstractmethod
    def transformer_class(cls) -> type:
        """The diffusers transformer class."""

    @classmethod
    @abstractmethod
    def vae_class(cls) -> type:
        """The diffusers VAE class."""

    @staticmethod
    @abstractmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        """(VAE down-sampling factor, latent channels) from the VAE's config (as the pipeline)."""

    @classmethod
    def text_tokens(cls, max_sequence_length: int) -> int:
        """Text tokens the transformer attends to at policy.max_sequence_length (the largest case)."""
        return max_sequence_length

    @classmethod
    @abstractmethod
    def transformer_inputs(
        cls, config: dict[str, Any], batch: int, side: int, text_tokens: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        """Meta-device kwargs of one velocity call as the policy builds them: `batch` edits of
        side x side packed target tokens plus as many source tokens, `text_tokens` text tokens."""

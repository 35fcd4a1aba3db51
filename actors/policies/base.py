"""The one narrow interface every edit-model family implements (docs/architecture.md, Policies).

Latents are *packed*: [N, L, D] token sequences as the diffusers transformers consume them
(FLUX packs 2x2 patches of the VAE latent; Qwen-Image likewise). `unpack` gives [N, C, h, w] on the
latent grid, which the region regularizer needs.

LoRA: one transformer carries two peft adapters, `default` (theta, trained) and `old` (theta_old,
samples); the reference policy is the transformer with adapters disabled.

Parts: a policy loaded with `parts="transformer"` (a learner rank: it never encodes or decodes) holds
the transformer and its LoRA views only; `encode_condition` and `decode` then refuse. `components()`
names the modules a policy holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cocoedit.actors.policies.architecture import Architecture
from cocoedit.actors.types import Condition

AdapterName = Literal["default", "old", "ref"]
Parts = Literal["all", "transformer"]
PARTS = ("all", "transformer")


class EditPolicy(ABC):
    transformer: nn.Module  # peft-wrapped, adapters "default" and "old"
    device: torch.device
    dtype: torch.dtype
    family: str
    parts: Parts
    ENCODING: tuple[str, ...] = ()  # components a parts="transformer" policy skips (cluster/plan reads it)
    # the family's specs, building and shapes (build-model, `cocoedit plan`): actors/policies/architecture.py
    architecture: ClassVar[type[Architecture]]

    @classmethod
    @abstractmethod
    def pipeline_class(cls) -> type[Any]:  # loader and LoRA mixins differ per family: attributes unchecked
        """The stock diffusers pipeline class of this family (what loads an exported LoRA)."""

    @classmethod
    def stock_call_kwargs(cls, pipe: object, height: int, width: int, guidance: float) -> dict:
        """Arguments the stock pipeline needs beyond image/prompt/size/generator to edit at exactly
        height x width with the family's distilled `guidance` (`cocoedit edit`); none by default."""
        return {}

    @abstractmethod
    def components(self) -> dict[str, nn.Module]:
        """The modules this policy holds, by pipeline component name (e.g. transformer, vae)."""

    @abstractmethod
    def scheduler_config(self) -> dict:
        """The flow-matching scheduler's config (shift parameters; see samplers.shifted_sigmas)."""

    @abstractmethod
    def check_size(self, height: int, width: int) -> None:
        """Raise ValueError naming the required multiple when height x width cannot be encoded."""

    @abstractmethod
    def latent_grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(C, h, w) of the VAE latent grid of a height x width image (before 2x2 packing)."""

    def merge_conditions(self, conditions: list[Condition]) -> Condition:
        """Concatenate per-item Conditions along the edit dimension."""
        return Condition.cat(conditions)

    @abstractmethod
    def encode_condition(self, instructions: list[str], source_images: torch.Tensor) -> Condition:
        """instructions: N strings; source_images: [N, 3, H, W] uint8. Returns the batched Condition,
        including the packed source-image latents (`image_latents`)."""

    @abstractmethod
    def source_latents(self, condition: Condition) -> torch.Tensor:
        """Packed source latents x_src [N, L, D] in the same layout as x0 (for the region regularizer)."""

    @abstractmethod
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        """x_t: [N, L, D] packed latents at flow time t: [N] in (0, 1] (1 = noise). Returns v: [N, L, D]
        with the currently active adapter. The source latents are concatenated along the sequence
        exactly as the diffusers pipeline does and the image-token part of the output is dropped."""

    @abstractmethod
    def decode(self, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents [N, L, D] -> images [N, 3, H, W] uint8."""

    @abstractmethod
    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        """[N, C, h, w] latent grid -> [N, L, D] packed."""

    @abstractmethod
    def unpack(self, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """[N, L, D] packed -> [N, C, h, w] latent grid, for an image of height x width pixels."""

    @abstractmethod
    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        """(L, D) of the packed latents for an image of height x width pixels."""

    @abstractmethod
    def adapter(self, name: AdapterName) -> AbstractContextManager[None]:
        """Context in which `velocity` uses adapter `name` ("ref" = adapters disabled)."""

    @abstractmethod
    def lora_state_dict(self, adapter: Literal["default", "old"]) -> dict[str, torch.Tensor]:
        """The adapter's LoRA weights (CPU tensors, peft key names without the adapter name)."""

    @abstractmethod
    def load_lora_state_dict(
        self, state: dict[str, torch.Tensor], adapter: Literal["default", "old"]
    ) -> None:
        """Inverse of lora_state_dict."""

    @abstractmethod
    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the `default` adapter (what the learner optimises)."""

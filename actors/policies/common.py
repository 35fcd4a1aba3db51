"""What every diffusers-backed edit policy shares: device/dtype resolution, the LoRA views, 2x2 packing."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Literal

import torch
from torch import nn

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import lora
from cocoedit.actors.policies.base import AdapterName, EditPolicy
from cocoedit.actors.types import Condition

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"policy.device={device!r} but no CUDA device is visible; use device: cpu or auto")
    return torch.device(device)


def require_model_path(cfg: PolicyConfig) -> str:
    if not cfg.model_path:
        raise ValueError(
            "policy.model_path is not set: point it at a local diffusers directory "
            "(for the tiny CPU mode build one with actors.policies.tiny.build_tiny_model)"
        )
    return cfg.model_path


def to_unit_float(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] uint8 -> float32 in [-1, 1] (what VaeImageProcessor.preprocess gives)."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"source images must be uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
    return images.float() / 255.0 * 2.0 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """VAE output in [-1, 1] [N, 3, H, W] -> uint8, rounded as diffusers' postprocess/numpy_to_pil does."""
    return ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class DiffusersEditPolicy(EditPolicy):
    """Shared part of FluxKontextPolicy and QwenImageEditPolicy (`self.pipe` is the stock pipeline)."""

    pipe: Any
    vae_scale_factor: int
    latent_channels: int

    def _setup(self, cfg: PolicyConfig, seed: int) -> None:
        self.cfg = cfg
        for name in ("text_encoder", "text_encoder_2", "vae", "transformer"):
            module = getattr(self.pipe, name, None)
            if module is not None:
                module.eval().requires_grad_(False)
        self.transformer = self.pipe.transformer
        lora.add_lora(
            self.transformer, cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets), cfg.lora_init, seed
        )
        self._active: str = "default"
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    @classmethod
    def pipeline_class(cls) -> type:
        raise NotImplementedError

    def merge_conditions(self, conditions: list[Condition]) -> Condition:
        """Concatenate per-item Conditions along the edit dimension."""
        return Condition.cat(conditions)

    def check_size(self, height: int, width: int) -> None:
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(
                f"image size {height}x{width} must be a multiple of {multiple} (VAE factor "
                f"{self.vae_scale_factor} x 2x2 packing) for {self.family}; resize the data (data.image_size)"
            )

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        self.check_size(height, width)
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        return (h // 2) * (w // 2), self.latent_channels * 4

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        n, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, n, c, h, w)

    def unpack(self, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self.check_size(height, width)
        out = self.pipe._unpack_latents(packed, height, width, self.vae_scale_factor)
        return out.squeeze(2) if out.ndim == 5 else out

    def adapter(self, name: AdapterName) -> AbstractContextManager[None]:
        if name not in ("default", "old", "ref"):
            raise ValueError(f"adapter must be 'default', 'old' or 'ref', got {name!r}")
        return lora.active_adapter(self.transformer, name, previous="default")

    def lora_state_dict(self, adapter: Literal["default", "old"]) -> dict[str, torch.Tensor]:
        return lora.adapter_state(self.transformer, adapter)

    def load_lora_state_dict(
        self, state: dict[str, torch.Tensor], adapter: Literal["default", "old"]
    ) -> None:
        lora.load_adapter_state(self.transformer, state, adapter)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return lora.trainable_lora_parameters(self.transformer)

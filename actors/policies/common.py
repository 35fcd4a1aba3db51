"""What every diffusers-backed edit policy shares: device/dtype resolution, loading the parts a role
needs, the LoRA views, 2x2 packing."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import lora
from cocoedit.actors.policies.base import PARTS, AdapterName, EditPolicy, Parts

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


MODULES = ("text_encoder", "text_encoder_2", "vae", "transformer")  # pipeline components with weights


class DiffusersEditPolicy(EditPolicy):
    """Shared part of FluxKontextPolicy and QwenImageEditPolicy (`self.pipe` is the stock pipeline,
    with None in place of the components a `parts="transformer"` policy does not load)."""

    pipe: Any
    transformer: Any  # diffusers model + peft: nn.Module.__getattr__ would type its methods Tensor | Module
    vae_scale_factor: int
    latent_channels: int
    # components a parts="transformer" policy skips (passed as None to from_pretrained)
    ENCODING: tuple[str, ...] = ()

    def _load_pipeline(self, cfg: PolicyConfig, parts: Parts) -> Any:
        if parts not in PARTS:
            raise ValueError(f"parts={parts!r} must be one of {PARTS}")
        skip = {} if parts == "all" else dict.fromkeys(self.ENCODING)
        return self.pipeline_class().from_pretrained(require_model_path(cfg), dtype=self.dtype, **skip)

    def _setup(self, cfg: PolicyConfig, seed: int, parts: Parts) -> None:
        self.cfg = cfg
        self.parts = parts
        for module in self.components().values():
            module.eval().requires_grad_(False)
        vae = getattr(self.pipe, "vae", None)
        if vae is None and cfg.model_path:
            # the latent grid of a policy without its VAE still follows the VAE's config
            vae_config = json.loads((Path(cfg.model_path) / "vae" / "config.json").read_text())
            self.vae_scale_factor, self.latent_channels = self.architecture.latent_geometry(vae_config)
        else:
            self.vae_scale_factor, self.latent_channels = (
                self.pipe.vae_scale_factor,
                self.pipe.latent_channels,
            )
        self.transformer = self.pipe.transformer
        lora.add_lora(
            self.transformer, cfg.lora_rank, cfg.lora_alpha, tuple(cfg.lora_targets), cfg.lora_init, seed
        )
        if cfg.gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    def _require_all(self, what: str) -> None:
        if self.parts != "all":
            raise RuntimeError(
                f"{what} needs the text encoder and VAE, but this {self.family} policy was loaded with "
                f"parts={self.parts!r} (a learner rank's); load it with parts='all'"
            )

    def components(self) -> dict[str, nn.Module]:
        return {n: m for n in MODULES if (m := getattr(self.pipe, n, None)) is not None}

    def scheduler_config(self) -> dict:
        return dict(self.pipe.scheduler.config)

    def check_size(self, height: int, width: int) -> None:
        multiple = self.vae_scale_factor * 2
        if height % multiple or width % multiple:
            raise ValueError(
                f"image size {height}x{width} must be a multiple of {multiple} (VAE factor "
                f"{self.vae_scale_factor} x 2x2 packing) for {self.family}; resize the data (data.image_size)"
            )

    def latent_grid(self, height: int, width: int) -> tuple[int, int, int]:
        self.check_size(height, width)
        return self.latent_channels, height // self.vae_scale_factor, width // self.vae_scale_factor

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        c, h, w = self.latent_grid(height, width)
        return (h // 2) * (w // 2), c * 4

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

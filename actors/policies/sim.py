"""The `sim` family: a SIMULATED editor for `cocoedit simulate` (cluster/simulate/). No weights, no
diffusion: every call returns tensors of the simulated model's real shapes and dtypes and holds the
process for the seconds the time plan (cluster/plan/time.py) predicts for that call on the simulated
GPU, divided by the time scale. Everything around it (rollout worker, samplers, learner, DeepSpeed,
checkpoints) is the real code.

Its model directory is written by cluster/simulate/model.py (this layer cannot import the plan):

    <dir>/model_index.json   {"_class_name": "SimEditPipeline"}   (read_family finds the family)
    <dir>/sim.json           SimSpec: shapes, seconds per call, time scale

What a call holds (seconds per edit, on one actor's GPUs, then / time_scale):
- velocity without gradient (a sampling step, the learner's old/ref forwards): `forward_s`
- velocity with gradient (the learner's `default` view): `forward_s`, then `backward_s` in backward
- decode: `decode_s`; encode_condition: `encode_s` per group (VAE encode + text encoders)
The LoRA is two small linear maps per adapter (rank `lora_rank`); its real size (`lora_params`) is
not allocated: sync bytes of the real LoRA are modelled, not moved (cluster/simulate/run.py).
`held` counts the seconds held per kind, so idle fractions can be read off each actor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import torch
from torch import nn

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies.architecture import Architecture, ModelSpec
from cocoedit.actors.policies.base import PARTS, AdapterName, EditPolicy, Parts
from cocoedit.actors.types import Condition

SIM_PIPELINE = "SimEditPipeline"
_NOT_BUILT = (
    "the sim family is a simulated editor with no diffusers model: `cocoedit simulate` writes its "
    "directory (cluster/simulate/); build-model, plan and export need a real family"
)


@dataclass(frozen=True)
class SimSpec:
    """What a simulated editor returns and how long each call holds (sim.json)."""

    simulates: str  # the family whose shapes and times are simulated (e.g. flux_kontext)
    vae_scale: int  # VAE down-sampling factor of the simulated family
    latent_channels: int  # C of the latent grid (packed D = 4 C)
    text_tokens: int  # S of prompt_embeds
    text_dim: int  # width of prompt_embeds
    forward_s: float  # one transformer forward, per edit
    backward_s: float  # its backward (with recomputation under checkpointing), per edit
    decode_s: float  # VAE decode, per edit
    encode_s: float  # VAE encode of the source + text encoders, per group
    time_scale: float  # every hold is divided by this (simulated seconds / wall seconds)
    lora_rank: int = 4
    lora_params: int = 0  # the simulated family's trainable LoRA parameters (modelled, not allocated)
    scheduler: Optional[dict[str, Any]] = None  # flow-matching scheduler config (sigma shift)

    def write(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_index.json").write_text(json.dumps({"_class_name": SIM_PIPELINE}))
        (out / "sim.json").write_text(json.dumps(asdict(self), indent=1))
        return out

    @staticmethod
    def read(model_dir: str | Path) -> SimSpec:
        path = Path(model_dir) / "sim.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {_NOT_BUILT}")
        return SimSpec(**json.loads(path.read_text()))


class SimEditPipeline:
    """The name a sim model directory's model_index.json gives; it loads nothing (see _NOT_BUILT), but
    writes the LoRA file of a checkpoint as the real pipelines do (learner/export.py)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise ValueError(_NOT_BUILT)

    @classmethod
    def save_lora_weights(
        cls,
        save_directory: str,
        transformer_lora_layers: dict[str, torch.Tensor],
        weight_name: str,
        transformer_lora_adapter_metadata: Optional[dict] = None,
    ) -> None:
        """diffusers' own LoRA writer (what FluxKontextPipeline.save_lora_weights calls): tensors as
        `transformer.<key>`, the LoraConfig in the safetensors metadata."""
        from diffusers.loaders.lora_base import LoraBaseMixin

        metadata = transformer_lora_adapter_metadata
        LoraBaseMixin.write_lora_layers(
            state_dict=LoraBaseMixin.pack_weights(transformer_lora_layers, "transformer"),
            save_directory=save_directory,
            is_main_process=True,
            weight_name=weight_name,
            save_function=None,  # type: ignore[arg-type]  # diffusers' default: safetensors
            safe_serialization=True,
            lora_adapter_metadata=None
            if metadata is None
            else LoraBaseMixin.pack_weights(metadata, "transformer"),
        )


class SimArchitecture(Architecture):
    """The sim family has no architecture to build or count: every builder names the problem."""

    block_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def tiny_spec(cls, family: str, **sizes: Any) -> ModelSpec:
        raise ValueError(_NOT_BUILT)

    @classmethod
    def assemble(cls, spec: ModelSpec, pipeline_class: type) -> Any:
        raise ValueError(_NOT_BUILT)

    @classmethod
    def transformer_class(cls) -> type:
        raise ValueError(_NOT_BUILT)

    @classmethod
    def vae_class(cls) -> type:
        raise ValueError(_NOT_BUILT)

    @staticmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        raise ValueError(_NOT_BUILT)

    @classmethod
    def transformer_inputs(
        cls, config: dict[str, Any], batch: int, side: int, text_tokens: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        raise ValueError(_NOT_BUILT)


class _Hold(torch.autograd.Function):
    """Identity that holds `forward_s` in forward and `backward_s` in backward (a simulated GPU call)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, forward_s: float, backward_s: float, held: dict) -> torch.Tensor:
        ctx.backward_s, ctx.held = backward_s, held
        _sleep(held, "forward", forward_s)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], None, None, None]:
        _sleep(ctx.held, "backward", ctx.backward_s)
        return grad, None, None, None


def _sleep(held: dict[str, float], kind: str, seconds: float) -> None:
    time.sleep(seconds)
    held[kind] = held.get(kind, 0.0) + seconds


class SimTransformer(nn.Module):
    """v = x + B(A(x)) per adapter (`default`, `old`; `ref` = none), parameters named as peft names them;
    `peft_config` describes each adapter as peft would (a checkpoint stores it beside the LoRA)."""

    def __init__(self, channels: int, rank: int, seed: int) -> None:
        from peft import LoraConfig

        super().__init__()
        self.peft_config = {
            name: LoraConfig(r=rank, lora_alpha=rank, target_modules=["sim"]) for name in ("default", "old")
        }
        gen = torch.Generator().manual_seed(seed)
        a = torch.randn(rank, channels, generator=gen) / channels**0.5
        downs, ups = {}, {}
        for name in ("default", "old"):
            downs[name], ups[name] = (
                nn.Linear(channels, rank, bias=False),
                nn.Linear(rank, channels, bias=False),
            )
            with torch.no_grad():
                downs[name].weight.copy_(a)
                ups[name].weight.zero_()  # both views start at the base model
            for p in (downs[name].weight, ups[name].weight):
                p.requires_grad_(name == "default")
        self.lora_A, self.lora_B = nn.ModuleDict(downs), nn.ModuleDict(ups)
        self.active = "default"

    def weights(self, adapter: str) -> tuple[nn.Parameter, nn.Parameter]:
        """(A, B) weights of `adapter`."""
        a, b = self.lora_A[adapter], self.lora_B[adapter]
        assert isinstance(a, nn.Linear) and isinstance(b, nn.Linear)
        assert isinstance(a.weight, nn.Parameter) and isinstance(b.weight, nn.Parameter)
        return a.weight, b.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.active == "ref":
            return x
        return x + self.lora_B[self.active](self.lora_A[self.active](x))


class SimPolicy(EditPolicy):
    """A simulated editor (see the module docstring); `held` = seconds held so far, by kind."""

    architecture = SimArchitecture

    def __init__(self, cfg: PolicyConfig, seed: int = 0, parts: Parts = "all") -> None:
        if parts not in PARTS:
            raise ValueError(f"parts={parts!r} must be one of {PARTS}")
        if cfg.model_path is None:
            raise ValueError(f"policy.model_path is not set: {_NOT_BUILT}")
        self.spec = SimSpec.read(cfg.model_path)
        if self.spec.time_scale <= 0:
            raise ValueError(f"sim.json time_scale={self.spec.time_scale} must be > 0")
        from cocoedit.actors.policies.common import DTYPES

        self.family, self.parts = "sim", parts
        self.device, self.dtype = torch.device("cpu"), DTYPES[cfg.dtype]
        self.sim = SimTransformer(4 * self.spec.latent_channels, self.spec.lora_rank, seed)
        self.transformer = self.sim
        self.held: dict[str, float] = {}

    @classmethod
    def pipeline_class(cls) -> type[Any]:
        return SimEditPipeline

    def components(self) -> dict[str, nn.Module]:
        return {"transformer": self.transformer}

    def scheduler_config(self) -> dict:
        return dict(self.spec.scheduler or {"shift": 3.0})

    def check_size(self, height: int, width: int) -> None:
        multiple = 2 * self.spec.vae_scale
        if height % multiple or width % multiple:
            raise ValueError(
                f"image size {height}x{width} must be a multiple of {multiple} (simulated family)"
            )

    def latent_grid(self, height: int, width: int) -> tuple[int, int, int]:
        self.check_size(height, width)
        s = self.spec.vae_scale
        return self.spec.latent_channels, height // s, width // s

    def latent_shape(self, height: int, width: int) -> tuple[int, int]:
        c, h, w = self.latent_grid(height, width)
        return (h // 2) * (w // 2), 4 * c

    def pack(self, latents: torch.Tensor) -> torch.Tensor:
        n, c, h, w = latents.shape  # 2x2 patches -> tokens, as FLUX / Qwen-Image pack
        x = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(n, (h // 2) * (w // 2), c * 4)

    def unpack(self, packed: torch.Tensor, height: int, width: int) -> torch.Tensor:
        c, h, w = self.latent_grid(height, width)
        n = packed.shape[0]
        x = packed.view(n, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(n, c, h, w)

    def encode_condition(self, instructions: list[str], source_images: torch.Tensor) -> Condition:
        if self.parts != "all":
            raise RuntimeError("encode_condition needs parts='all' (a learner rank never encodes)")
        n, _, height, width = source_images.shape
        _sleep(self.held, "encode", n * self.spec.encode_s / self.spec.time_scale)
        c, h, w = self.latent_grid(height, width)
        grid = torch.zeros(n, c, h, w)  # the source, pooled to the latent grid: x_src depends on it
        grid[:, :3] = torch.nn.functional.adaptive_avg_pool2d(source_images.float() / 127.5 - 1, (h, w))
        image = self.pack(grid).to(self.dtype)
        prompt = torch.zeros(n, self.spec.text_tokens, self.spec.text_dim, dtype=self.dtype)
        batched = frozenset({"prompt_embeds", "image_latents"})
        return Condition({"prompt_embeds": prompt, "image_latents": image}, batched)

    def source_latents(self, condition: Condition) -> torch.Tensor:
        return condition.tensors["image_latents"]

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        n, scale = x_t.shape[0], self.spec.time_scale
        v = self.sim(x_t)
        if torch.is_grad_enabled() and v.requires_grad:
            return _Hold.apply(
                v, n * self.spec.forward_s / scale, n * self.spec.backward_s / scale, self.held
            )
        _sleep(self.held, "forward", n * self.spec.forward_s / scale)
        return v

    def decode(self, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
        if self.parts != "all":
            raise RuntimeError("decode needs parts='all' (a learner rank never decodes)")
        _sleep(self.held, "decode", x0.shape[0] * self.spec.decode_s / self.spec.time_scale)
        grid = self.unpack(x0.float(), height, width)[:, :3]  # [N, 3, h, w]: the edit depends on its noise
        rgb = torch.nn.functional.interpolate(grid, size=(height, width), mode="nearest")
        return (torch.sigmoid(rgb) * 255).round().to(torch.uint8)

    def adapter(self, name: AdapterName) -> AbstractContextManager[None]:
        if name not in ("default", "old", "ref"):
            raise ValueError(f"adapter must be 'default', 'old' or 'ref', got {name!r}")
        return self._active(name)

    @contextmanager
    def _active(self, name: str) -> Iterator[None]:
        previous, self.sim.active = self.sim.active, name
        try:
            yield
        finally:
            self.sim.active = previous

    def lora_state_dict(self, adapter: Literal["default", "old"]) -> dict[str, torch.Tensor]:
        a, b = self.sim.weights(adapter)
        return {"lora_A.weight": a.detach().clone(), "lora_B.weight": b.detach().clone()}

    def load_lora_state_dict(
        self, state: dict[str, torch.Tensor], adapter: Literal["default", "old"]
    ) -> None:
        with torch.no_grad():
            for weight, key in zip(
                self.sim.weights(adapter), ("lora_A.weight", "lora_B.weight"), strict=True
            ):
                weight.copy_(state[key])

    def trainable_parameters(self) -> list[nn.Parameter]:
        return list(self.sim.weights("default"))

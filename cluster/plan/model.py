"""The policy's model as `cocoedit plan` sees it (parameters and the transformer and VAE configs), and
the simulated peak activation memory of its transformer and VAE (simulate.py). Everything
family-specific comes from the family's `Architecture` (actors/policies/architecture.py) through the
FAMILIES registry: classes, block counts, the inputs of one velocity call, the VAE's input layout.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.cluster.plan.simulate import once, simulated_peak

if TYPE_CHECKING:
    import torch

    from cocoedit.actors.policies.architecture import Architecture


@dataclass(frozen=True)
class PolicyModel:
    """What the estimate needs of the editor: parameters per component and the configs of the
    transformer and VAE (to rebuild them on the meta device)."""

    family: str
    params: dict[str, int]
    transformer: dict[str, Any]
    vae: dict[str, Any]
    source: str  # where the sizes come from, for the report

    @property
    def architecture(self) -> type[Architecture]:
        from cocoedit.actors.policies import family

        return family(self.family).architecture()

    @property
    def vae_scale(self) -> int:
        return int(self.architecture.latent_geometry(self.vae)[0])

    @property
    def latent_channels(self) -> int:
        return int(self.architecture.latent_geometry(self.vae)[1])

    @property
    def block_counts(self) -> dict[str, int]:
        """The transformer's block counts by config key (FLUX: dual- and single-stream)."""
        return {k: int(self.transformer[k]) for k in self.architecture.block_keys}

    def text_tokens(self, max_sequence_length: int) -> int:
        """Text tokens the transformer attends to at policy.max_sequence_length."""
        return self.architecture.text_tokens(max_sequence_length)


def policy_model(
    family: str, model_path: Optional[str], tiny: Optional[dict[str, int]] = None
) -> PolicyModel:
    """Sizes of the editor at model_path (a local diffusers directory), else of the tiny editor of
    `tiny` sizes (tiny_spec kwargs), else of the family's published architecture (text-encoder
    vocabularies included)."""
    from cocoedit.actors.policies.builders import parameter_counts

    path = Path(model_path).expanduser() if model_path else None
    if path is not None and (path / "model_index.json").is_file():
        return PolicyModel(
            family,
            parameter_counts(path),
            _config_json(path / "transformer" / "config.json"),
            _config_json(path / "vae" / "config.json"),
            str(path),
        )
    import torch

    from cocoedit.actors.policies.builders import assemble, real_spec, tiny_spec

    spec = tiny_spec(family, **tiny) if tiny is not None else real_spec(family, depth=None, real_vocab=True)
    with _meta(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = assemble(spec)
    params = {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }
    if tiny is not None:
        return PolicyModel(family, params, spec.transformer, spec.vae, "the tiny editor (pretrain sizes)")
    where = f"{model_path} is not a local directory here" if model_path else "no policy.model_path"
    return PolicyModel(family, params, spec.transformer, spec.vae, f"published architecture ({where})")


@contextlib.contextmanager
def _meta() -> Iterator[None]:
    """Modules built here live on the meta device, uninitialised (on meta, init is shapes-only work)."""
    import torch
    from diffusers.models.modeling_utils import no_init_weights

    with torch.device("meta"), no_init_weights():
        yield


def _config_json(path: Path) -> dict[str, Any]:
    config = json.loads(path.read_text())
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _meta_transformer(model: PolicyModel, policy: Any, blocks: dict[str, int], dtype: torch.dtype) -> Any:
    """The transformer with `blocks` overriding its block counts, on the meta device, with the
    policy's LoRA adapters `default` (trainable) and `old`, all in `dtype`: activations are simulated in
    the policy's dtype throughout, as autocast computes them (float32 LoRA masters are counted apart)."""
    import torch
    from peft import LoraConfig

    from cocoedit.actors.policies.lora import lora_target_modules, set_active_adapter

    with _meta():
        transformer = model.architecture.transformer_class()(**{**model.transformer, **blocks})
    torch.nn.Module.to(transformer, dtype)  # diffusers' own .to() logs a warning for every cast
    transformer.requires_grad_(False)
    lora = LoraConfig(
        r=policy.lora_rank,
        lora_alpha=policy.lora_alpha,
        target_modules=lora_target_modules(transformer, tuple(policy.lora_targets)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformer.add_adapter(lora, adapter_name="default")
        transformer.add_adapter(lora, adapter_name="old")
    torch.nn.Module.to(transformer, dtype)
    set_active_adapter(transformer, "default")
    return transformer


def _transformer_inputs(
    model: PolicyModel, batch: int, size: int, text_tokens: int, dtype: torch.dtype
) -> dict[str, Any]:
    """Meta inputs of one velocity call as the policy builds them (target + source image tokens)."""
    side = size // model.vae_scale // 2
    return model.architecture.transformer_inputs(model.transformer, batch, side, text_tokens, dtype)


def transformer_activation_bytes(
    model: PolicyModel,
    policy: Any,
    batch: int,
    size: int,
    text_tokens: int,
    grad: bool,
    checkpointing: bool,
) -> float:
    """Peak activation bytes of one velocity call (grad: forward + backward of a loss on its output,
    LoRA gradients included), extrapolated from 1-2 simulated blocks to the model's block counts."""
    import torch

    from cocoedit.actors.policies.common import DTYPES

    dtype = DTYPES[policy.dtype]
    counts = model.block_counts
    base = {k: min(n, 1) for k, n in counts.items()}
    lora = (policy.lora_rank, policy.lora_alpha, tuple(policy.lora_targets), policy.dtype)
    key = [
        "transformer",
        model.family,
        model.transformer,
        lora,
        batch,
        size,
        text_tokens,
        grad,
        checkpointing,
    ]

    def peak(blocks: dict[str, int]) -> float:
        return once([*key, blocks], lambda: _transformer_peak(blocks))

    def _transformer_peak(blocks: dict[str, int]) -> int:
        transformer = _meta_transformer(model, policy, blocks, dtype)
        if grad and checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train(grad)
        inputs = _transformer_inputs(model, batch, size, text_tokens, dtype)

        def step() -> None:
            with torch.set_grad_enabled(grad):
                out = transformer(**inputs)[0]
                if grad:
                    out.float().square().mean().backward()

        return simulated_peak(step)

    first = peak(base)
    if not grad:  # each block's activations are freed before the next one runs
        return float(first)
    total = float(first)
    for k, n in counts.items():
        if n > base[k]:
            total += (n - base[k]) * (peak({**base, k: base[k] + 1}) - first)
    return total


def vae_activation_bytes(model: PolicyModel, batch: int, size: int, dtype_name: str, decode: bool) -> float:
    """Peak activation bytes of the VAE decoding (or encoding) `batch` images of size x size."""
    from cocoedit.actors.policies.common import DTYPES

    key = ["vae", model.family, model.vae, batch, size, dtype_name, decode]
    return once(key, lambda: _vae_peak(model, batch, size, DTYPES[dtype_name], decode))


def _vae_peak(model: PolicyModel, batch: int, size: int, dtype: torch.dtype, decode: bool) -> float:
    import torch

    with _meta():
        vae = model.architecture.vae_class()(**model.vae).eval()
    torch.nn.Module.to(vae, dtype)
    side = size // model.vae_scale
    frames = (1,) if model.architecture.vae_frames else ()  # a video VAE: [N, C, frames, H, W]
    if decode:
        x = torch.empty(batch, model.latent_channels, *frames, side, side, device="meta", dtype=dtype)
    else:
        x = torch.empty(batch, 3, *frames, size, size, device="meta", dtype=dtype)

    def step() -> None:
        with torch.no_grad():
            vae.decode(x) if decode else vae.encode(x)

    return float(simulated_peak(step))

"""LoRA views of one transformer via peft (docs/algorithm.md section 5).

Adapters: `default` (theta, trained, gaussian init), `old` (theta_old, samples; starts equal to
`default`); the reference policy is the transformer with adapters disabled. Only `default` is trainable.
Both adapters are float32 whatever the base dtype (peft would create them in the base's bf16): the
optimizer updates float32 masters, as diffusers' LoRA training scripts keep them, and the soft update
of theta_old does not round away (bf16 resolves 1 part in 256; an Adam step of 1e-5 on a weight of 0.3
is 1 part in 30000). peft casts a layer's input to the adapter's dtype and the sum back to the base's.

`export_diffusers_lora` writes a safetensors file that the stock pipeline's `load_lora_weights(path)`
accepts (keys `transformer.<module>.lora_A.weight`, the LoraConfig in the file's metadata so alpha/r is
kept), so a trained adapter runs in plain diffusers; `write_lora_dir` writes the same from saved
weights (no model needed) into a directory that `load_lora_weights(dir)` reads.
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import nn

ADAPTERS = ("default", "old")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # the file name load_lora_weights(dir) looks for


def lora_target_modules(transformer: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Full names of the Linear modules of `transformer` whose name ends with one of `targets`.

    Only targets that exist are used (FLUX single blocks have no `add_*` projections); an empty match is
    an error naming the targets, so a typo cannot silently train nothing.
    """
    names = [
        name
        for name, module in transformer.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)
    ]
    if not names:
        raise ValueError(
            f"none of the LoRA targets {targets} matches a Linear layer of {type(transformer).__name__}; "
            "set policy.lora_targets to attention projection names such as to_q, to_k, to_v, to_out.0"
        )
    return names


def add_lora(
    transformer: nn.Module,
    rank: int,
    alpha: int,
    targets: tuple[str, ...],
    init: Literal["gaussian", "default"] = "gaussian",
    seed: int = 0,
) -> None:
    """Inject adapters `default` and `old` (equal at start) into `transformer` in place; freeze the base."""
    from peft import LoraConfig

    if rank <= 0:
        raise ValueError(f"policy.lora_rank={rank} must be positive")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=lora_target_modules(transformer, targets),
        init_lora_weights="gaussian" if init == "gaussian" else True,
    )
    transformer.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name="default")  # type: ignore[operator]  # peft's method: nn.Module.__getattr__ types it Tensor | Module
    with warnings.catch_warnings():
        # peft warns that a second adapter is being added to the same model: that is the design here.
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        transformer.add_adapter(config, adapter_name="old")  # type: ignore[operator]  # peft's method: nn.Module.__getattr__ types it Tensor | Module
    for adapter in ADAPTERS:
        for p in _adapter_params(transformer, adapter).values():
            p.data = p.data.float()
    load_adapter_state(transformer, adapter_state(transformer, "default"), "old")
    set_active_adapter(transformer, "default")


def _adapter_params(transformer: nn.Module, adapter: str) -> dict[str, nn.Parameter]:
    """peft parameter name without the adapter segment -> parameter, for one adapter."""
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    marker = f".{adapter}."
    out = {}
    for name, p in transformer.named_parameters():
        if ".lora_" in name and marker in name:
            out[name.replace(marker, ".")] = p
    if not out:
        raise ValueError(f"the transformer carries no LoRA adapter {adapter!r}; call add_lora first")
    return out


def adapter_state(transformer: nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """Detached CPU copies of one adapter's weights, keys like `blocks.0.attn.to_q.lora_A.weight`."""
    return {k: p.detach().to("cpu", copy=True) for k, p in _adapter_params(transformer, adapter).items()}


def load_adapter_state(transformer: nn.Module, state: dict[str, torch.Tensor], adapter: str) -> None:
    """Copy `state` (keys as `adapter_state` gives them) into one adapter; keys must match exactly."""
    params = _adapter_params(transformer, adapter)
    missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
    if missing or unexpected:
        raise KeyError(
            f"LoRA state for adapter {adapter!r} does not match the model: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}"
            " (was it saved from a model with the same lora_rank and lora_targets?)"
        )
    with torch.no_grad():
        for k, p in params.items():
            if state[k].shape != p.shape:
                raise ValueError(f"LoRA weight {k}: shape {tuple(state[k].shape)} != model {tuple(p.shape)}")
            p.copy_(state[k].to(device=p.device, dtype=p.dtype))


def trainable_lora_parameters(transformer: nn.Module) -> list[nn.Parameter]:
    return list(_adapter_params(transformer, "default").values())


def _lora_layers(transformer: nn.Module) -> list[Any]:
    # Any: peft's layers, whose methods nn.Module.__getattr__ would type as Tensor | Module
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in transformer.modules() if isinstance(m, BaseTunerLayer)]


def set_active_adapter(transformer: nn.Module, name: str) -> None:
    """Make `name` ("default", "old" or "ref" = disabled) the adapter of the next forward passes.

    peft's set_adapter/enable_adapters also flip requires_grad (the active adapter becomes trainable),
    so the flags are restored: `default` stays the only trainable adapter whatever view is active.
    """
    layers = _lora_layers(transformer)
    for layer in layers:
        if name == "ref":
            layer.enable_adapters(False)
        else:
            layer.enable_adapters(True)
            layer.set_adapter(name)
    for layer in layers:
        for adapter_dict in (layer.lora_A, layer.lora_B):
            for adapter, module in adapter_dict.items():
                module.requires_grad_(adapter == "default")


@contextmanager
def active_adapter(transformer: nn.Module, name: str, previous: str) -> Iterator[None]:
    set_active_adapter(transformer, name)
    try:
        yield
    finally:
        set_active_adapter(transformer, previous)


def adapter_metadata(transformer: nn.Module, adapter: str) -> dict:
    """The peft LoraConfig of `adapter` as a JSON-able dict (what diffusers stores in file metadata)."""
    config = cast(dict, transformer.peft_config)[adapter].to_dict()  # peft's; typed Tensor | Module by torch
    config["target_modules"] = sorted(config["target_modules"])
    return {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}


def export_diffusers_lora(policy: Any, adapter: Literal["default", "old"], path: str | Path) -> Path:
    """Write `adapter` of `policy` as a diffusers LoRA file; the stock pipeline loads it with
    `pipe.load_lora_weights(path)` and then computes what the policy computes with that adapter."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"LoRA export path {path} must end in .safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    _save_lora(
        policy.lora_state_dict(adapter),
        adapter_metadata(policy.transformer, adapter),
        policy.pipeline_class(),
        path.parent,
        path.name,
    )
    return path


def write_lora_dir(
    state: dict[str, torch.Tensor], metadata: dict, pipeline_class: type, out_dir: str | Path
) -> Path:
    """Write saved adapter weights (peft key names, as `adapter_state` gives them) with their LoraConfig
    `metadata` (`adapter_metadata`) as `out_dir/pytorch_lora_weights.safetensors`, the diffusers LoRA
    format of `pipeline_class`; `pipe.load_lora_weights(out_dir)` reads it. The file is replaced
    atomically, so a reader of out_dir never sees half of one. Returns the file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    _save_lora(state, metadata, pipeline_class, tmp, LORA_WEIGHT_NAME)
    os.replace(tmp / LORA_WEIGHT_NAME, out / LORA_WEIGHT_NAME)
    shutil.rmtree(tmp)
    return out / LORA_WEIGHT_NAME


def _save_lora(
    state: dict[str, torch.Tensor], metadata: dict, pipeline_class: Any, directory: Path, weight_name: str
) -> None:
    """The pipeline's own LoRA writer: keys `transformer.<module>.lora_{A,B}.weight`, LoraConfig in the
    file's metadata (so the rank/alpha scale is applied on load)."""
    pipeline_class.save_lora_weights(
        save_directory=str(directory),
        transformer_lora_layers={k: v.contiguous() for k, v in state.items()},
        weight_name=weight_name,
        transformer_lora_adapter_metadata=metadata,
    )

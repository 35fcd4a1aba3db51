"""Diffusion edit policies: FLUX.1-Kontext and Qwen-Image-Edit behind one interface (`base.EditPolicy`).

policy = load_policy(PolicyConfig(family="flux_kontext", model_path="/models/FLUX.1-Kontext-dev"))
"""

from __future__ import annotations

import importlib

from actors.config import PolicyConfig
from actors.policies.base import EditPolicy

# family -> (module, class); the one place a family picks its implementation.
POLICIES: dict[str, tuple[str, str]] = {
    "flux_kontext": ("actors.policies.flux_kontext", "FluxKontextPolicy"),
    "qwen_image_edit": ("actors.policies.qwen_image_edit", "QwenImageEditPolicy"),
    "qwen_image_edit_plus": ("actors.policies.qwen_image_edit", "QwenImageEditPlusPolicy"),
}


def load_policy(cfg: PolicyConfig, seed: int = 0) -> EditPolicy:
    """Build the EditPolicy of cfg.family from the local diffusers directory cfg.model_path, with LoRA
    adapters `default` and `old` (seed: the gaussian LoRA init)."""
    if cfg.family not in POLICIES:
        raise ValueError(f"policy.family={cfg.family!r} is unknown; expected one of {sorted(POLICIES)}")
    if not cfg.model_path:
        raise ValueError(
            "policy.model_path is not set: point it at a local diffusers directory "
            "(for the tiny CPU mode build one with actors.policies.tiny.build_tiny_model)"
        )
    from actors.policies.tiny import read_family

    found = read_family(cfg.model_path)
    if found != cfg.family:
        raise ValueError(
            f"policy.family={cfg.family!r} but {cfg.model_path} holds a {found!r} model; "
            f"set policy.family: {found}"
        )
    module_name, class_name = POLICIES[cfg.family]
    return getattr(importlib.import_module(module_name), class_name)(cfg, seed=seed)

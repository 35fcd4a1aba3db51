"""Diffusion edit policies: FLUX.1-Kontext and Qwen-Image-Edit behind one interface (`base.EditPolicy`).

    policy = load_policy(PolicyConfig(family="flux_kontext", model_path="/models/FLUX.1-Kontext-dev"))

`FAMILIES` is the one registry of model families: a family's name, its EditPolicy class, the diffusers
pipeline class its checkpoints name in `model_index.json` and the stock pipeline's generation settings.
A new family is a module with its EditPolicy subclass and its `Architecture` (specs, building, shapes;
architecture.py) plus one `Family(...)` line here (README, Extending); nothing else names a family. This module imports no torch, so the config loader can check `policy.family` in
milliseconds; the policy classes are imported when used.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cocoedit.actors.config import PolicyConfig

if TYPE_CHECKING:
    from cocoedit.actors.policies.architecture import Architecture
    from cocoedit.actors.policies.base import EditPolicy, Parts


@dataclass(frozen=True)
class Family:
    name: str  # policy.family
    policy: str  # "module:Class" of its EditPolicy (imported only when used)
    pipeline: str  # the diffusers pipeline class a checkpoint of this family names in model_index.json
    # The stock pipeline's generation (cocoedit eval's defaults): Euler steps, distilled guidance
    # (FLUX-Kontext's guidance embedding; 1.0 where the model has none), true CFG against a negative
    # prompt with the conditional-norm rescale (Qwen-Image-Edit's; 1.0 = off, and False = never).
    num_steps: int
    guidance: float
    true_cfg_scale: float
    true_cfg: bool

    def policy_class(self) -> type[EditPolicy]:
        module, _, cls = self.policy.partition(":")
        return getattr(importlib.import_module(module), cls)

    def architecture(self) -> type[Architecture]:
        """Its specs, building and shapes (what build-model and `cocoedit plan` need of it)."""
        return self.policy_class().architecture


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "flux_kontext",
            "cocoedit.actors.policies.flux_kontext:FluxKontextPolicy",
            "FluxKontextPipeline",
            num_steps=28,
            guidance=2.5,
            true_cfg_scale=1.0,
            true_cfg=False,
        ),
        Family(
            "qwen_image_edit",
            "cocoedit.actors.policies.qwen_image_edit:QwenImageEditPolicy",
            "QwenImageEditPipeline",
            num_steps=40,
            guidance=1.0,
            true_cfg_scale=4.0,
            true_cfg=True,
        ),
        Family(
            "qwen_image_edit_plus",
            "cocoedit.actors.policies.qwen_image_edit:QwenImageEditPlusPolicy",
            "QwenImageEditPlusPipeline",
            num_steps=40,
            guidance=1.0,
            true_cfg_scale=4.0,
            true_cfg=True,
        ),
        # simulated: shapes and held times of another family, no model (`cocoedit simulate`)
        Family("sim", "cocoedit.actors.policies.sim:SimPolicy", "SimEditPipeline", 10, 1.0, 1.0, False),
    )
}


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"policy.family={name!r} is unknown; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def read_family(model_path: str | Path) -> str:
    """The family of a diffusers directory, from the pipeline class its model_index.json names."""
    index = Path(model_path) / "model_index.json"
    if not index.is_file():
        raise FileNotFoundError(
            f"{index} not found: model_path must be a diffusers directory (build one with "
            "cocoedit.actors.policies.tiny.build_tiny_model or point at a downloaded checkpoint)"
        )
    name = json.loads(index.read_text())["_class_name"]
    by_pipeline = {f.pipeline: f.name for f in FAMILIES.values()}
    if name not in by_pipeline:
        raise ValueError(
            f"{index}: pipeline class {name!r} is not an edit family we support ({sorted(by_pipeline)})"
        )
    return by_pipeline[name]


def load_policy(cfg: PolicyConfig, seed: int = 0, parts: Parts = "all") -> EditPolicy:
    """Build the EditPolicy of cfg.family from the local diffusers directory cfg.model_path, with LoRA
    adapters `default` and `old` (seed: the gaussian LoRA init). parts="transformer" loads only the
    transformer (+ scheduler), what a learner rank uses; "all" adds the text encoder(s) and VAE."""
    fam = family(cfg.family)
    if not cfg.model_path:
        raise ValueError(
            "policy.model_path is not set: point it at a local diffusers directory "
            "(for the tiny CPU mode build one with cocoedit.actors.policies.tiny.build_tiny_model)"
        )
    found = read_family(cfg.model_path)
    if found != cfg.family:
        raise ValueError(
            f"policy.family={cfg.family!r} but {cfg.model_path} holds a {found!r} model; set policy.family: {found}"
        )
    return fam.policy_class()(cfg, seed=seed, parts=parts)  # type: ignore[call-arg]

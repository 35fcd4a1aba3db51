"""Edits for evaluation: a policy (+ an optional LoRA) under a family's stock pipeline settings.

    gen = EditGenerator(policy_cfg, settings)   # settings: cluster.eval_config.generation_settings(...)
    for item_id, png in gen.generate(items): ...

`settings` is the resolved dict (family, sampler, num_steps, guidance, true_cfg_scale, negative_prompt,
seed, image_size, dtype) that evaluation also pins in its edits folder. A plain class: `cluster` makes
it a Ray actor for sharded evaluation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.types import EditItem


def item_seed(seed: int, item_id: str) -> int:
    """The noise seed of one item: independent of sharding, batching and resuming."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


LORA_FILE = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes, and we export


def lora_file(path: str | Path) -> Path:
    """The LoRA file of what `cocoedit edit --lora` takes: a file, or a directory holding one
    (`RUN_DIR/lora`, a checkpoint's `lora/`, a `cocoedit export` folder)."""
    path = Path(path)
    if path.is_dir():
        inside = [path / LORA_FILE] if (path / LORA_FILE).is_file() else sorted(path.glob("*.safetensors"))
        if len(inside) != 1:
            raise FileNotFoundError(
                f"--lora {path} is a directory without {LORA_FILE} (or one .safetensors file): name the file, "
                "or a directory such as RUN_DIR/lora"
            )
        return inside[0]
    if not path.is_file():
        raise FileNotFoundError(f"--lora {path} does not exist")
    return path


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], int, Optional[int]]:
    """A LoRA file (our checkpoint's lora_*.safetensors or a diffusers export) as peft-named weights,
    with its rank and, when the file records it, its alpha."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = lora_file(path)
    state = load_file(str(path))
    state = {k.removeprefix("transformer."): v for k, v in state.items()}
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(
            f"--lora {path}: expected one LoRA rank in its lora_A weights, found {sorted(ranks)}"
        )
    alpha = None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "lora_adapter_metadata" in meta:
        info = json.loads(meta["lora_adapter_metadata"])
        alphas = [v for k, v in info.items() if k.endswith("lora_alpha")]
        alpha = int(alphas[0]) if alphas else None
    return state, ranks.pop(), alpha


class EditGenerator:
    """Samples edits with a policy (+ optional LoRA) under the stock pipeline `settings`."""

    def __init__(
        self, policy_cfg: PolicyConfig, settings: dict[str, Any], lora: Optional[str] = None
    ) -> None:
        from cocoedit.actors.policies import load_policy

        self.settings = dict(settings)
        state = None
        if lora is not None:
            state, rank, alpha = read_lora(lora)
            policy_cfg = dataclasses.replace(
                policy_cfg, lora_rank=rank, lora_alpha=alpha if alpha is not None else policy_cfg.lora_alpha
            )
        # the stock setting's distilled guidance (a family without a guidance embedding ignores it)
        policy_cfg = dataclasses.replace(policy_cfg, guidance=self.settings["guidance"])
        self.policy = load_policy(policy_cfg, seed=self.settings["seed"])
        self.adapter: Literal["old", "ref"] = "ref"
        if state is not None:
            self.policy.load_lora_state_dict(state, "old")
            self.adapter = "old"

    def _velocity(self, cond: Any, neg: Any) -> Any:
        policy, scale = self.policy, self.settings["true_cfg_scale"]

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v = policy.velocity(x, t, cond)
            if neg is None:
                return v
            # QwenImageEditPipeline's true CFG, with its rescale to the conditional prediction's norm
            v_neg = policy.velocity(x, t, neg)
            comb = v_neg + scale * (v - v_neg)
            return comb * (v.norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))

        return velocity

    @torch.no_grad()
    def generate(self, items: list[EditItem]) -> list[tuple[str, bytes]]:
        """(item_id, PNG bytes of the edit) for each item, in order; items must share one size."""
        from cocoedit.actors.samplers import initial_noise, integrate, shifted_sigmas
        from cocoedit.rewards.images import encode_png

        policy = self.policy
        h, w = items[0].source_image.shape[-2:]
        sources = torch.stack([i.source_image for i in items])
        cond = policy.encode_condition([i.instruction for i in items], sources)
        neg = None
        if self.settings["true_cfg"] and self.settings["true_cfg_scale"] > 1.0:
            neg = policy.encode_condition([self.settings["negative_prompt"]] * len(items), sources)
        length, _ = policy.latent_shape(h, w)
        # initial noise as the rollout draws it: one generator per item, seeded from (eval seed, item id)
        noise = torch.stack(
            [
                initial_noise(
                    policy, torch.Generator().manual_seed(item_seed(self.settings["seed"], i.item_id)), h, w
                )
                for i in items
            ]
        ).to(policy.device)
        sigmas = shifted_sigmas(self.settings["num_steps"], length, policy.scheduler_config())
        with policy.adapter(self.adapter):
            x0 = integrate(self._velocity(cond, neg), noise, sigmas, self.settings["sampler"]).x0
        edited = policy.decode(x0, h, w)
        return [
            (item.item_id, encode_png(img.permute(1, 2, 0).cpu().numpy()))
            for item, img in zip(items, edited, strict=True)
        ]

"""A new model family is one module (its EditPolicy and its Architecture) plus one line in FAMILIES.

The toy family here is of another architecture than either shipped family: the Qwen-Image transformer
(a stock diffusers DiT with one kind of block, patch-2 tokens, no pooled text embedding) behind a
2-D `AutoencoderKL` (not Qwen-Image's 3-D video VAE) and a single CLIP text encoder (no T5, no
Qwen2.5-VL), assembled into its own pipeline class. Everything this file defines is what the family
module would hold; with the one registry line it is accepted by the config loader, built by
`cocoedit build-model`, sized by `cocoedit plan`, sampled by the RolloutWorker and trained by the
Learner: the same code paths as the shipped families, with no other file to edit. (Before the family
code moved behind `Architecture`, build-model and plan treated every non-FLUX family as Qwen-Image:
this family failed there with the Qwen-Image VAE given an AutoencoderKL config.)
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    QwenImageTransformer2DModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from cocoedit.actors.config import PolicyConfig, RolloutConfig
from cocoedit.actors.policies import FAMILIES, Family, load_policy, read_family
from cocoedit.actors.policies.architecture import (
    TINY_MAX_SEQUENCE_LENGTH,
    Architecture,
    ModelSpec,
    byte_chars,
    tiny_rope,
)
from cocoedit.actors.policies.base import Parts
from cocoedit.actors.policies.builders import parameter_counts
from cocoedit.actors.policies.common import (
    DTYPES,
    DiffusersEditPolicy,
    resolve_device,
    to_uint8,
    to_unit_float,
)
from cocoedit.actors.rollout import RolloutWorker
from cocoedit.actors.types import Condition
from cocoedit.cluster.cli import main
from cocoedit.cluster.config import ConfigError, load_config
from cocoedit.cluster.eval.config import generation_settings
from cocoedit.learner.learner import Learner
from tests.actors.test_rollout import make_items
from tests.learner import common

SCHEDULER = dict(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)


class ToyEditPipeline(DiffusionPipeline):
    """The family's stock pipeline: its components, and the 2x2 packing the policy uses."""

    model_cpu_offload_seq = "text_encoder->transformer->vae"
    _pack_latents = staticmethod(FluxKontextPipeline._pack_latents)
    _unpack_latents = staticmethod(FluxKontextPipeline._unpack_latents)

    def __init__(
        self,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        transformer: Any,
    ) -> None:
        super().__init__()
        self.register_modules(
            scheduler=scheduler,
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            transformer=transformer,
        )
        if vae is not None:
            self.vae_scale_factor, self.latent_channels = ToyArchitecture.latent_geometry(dict(vae.config))


class ToyArchitecture(Architecture):
    block_keys = ("num_layers",)

    @classmethod
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
        latent = latent_channels or 4
        return ModelSpec(
            family=family,
            transformer=dict(
                patch_size=2,
                in_channels=4 * latent,
                out_channels=latent,
                num_layers=num_layers + num_single_layers,
                attention_head_dim=attention_head_dim,
                num_attention_heads=num_attention_heads,
                joint_attention_dim=text_dim,
                axes_dims_rope=tiny_rope(attention_head_dim),
            ),
            text_encoder=dict(
                hidden_size=text_dim,
                intermediate_size=2 * text_dim,
                num_hidden_layers=1,
                num_attention_heads=2,
                max_position_embeddings=TINY_MAX_SEQUENCE_LENGTH,
            ),
            vae=dict(
                down_block_types=("DownEncoderBlock2D",) * vae_blocks,
                up_block_types=("UpDecoderBlock2D",) * vae_blocks,
                block_out_channels=(vae_channels,) * vae_blocks,
                latent_channels=latent,
                norm_num_groups=min(8, vae_channels),
            ),
        )

    @classmethod
    def assemble(cls, spec: ModelSpec, pipeline_class: type) -> Any:
        chars = byte_chars()
        vocab = {**{c: i for i, c in enumerate(chars)}, "<|startoftext|>": 256, "<|endoftext|>": 257}
        tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=spec.token_limits[0])
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), **spec.text_encoder))
        return pipeline_class(
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
            vae=AutoencoderKL(**spec.vae).eval(),
            text_encoder=text_encoder.eval(),
            tokenizer=tokenizer,
            transformer=QwenImageTransformer2DModel(**spec.transformer).eval(),
        )

    @classmethod
    def transformer_class(cls) -> type:
        return QwenImageTransformer2DModel

    @classmethod
    def vae_class(cls) -> type:
        return AutoencoderKL

    @staticmethod
    def latent_geometry(vae_config: dict) -> tuple[int, int]:
        return 2 ** (len(vae_config["block_out_channels"]) - 1), vae_config["latent_channels"]

    @classmethod
    def transformer_inputs(
        cls, config: dict[str, Any], batch: int, side: int, text_tokens: int, dtype: torch.dtype
    ) -> dict[str, Any]:
        return dict(
            hidden_states=torch.empty(
                batch, 2 * side * side, config["in_channels"], device="meta", dtype=dtype
            ),
            encoder_hidden_states=torch.empty(
                batch, text_tokens, config["joint_attention_dim"], device="meta", dtype=dtype
            ),
            encoder_hidden_states_mask=None,
            timestep=torch.empty(batch, device="meta", dtype=dtype),
            img_shapes=[[(1, side, side), (1, side, side)]] * batch,
            return_dict=False,
        )


class ToyEditPolicy(DiffusersEditPolicy):
    """CLIP's last hidden states as text tokens, the source latents appended along the sequence."""

    family = "toy_edit"
    architecture = ToyArchitecture
    ENCODING = ("text_encoder", "tokenizer", "vae")

    def __init__(self, cfg: PolicyConfig, seed: int = 0, parts: Parts = "all") -> None:
        self.device = resolve_device(cfg.device)
        self.dtype = DTYPES[cfg.dtype]
        self.pipe = self._load_pipeline(cfg, parts).to(self.device, self.dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self._setup(cfg, seed, parts)

    @classmethod
    def pipeline_class(cls) -> type:
        return ToyEditPipeline

    @torch.no_grad()
    def encode_condition(self, instructions: list[str], source_images: torch.Tensor) -> Condition:
        self._require_all("encode_condition")
        n, _, height, width = source_images.shape
        self.check_size(height, width)
        tokens = self.pipe.tokenizer(
            list(instructions), padding="max_length", truncation=True, return_tensors="pt"
        )
        text = self.pipe.text_encoder(tokens.input_ids.to(self.device)).last_hidden_state
        vae = self.pipe.vae
        latents = vae.encode(to_unit_float(source_images).to(self.device, vae.dtype)).latent_dist.mode()
        h, w = latents.shape[2:]
        image_latents = self.pipe._pack_latents(latents, n, latents.shape[1], h, w)
        return Condition(
            {"prompt_embeds": text, "image_latents": image_latents, "grid": torch.tensor([h // 2, w // 2])},
            frozenset({"prompt_embeds", "image_latents"}),
        )

    def source_latents(self, condition: Condition) -> torch.Tensor:
        return condition.tensors["image_latents"]

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
        c = condition.tensors
        n, length, _ = x_t.shape
        grid = (1, *(int(v) for v in c["grid"]))
        out = self.transformer(
            hidden_states=torch.cat([x_t.to(self.dtype), c["image_latents"].to(self.dtype)], dim=1),
            encoder_hidden_states=c["prompt_embeds"].to(self.dtype),
            encoder_hidden_states_mask=None,
            timestep=t.to(self.dtype).expand(n),
            img_shapes=[[grid, grid]] * n,
            return_dict=False,
        )[0]
        return out[:, :length].to(x_t.dtype)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, height: int, width: int) -> torch.Tensor:
        self._require_all("decode")
        latents = self.unpack(x0.to(self.device), height, width)
        return to_uint8(self.pipe.vae.decode(latents.to(self.pipe.vae.dtype), return_dict=False)[0])


TOY = Family(
    "toy_edit",
    f"{__name__}:ToyEditPolicy",
    "ToyEditPipeline",
    num_steps=8,
    guidance=1.0,
    true_cfg_scale=1.0,
    true_cfg=False,
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(FAMILIES, TOY.name, TOY)  # the one registry line


def test_an_unregistered_family_is_a_config_error_naming_the_registry() -> None:
    with pytest.raises(ConfigError, match=r"policy.family='toy_edit' is no model family.*Extending"):
        load_config(None, ["policy.family=toy_edit"])


def test_a_family_of_another_architecture_is_built_planned_sampled_and_trained(
    registered: None, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """~15 s: build-model, plan, one rollout of a group of 2 and one learner update."""
    out = tmp_path / "toy"
    assert (
        main(["build-model", "--family", "toy_edit", "--dims", "tiny", "--depth", "1", "--out", str(out)])
        == 0
    )
    assert read_family(out) == "toy_edit"
    counts = parameter_counts(out)
    assert set(counts) == {"transformer", "text_encoder", "vae"}
    assert f"{counts['transformer'] / 1e6:10.1f} M" in capsys.readouterr().out
    transformer = QwenImageTransformer2DModel.from_pretrained(out / "transformer")
    assert transformer.config.num_layers == 2  # depth 1 of each kind: one kind of block, 1 + 1

    monkeypatch.setenv("COCOEDIT_CACHE", str(tmp_path / "cache"))
    plan_args = ["policy.family=toy_edit", f"policy.model_path={out}", "data.n_items=1", "data.group_size=2"]
    gpus = ["rollout.gpus_per_worker=1", "learner.gpus_per_rank=1"]
    assert main(["plan", "--gpu-memory", "80", *plan_args, *gpus]) == 0
    printed = capsys.readouterr().out
    assert "plan: toy_edit" in printed and "rollout worker x1 (1 GPU" in printed and "fits" in printed
    assert "activations: VAE decode, batch 2" in printed and "forward + backward, micro-batch" in printed
    assert main(["plan", "--gpu-memory", "0.001", *plan_args, *gpus]) == 1

    cfg = load_config(None, plan_args)
    settings = generation_settings(cfg.policy, cfg.eval)
    assert (settings["num_steps"], settings["guidance"], settings["true_cfg"]) == (8, 1.0, False)
    policy_cfg = dataclasses.replace(common.policy_config(out), family="toy_edit")
    policy = load_policy(policy_cfg)
    assert type(policy) is ToyEditPolicy
    worker = RolloutWorker(policy_cfg, RolloutConfig(sampler="dpm2", num_steps=2, batch_size=2), policy)
    batch = worker.sample(make_items(n_items=1, group_size=2), policy_version=0)
    assert batch.x0.shape[0] == 2 and torch.isfinite(batch.x0).all()
    assert batch.edited_images.dtype == torch.uint8

    learner_policy = load_policy(policy_cfg, parts="transformer")  # a learner rank loads only this
    assert set(learner_policy.components()) == {"transformer"}
    learner = Learner(policy_cfg, common.learner_config(train_timesteps=1), policy=learner_policy)
    before = {k: v.clone() for k, v in learner_policy.lora_state_dict("default").items()}
    metrics = learner.update(batch, torch.tensor([1.0, -1.0]), torch.ones(2, dtype=torch.bool))
    assert not metrics.get("learner/skipped") and math.isfinite(metrics["loss/total"])
    assert common.lora_max_diff(before, learner_policy.lora_state_dict("default")) > 0

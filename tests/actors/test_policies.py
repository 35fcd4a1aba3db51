"""EditPolicy implementations against the stock diffusers pipelines, on tiny real models (float32, CPU)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import load_policy
from cocoedit.actors.policies.lora import export_diffusers_lora
from cocoedit.actors.policies.tiny import TINY_MAX_SEQUENCE_LENGTH
from cocoedit.actors.samplers import sample, shifted_sigmas
from cocoedit.actors.types import Condition

SIZE = 32


def policy_config(path, family: str = "flux_kontext", **kw) -> PolicyConfig:
    base = dict(
        family=family,
        model_path=str(path),
        dtype="float32",
        device="cpu",
        lora_rank=4,
        lora_alpha=8,
        gradient_checkpointing=False,
    )
    base.update(kw)
    return PolicyConfig(**base)


@pytest.fixture(scope="module")
def flux(tiny_model_dir):
    return load_policy(policy_config(tiny_model_dir("flux_kontext")))


def source_image(seed: int = 0, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def flux_pipeline_latents(pipe, image, instruction, noise, steps):
    """The stock FluxKontextPipeline at our size: _auto_resize off and max_area = H*W keep it at SIZE."""
    return pipe(
        image=to_pil(image),
        prompt=instruction,
        height=SIZE,
        width=SIZE,
        max_area=SIZE * SIZE,
        _auto_resize=False,
        num_inference_steps=steps,
        guidance_scale=2.5,
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        latents=noise,
        output_type="latent",
    ).images


def test_flux_euler_matches_stock_pipeline(flux):
    src = source_image(1)
    length, dim = flux.latent_shape(SIZE, SIZE)
    noise = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(3))
    cond = flux.encode_condition(["make the square blue"], src)
    sigmas = shifted_sigmas(4, length, dict(flux.pipe.scheduler.config))
    ours = sample(flux, cond, noise, sigmas, "euler").x0
    stock = flux_pipeline_latents(flux.pipe, src[0], "make the square blue", noise, 4)
    assert ours.shape == stock.shape == (1, length, dim)
    assert (ours - stock).abs().max().item() < 1e-4
    assert torch.allclose(flux.pipe.scheduler.sigmas, sigmas, atol=1e-6)


def test_flux_pack_unpack_identity_and_shapes(flux):
    length, dim = flux.latent_shape(SIZE, SIZE)
    h = SIZE // flux.vae_scale_factor
    grid = torch.randn(3, flux.latent_channels, h, h)
    packed = flux.pack(grid)
    assert packed.shape == (3, length, dim)
    assert torch.equal(flux.unpack(packed, SIZE, SIZE), grid)
    cond = flux.encode_condition(["a", "b", "c"], source_image(0, 3))
    assert flux.source_latents(cond).shape == (3, length, dim)
    assert cond.tensors["image_ids"][:, 0].eq(1).all() and cond.tensors["latent_ids"][:, 0].eq(0).all()
    with pytest.raises(ValueError, match="multiple of"):
        flux.latent_shape(SIZE + 2, SIZE)


def test_flux_decode_gives_uint8_images(flux):
    length, dim = flux.latent_shape(SIZE, SIZE)
    images = flux.decode(torch.randn(2, length, dim), SIZE, SIZE)
    assert images.shape == (2, 3, SIZE, SIZE) and images.dtype == torch.uint8


def perturb_default(policy, seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {
        k: v + scale * torch.randn(v.shape, generator=g) for k, v in policy.lora_state_dict("default").items()
    }
    policy.load_lora_state_dict(state, "default")
    return state


def test_adapters_views_and_trainability(tiny_model_dir):
    policy = load_policy(policy_config(tiny_model_dir("flux_kontext")))
    length, dim = policy.latent_shape(SIZE, SIZE)
    cond = policy.encode_condition(["x"], source_image(2))
    x = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.7])
    old0 = policy.lora_state_dict("old")
    default0 = policy.lora_state_dict("default")
    assert old0.keys() == default0.keys() and all(torch.equal(old0[k], default0[k]) for k in old0)
    # Gaussian init: A random, B zero, so every view starts equal to the base model.
    assert any(k.endswith("lora_A.weight") and v.abs().sum() > 0 for k, v in default0.items())
    assert all(v.abs().sum() == 0 for k, v in default0.items() if k.endswith("lora_B.weight"))
    with torch.no_grad():
        v_ref0 = policy.velocity(x, t, cond)
    perturb_default(policy)
    with torch.no_grad():
        v_default = policy.velocity(x, t, cond)
        with policy.adapter("old"):
            v_old = policy.velocity(x, t, cond)
        with policy.adapter("ref"):
            v_ref = policy.velocity(x, t, cond)
    assert torch.equal(v_old, v_ref0) and torch.equal(v_ref, v_ref0)
    assert (v_default - v_ref).abs().max() > 1e-4
    trainable = policy.trainable_parameters()
    assert trainable and all(p.requires_grad for p in trainable)
    names = {n for n, p in policy.transformer.named_parameters() if p.requires_grad}
    assert names and all(".default." in n for n in names)
    n_lora = sum(1 for n, _ in policy.transformer.named_parameters() if ".lora_" in n)
    assert len(trainable) * 2 == n_lora  # default + old, same shapes
    # Gradients reach the default adapter only, also after switching views.
    with policy.adapter("old"):
        pass
    policy.velocity(x, t, cond).square().mean().backward()
    assert all(p.grad is not None for p in trainable)
    assert all(p.grad is None for n, p in policy.transformer.named_parameters() if ".old." in n)


def test_lora_state_dict_round_trip_and_errors(tiny_model_dir):
    policy = load_policy(policy_config(tiny_model_dir("flux_kontext")))
    state = perturb_default(policy, seed=1)
    policy.load_lora_state_dict(state, "old")
    back = policy.lora_state_dict("old")
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert all(v.device.type == "cpu" for v in back.values())
    with pytest.raises(KeyError, match="missing"):
        policy.load_lora_state_dict({k: v for i, (k, v) in enumerate(state.items()) if i}, "old")
    with pytest.raises(ValueError, match="shape"):
        policy.load_lora_state_dict({k: v[..., :1] for k, v in state.items()}, "old")


def test_exported_lora_changes_stock_pipeline_identically(tiny_model_dir, tmp_path):
    from diffusers import FluxKontextPipeline

    path = tiny_model_dir("flux_kontext")
    policy = load_policy(policy_config(path))
    perturb_default(policy, seed=2, scale=0.2)
    file = export_diffusers_lora(policy, "default", tmp_path / "lora.safetensors")
    src = source_image(4)
    length, dim = policy.latent_shape(SIZE, SIZE)
    noise = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(5))
    sigmas = shifted_sigmas(3, length, dict(policy.pipe.scheduler.config))
    ours = sample(policy, policy.encode_condition(["recolour"], src), noise, sigmas, "euler").x0
    with policy.adapter("ref"):
        base = sample(policy, policy.encode_condition(["recolour"], src), noise, sigmas, "euler").x0
    pipe = FluxKontextPipeline.from_pretrained(path, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(file))
    stock = flux_pipeline_latents(pipe, src[0], "recolour", noise, 3)
    assert (ours - base).abs().max() > 1e-3  # the LoRA does change the edit ...
    assert (ours - stock).abs().max().item() < 1e-4  # ... and the stock pipeline reproduces it


def test_load_policy_errors(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="model_path is not set"):
        load_policy(PolicyConfig(family="flux_kontext", model_path=None))
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_policy(policy_config(tmp_path))
    with pytest.raises(ValueError, match="holds a 'flux_kontext' model"):
        load_policy(policy_config(tiny_model_dir("flux_kontext"), family="qwen_image_edit"))
    with pytest.raises(ValueError, match="LoRA targets"):
        load_policy(policy_config(tiny_model_dir("flux_kontext"), lora_targets=("nope",)))


@pytest.mark.parametrize("family", ["qwen_image_edit", "qwen_image_edit_plus"])
def test_qwen_euler_matches_stock_pipeline(family, tiny_model_dir, monkeypatch):
    """The stock Qwen pipelines resize the source to ~1 MP for the VAE (Plus: and to ~384^2 for the
    text encoder) whatever the output size; rollouts keep it at the training size. To compare the same
    computation, `calculate_dimensions` - the pipelines' only sizing rule - is pinned to the source
    size, so the stock pipeline resizes SIZE -> SIZE (a no-op) and everything else is stock code."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE, None))
    monkeypatch.setattr(plus_module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE))
    policy = load_policy(policy_config(tiny_model_dir(family), family=family))
    src = source_image(6)
    length, dim = policy.latent_shape(SIZE, SIZE)
    noise = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(7))
    cond = policy.encode_condition(["remove the circle"], src)
    sigmas = shifted_sigmas(4, length, dict(policy.pipe.scheduler.config))
    ours = sample(policy, cond, noise, sigmas, "euler").x0
    stock = policy.pipe(
        image=to_pil(src[0]),
        prompt="remove the circle",
        height=SIZE,
        width=SIZE,
        num_inference_steps=4,
        latents=noise,
        output_type="latent",
    ).images
    assert ours.shape == stock.shape == (1, length, dim)
    assert (ours - stock).abs().max().item() < 1e-4
    # Batching pads the text tokens (masked): an edit's result does not depend on its batch-mates.
    pair = torch.cat([source_image(9), src])
    cond2 = policy.encode_condition(["a much longer instruction here", "remove the circle"], pair)
    both = sample(policy, cond2, torch.cat([noise, noise]), sigmas, "euler").x0
    assert (both[1] - ours[0]).abs().max().item() < 1e-4
    # Text tokens are padded to a fixed length, so Conditions of different workers concatenate.
    assert (
        cond.tensors["prompt_embeds"].shape[1]
        == cond2.tensors["prompt_embeds"].shape[1]
        == policy.text_length
    )
    assert len(Condition.cat([cond, cond2]).tensors["prompt_embeds_mask"]) == 3
    images = policy.decode(ours, SIZE, SIZE)
    assert images.shape == (1, 3, SIZE, SIZE) and images.dtype == torch.uint8


@pytest.mark.parametrize("family", ["flux_kontext", "qwen_image_edit"])
def test_transformer_only_policy_has_the_same_grid_and_velocity(family, tiny_model_dir):
    """parts="transformer" (a learner rank): no text encoder or VAE, the latent grid read from the VAE's
    config, the same velocity as the full policy; encoding and decoding refuse with the fix."""
    cfg = policy_config(tiny_model_dir(family), family=family)
    full, lean = load_policy(cfg), load_policy(cfg, parts="transformer")
    assert set(lean.components()) == {"transformer"} and "vae" in full.components()
    assert lean.latent_grid(SIZE, SIZE) == full.latent_grid(SIZE, SIZE)
    assert (lean.vae_scale_factor, lean.latent_channels) == (full.vae_scale_factor, full.latent_channels)
    cond = full.encode_condition(["remove the circle"], source_image(3))
    length, dim = full.latent_shape(SIZE, SIZE)
    x = torch.randn(1, length, dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(
            lean.velocity(x, torch.tensor([0.6]), cond), full.velocity(x, torch.tensor([0.6]), cond)
        )
    with pytest.raises(RuntimeError, match="parts='transformer'.*load it with parts='all'"):
        lean.encode_condition(["x"], source_image(3))
    with pytest.raises(RuntimeError, match="decode needs the text encoder and VAE"):
        lean.decode(x, SIZE, SIZE)
    with pytest.raises(ValueError, match="parts='vae' must be one of"):
        load_policy(cfg, parts="vae")  # type: ignore[arg-type]


def test_lora_adapters_are_float32_over_a_bf16_base(tiny_model_dir):
    policy = load_policy(policy_config(tiny_model_dir("flux_kontext"), dtype="bfloat16"))
    lora = {p.dtype for n, p in policy.transformer.named_parameters() if ".lora_" in n}
    base = {p.dtype for n, p in policy.transformer.named_parameters() if ".lora_" not in n}
    assert lora == {torch.float32} and base == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in policy.lora_state_dict("old").values())

"""The trained LoRA in each family's diffusers format: a checkpoint's and the run's `lora/` load into the
stock pipeline with `load_lora_weights` and reproduce the learner's theta (velocity and `cocoedit edit`),
and `cocoedit export` writes either view of any checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cocoedit.actors.config import PolicyConfig
from cocoedit.actors.policies import load_policy
from cocoedit.actors.policies.lora import LORA_WEIGHT_NAME
from cocoedit.actors.policies.tiny import TINY_MAX_SEQUENCE_LENGTH, build_tiny_model
from cocoedit.actors.samplers import initial_noise, sample, shifted_sigmas
from cocoedit.cluster.cli import main as cli_main
from cocoedit.learner.learner import Learner
from tests.learner import common

SIZE = common.SIZE
FAMILIES = ["flux_kontext", "qwen_image_edit", "qwen_image_edit_plus"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def pinned_qwen_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stock Qwen pipelines resize the source to ~1 MP whatever the output size; rollouts keep the
    training size. Pinning `calculate_dimensions` (their only sizing rule) to SIZE compares the same
    computation (see tests/actors/test_policies.py)."""
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
    import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

    monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE, None))
    monkeypatch.setattr(plus_module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE))


def _policy_config(model: Path, family: str) -> PolicyConfig:
    return PolicyConfig(
        family=family,  # type: ignore[arg-type]
        model_path=str(model),
        dtype="float32",
        device="cpu",
        lora_rank=4,
        lora_alpha=16,  # scale alpha / r = 4: a wrong scale on load shows at once
        max_sequence_length=TINY_MAX_SEQUENCE_LENGTH if family == "flux_kontext" else 512,
        gradient_checkpointing=False,
    )


def _stock_kwargs(family: str) -> dict:
    if family == "flux_kontext":
        return dict(
            max_area=SIZE * SIZE,
            _auto_resize=False,
            guidance_scale=2.5,
            max_sequence_length=TINY_MAX_SEQUENCE_LENGTH,
        )
    return {}


@pytest.mark.parametrize("family", FAMILIES)
def test_run_lora_in_the_stock_pipeline_is_the_learners_theta(
    family: str, tmp_path: Path, pinned_qwen_size: None
) -> None:
    model = build_tiny_model(family, tmp_path / "model", seed=0, **common.MODEL_KWARGS)
    cfg = _policy_config(model, family)
    policy = load_policy(cfg)
    learner = Learner(cfg, common.learner_config(lr=3e-2, zero_stage=0), policy=policy)
    batch = common.make_batch(policy)
    adv, valid = torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool)
    for _ in range(2):
        learner.update(batch, adv, valid)
    run = tmp_path / "run"
    ckpt = learner.save(run)
    lora_dir = run / "lora"
    assert (lora_dir / LORA_WEIGHT_NAME).read_bytes() == (ckpt / "lora" / LORA_WEIGHT_NAME).read_bytes()

    # The stock pipeline + load_lora_weights: its velocity at the first Euler step of a 2-step edit.
    pipe = policy.pipeline_class().from_pretrained(str(model), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(lora_dir))
    source, instruction = batch.source_images[0], batch.instructions[0]
    image = Image.fromarray(source.permute(1, 2, 0).numpy())
    x1 = initial_noise(policy, torch.Generator().manual_seed(5), SIZE, SIZE)[None]
    after_first: list[torch.Tensor] = []

    def keep_first(pipe, i, t, kwargs):  # noqa: ANN001, ANN202 - diffusers' callback signature
        if i == 0:
            after_first.append(kwargs["latents"].clone())
        return {}

    pipe(
        image=image,
        prompt=instruction,
        height=SIZE,
        width=SIZE,
        num_inference_steps=2,
        latents=x1.clone(),
        output_type="latent",
        callback_on_step_end=keep_first,
        **_stock_kwargs(family),
    )
    s0, s1 = (float(s) for s in pipe.scheduler.sigmas[:2])
    v_stock = (after_first[0] - x1) / (s1 - s0)
    cond = policy.encode_condition([instruction], source[None])
    with torch.no_grad():
        v_theta = learner.views.velocity("default", x1, torch.tensor([s0]), cond)
        v_base = learner.views.velocity("ref", x1, torch.tensor([s0]), cond)
    diff = (v_stock - v_theta).abs().max().item()
    print(f"{family}: max |v(stock pipeline + load_lora_weights) - v(learner theta)| = {diff:.2e}")
    assert diff < 1e-5
    assert (v_theta - v_base).abs().max().item() > 1e-3  # the trained LoRA does change the velocity

    # `cocoedit edit --lora RUN_DIR/lora` gives the edit the policy's theta samples for that seed.
    image.save(tmp_path / "in.png")
    argv = ["edit", "--model", str(model), "--lora", str(lora_dir), "--image", str(tmp_path / "in.png")]
    argv += ["--instruction", instruction, "--out", str(tmp_path / "out.png"), "--steps", "2", "--seed", "9"]
    assert cli_main(argv) == 0
    edited = torch.from_numpy(np.array(Image.open(tmp_path / "out.png").convert("RGB"))).permute(2, 0, 1)
    length, _ = policy.latent_shape(SIZE, SIZE)
    noise = initial_noise(policy, torch.Generator().manual_seed(9), SIZE, SIZE)[None]
    sigmas = shifted_sigmas(2, length, policy.scheduler_config())
    with policy.adapter("default"):
        ours = policy.decode(sample(policy, cond, noise, sigmas, "euler").x0, SIZE, SIZE)[0]
    assert (edited.int() - ours.int()).abs().max().item() <= 1


def test_cli_export_writes_either_view_of_a_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    model = common.build_model(tmp_path / "model")
    policy = common.load(model)
    cfg = common.learner_config(zero_stage=0)
    learner = Learner(policy.cfg, cfg, policy=policy)  # type: ignore[attr-defined]
    batch = common.make_batch(policy)
    learner.update(batch, torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.ones(4, dtype=torch.bool))
    ckpt = learner.save(tmp_path / "run")
    for view in ("default", "old"):
        out = tmp_path / f"export_{view}"
        assert cli_main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--view", view]) == 0
        exported = load_file(str(out / LORA_WEIGHT_NAME))
        expected = policy.lora_state_dict(view)  # type: ignore[arg-type]
        assert sorted(exported) == sorted(f"transformer.{k}" for k in expected)
        assert all(torch.equal(exported[f"transformer.{k}"], v) for k, v in expected.items())
    assert common.lora_max_diff(policy.lora_state_dict("default"), policy.lora_state_dict("old")) > 0
    # a run directory is not a checkpoint: the message names where its checkpoints and lora/ are
    assert cli_main(["export", "--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "x")]) == 2

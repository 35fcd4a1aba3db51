"""RolloutWorker on tiny real models: stock-pipeline equivalence, determinism, SDE, weight swaps, Ray."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from cocoedit.actors.config import PolicyConfig, RolloutConfig
from cocoedit.actors.policies.tiny import TINY_MAX_SEQUENCE_LENGTH
from cocoedit.actors.rollout import RolloutWorker
from cocoedit.actors.samplers import initial_noise, sde_step
from cocoedit.actors.types import EditItem, GroupedItem

SIZE = 32


def policy_config(path, family: str = "flux_kontext") -> PolicyConfig:
    return PolicyConfig(
        family=family,
        model_path=str(path),
        dtype="float32",
        device="cpu",
        lora_rank=4,
        lora_alpha=8,
        gradient_checkpointing=False,
    )


def make_items(n_items: int, group_size: int, epoch: int = 0) -> list[GroupedItem]:
    out = []
    for i in range(n_items):
        g = torch.Generator().manual_seed(100 + i)
        mask = torch.zeros(1, SIZE, SIZE)
        mask[:, 8:20, 8:20] = 1
        item = EditItem(
            item_id=f"item{i}",
            instruction=["make the square blue", "remove the circle", "add a red dot"][i % 3],
            source_image=torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=g),
            edit_mask=mask,
            target_image=torch.randint(0, 256, (3, SIZE, SIZE), dtype=torch.uint8, generator=g),
        )
        for k in range(group_size):
            out.append(GroupedItem(item, f"{epoch}:item{i}", f"{epoch}:item{i}:{k}", seed=1000 * i + k))
    return out


@pytest.fixture(scope="module")
def flux_worker(tiny_model_dir):
    return RolloutWorker(
        policy_config(tiny_model_dir("flux_kontext")),
        RolloutConfig(sampler="dpm2", num_steps=6, batch_size=4),
    )


def with_rollout(worker: RolloutWorker, **changes) -> RolloutWorker:
    """The same policy under other rollout settings (no reload)."""
    return RolloutWorker(worker.policy_cfg, dataclasses.replace(worker.rollout_cfg, **changes), worker.policy)


def stock_latents(family: str, pipe, gi: GroupedItem, steps: int, monkeypatch) -> torch.Tensor:
    image = Image.fromarray(gi.item.source_image.permute(1, 2, 0).numpy())
    generator = torch.Generator().manual_seed(gi.seed)
    if family == "flux_kontext":
        kw = dict(max_area=SIZE * SIZE, _auto_resize=False, guidance_scale=2.5)
        kw["max_sequence_length"] = TINY_MAX_SEQUENCE_LENGTH
    else:
        # Pin the pipelines' ~1 MP source resize to the source size (see test_policies for why).
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit as edit_module
        import diffusers.pipelines.qwenimage.pipeline_qwenimage_edit_plus as plus_module

        monkeypatch.setattr(edit_module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE, None))
        monkeypatch.setattr(plus_module, "calculate_dimensions", lambda area, ratio: (SIZE, SIZE))
        kw = {}
    return pipe(
        image=image,
        prompt=gi.item.instruction,
        height=SIZE,
        width=SIZE,
        num_inference_steps=steps,
        generator=generator,
        output_type="latent",
        **kw,
    ).images[0]


@pytest.mark.parametrize("family", ["flux_kontext", "qwen_image_edit", "qwen_image_edit_plus"])
def test_worker_euler_reproduces_stock_pipeline_for_each_seed(
    family, tiny_model_dir, flux_worker, monkeypatch
):
    """Euler, no LoRA, float32: edit k of the worker == the stock pipeline with generator seed k."""
    if family == "flux_kontext":
        worker = with_rollout(flux_worker, sampler="euler", num_steps=4, batch_size=2)
    else:
        worker = RolloutWorker(
            policy_config(tiny_model_dir(family), family),
            RolloutConfig(sampler="euler", num_steps=4, batch_size=2),
        )
    items = make_items(2, 2)[1:]  # 3 edits over 2 groups, micro-batches of 2
    batch = worker.sample(items, policy_version=0)
    for j, gi in enumerate(items):
        stock = stock_latents(family, worker.policy.pipe, gi, 4, monkeypatch)
        assert (batch.x0[j] - stock).abs().max().item() < 1e-4


def test_rollout_batch_contents(flux_worker):
    items = make_items(2, 3)
    batch = flux_worker.sample(items, policy_version=0)
    length, dim = flux_worker.policy.latent_shape(SIZE, SIZE)
    n = len(items)
    assert len(batch) == n and batch.policy_version == 0 and batch.sampler == "dpm2"
    assert batch.edit_ids == [gi.edit_id for gi in items] and batch.seeds == [gi.seed for gi in items]
    assert batch.group_ids == ["0:item0"] * 3 + ["0:item1"] * 3
    assert batch.x0.shape == (n, length, dim) and batch.x0.dtype == torch.float32
    assert batch.source_latents.shape == (2, length, dim)  # one row per group
    assert batch.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert batch.edited_images.shape == (n, 3, SIZE, SIZE) and batch.edited_images.dtype == torch.uint8
    # what a group's edits share (source, target, mask as one byte per pixel) is stored once per group
    assert torch.equal(batch.source_images[1], items[3].item.source_image)
    assert batch.source_images.shape == (2, 3, SIZE, SIZE) and batch.target_images.shape == (2, 3, SIZE, SIZE)
    assert batch.edit_masks.shape == (2, 1, SIZE, SIZE) and batch.edit_masks.dtype == torch.uint8
    assert torch.equal(batch.edit_masks_unit([4])[0], items[4].item.edit_mask)  # lossless for 8-bit masks
    assert batch.sigmas.shape == (7,) and batch.sigmas[0] == 1 and batch.sigmas[-1] == 0
    assert batch.trajectory is None and batch.log_probs is None
    assert batch.condition.tensors["prompt_embeds"].shape[0] == 2
    # Same source and instruction inside a group: one condition row, x_src; distinct noise -> distinct x0.
    x_src = batch.edit_source_latents(list(range(n)))
    assert torch.equal(x_src[0], x_src[2]) and not torch.equal(x_src[0], x_src[3])
    assert (batch.x0[0] - batch.x0[1]).abs().max() > 1e-3
    assert set(batch.timings) >= {"encode_s", "sample_s", "decode_s", "edits_per_s"}
    # Deterministic, and independent of micro-batching and of the other edits of the call.
    again = with_rollout(flux_worker, batch_size=1).sample(items[2:4], policy_version=0)
    assert (again.x0 - batch.x0[2:4]).abs().max().item() < 1e-5
    assert torch.equal(again.edited_images[0], batch.edited_images[2]) or (
        (again.edited_images[0].int() - batch.edited_images[2].int()).abs().max() <= 1
    )


def test_sde_rollout_stores_trajectory_and_reproducible_log_probs(flux_worker):
    worker = with_rollout(flux_worker, sampler="sde", num_steps=4, batch_size=3)
    items = make_items(1, 3)
    batch = worker.sample(items, policy_version=0)
    n, steps = len(items), 4
    assert batch.trajectory.shape == (n, steps + 1) + tuple(batch.x0.shape[1:])
    assert batch.log_probs.shape == (n, steps) and torch.isfinite(batch.log_probs).all()
    assert torch.equal(batch.trajectory[:, -1], batch.x0)
    first = torch.stack(
        [initial_noise(worker.policy, torch.Generator().manual_seed(s), SIZE, SIZE) for s in batch.seeds]
    )
    assert torch.equal(batch.trajectory[:, 0], first)
    # The learner's re-evaluation of a stored transition under theta_old gives the stored log-prob.
    policy, s = worker.policy, batch.sigmas
    cond = batch.edit_condition(list(range(n)))
    with torch.no_grad(), policy.adapter("old"):
        for i in range(steps):
            x = batch.trajectory[:, i]
            v = policy.velocity(x, torch.full((n,), float(s[i])), cond)
            _, lp, _, _ = sde_step(
                x, v, s[i], s[i + 1], 0.7, prev_sample=batch.trajectory[:, i + 1], sigma_max=s[1]
            )
            assert torch.allclose(lp, batch.log_probs[:, i], atol=1e-4)
    # Seeds fix the SDE noise too.
    again = worker.sample(items, policy_version=0)
    assert torch.allclose(again.x0, batch.x0, atol=1e-5)


def test_load_weights_swaps_the_sampling_adapter(tiny_model_dir):
    worker = RolloutWorker(
        policy_config(tiny_model_dir("flux_kontext")),
        RolloutConfig(sampler="dpm2", num_steps=3, batch_size=2),
    )
    items = make_items(1, 2)
    before = worker.sample(items, policy_version=0)
    default_before = worker.policy.lora_state_dict("default")
    g = torch.Generator().manual_seed(0)
    state = {
        k: v + 0.2 * torch.randn(v.shape, generator=g)
        for k, v in worker.policy.lora_state_dict("old").items()
    }
    worker.load_weights(state, version=1)
    assert worker.version == 1
    with pytest.raises(ValueError, match="holds version 1"):
        worker.sample(items, policy_version=0)
    after = worker.sample(items, policy_version=1)
    assert after.policy_version == 1
    assert (after.x0 - before.x0).abs().max() > 1e-3
    default_after = worker.policy.lora_state_dict("default")
    assert all(torch.equal(default_before[k], default_after[k]) for k in default_before)
    with pytest.raises(ValueError, match="older"):
        worker.load_weights(state, version=0)
    old = {k: v.clone() for k, v in worker.policy.lora_state_dict("old").items()}
    worker.load_weights({k: torch.zeros_like(v) for k, v in old.items()}, version=0, allow_older=True)
    assert worker.version == 0  # re-sampling a shard with the version it was drawn with
    worker.load_weights(old, version=1)
    with pytest.raises(ValueError, match="one image size"):
        small = dataclasses.replace(items[0].item, source_image=torch.zeros(3, 16, 16, dtype=torch.uint8))
        worker.sample([items[0], dataclasses.replace(items[1], item=small)], policy_version=1)


def test_two_ray_actors_sample_disjoint_shards_like_one_worker(ray_local, tiny_model_dir, flux_worker):
    ray = ray_local
    rollout_cfg = RolloutConfig(sampler="dpm2", num_steps=6, batch_size=4)
    pcfg = policy_config(tiny_model_dir("flux_kontext"))
    items = make_items(2, 4, epoch=3)
    remote = ray.remote(num_cpus=1)(RolloutWorker)
    actors = [remote.remote(pcfg, rollout_cfg) for _ in range(2)]
    shards = [items[:4], items[4:]]
    batches = ray.get([a.sample.remote(shard, 0) for a, shard in zip(actors, shards, strict=True)])
    single = flux_worker.sample(items, policy_version=0)
    x0 = torch.cat([b.x0 for b in batches])
    assert [e for b in batches for e in b.edit_ids] == single.edit_ids
    # Ray actors run 1 thread, this process 2: float reductions may differ in the last bits only.
    assert (x0 - single.x0).abs().max().item() < 1e-5
    edited = torch.cat([b.edited_images for b in batches])
    assert (edited.int() - single.edited_images.int()).abs().max() <= 1
    for a in actors:
        ray.kill(a)


def test_cli_edit_with_exported_lora_reproduces_the_worker(tiny_model_dir, tmp_path):
    """`cocoedit edit` (stock pipeline + load_lora_weights) gives the worker's edit for the same seed."""
    import numpy as np

    from cocoedit.actors.policies.lora import export_diffusers_lora
    from cocoedit.cluster.cli import main

    path = tiny_model_dir("flux_kontext")
    worker = RolloutWorker(policy_config(path), RolloutConfig(sampler="euler", num_steps=3, batch_size=1))
    g = torch.Generator().manual_seed(11)
    state = {
        k: v + 0.2 * torch.randn(v.shape, generator=g)
        for k, v in worker.policy.lora_state_dict("old").items()
    }
    worker.load_weights(state, version=1)
    lora_file = export_diffusers_lora(worker.policy, "old", tmp_path / "old.safetensors")
    gi = make_items(1, 1)[0]
    batch = worker.sample([gi], policy_version=1)
    Image.fromarray(gi.item.source_image.permute(1, 2, 0).numpy()).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    argv = ["edit", "--model", str(path), "--lora", str(lora_file), "--image", str(tmp_path / "in.png")]
    argv += ["--instruction", gi.item.instruction, "--out", str(out), "--steps", "3", "--seed", str(gi.seed)]
    assert main(argv) == 0
    edited = torch.from_numpy(np.array(Image.open(out).convert("RGB"))).permute(2, 0, 1)
    assert edited.shape == (3, SIZE, SIZE)
    assert (edited.int() - batch.edited_images[0].int()).abs().max() <= 1
    assert main(argv[:5] + ["--image", str(tmp_path / "missing.png")] + argv[7:]) == 2

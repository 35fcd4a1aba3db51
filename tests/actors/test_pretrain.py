"""The tiny editor's pre-training produces a normal diffusers directory the policy and stock pipeline load."""

import json
from pathlib import Path

import pytest
import torch

from cocoedit.actors.config import PolicyConfig, PretrainConfig
from cocoedit.actors.pretrain import pretrain_tiny

FAST = PretrainConfig(num_items=16, eval_items=4, vae_steps=3, steps=3, batch_size=4)


@pytest.fixture(scope="module")
def editor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pretrain_tiny(FAST, tmp_path_factory.mktemp("pretrain") / "editor")


def test_directory_is_a_plain_diffusers_editor(editor: Path) -> None:
    from diffusers import FluxKontextPipeline
    from safetensors.torch import load_file

    weights = load_file(str(next((editor / "transformer").glob("*.safetensors"))))
    assert not [k for k in weights if "lora" in k or "base_layer" in k]  # adapters were unloaded
    pipe = FluxKontextPipeline.from_pretrained(editor)
    report = json.loads((editor / "pretrain.json").read_text())
    # the VAE's latent normalisation is the one measured on the synthetic images
    assert pipe.vae.config.shift_factor == pytest.approx(report["vae"]["shift"])
    assert pipe.vae.config.scaling_factor == pytest.approx(report["vae"]["scale"])
    for stage in ("vae", "flow"):
        assert all(torch.isfinite(torch.tensor(v)) for k, v in report[stage].items() if k.startswith("loss"))
    assert 0.0 <= report["eval"]["instruction_score"] <= 1.0
    assert not list(editor.parent.glob(".pretrain_*"))  # the work directory was renamed, not left behind


def test_pretrained_weights_are_what_the_policy_runs(editor: Path) -> None:
    from cocoedit.actors.policies import load_policy

    cfg = PolicyConfig(model_path=str(editor), dtype="float32", device="cpu", lora_rank=2, lora_alpha=2)
    policy = load_policy(cfg)
    from safetensors.torch import load_file

    saved = load_file(str(next((editor / "transformer").glob("*.safetensors"))))
    live = {
        k.replace(".base_layer", ""): v
        for k, v in policy.transformer.state_dict().items()
        if "lora_" not in k
    }
    assert set(saved) == set(live)
    assert all(torch.equal(saved[k], live[k]) for k in saved)


def test_report_and_grid_are_of_the_held_out_items(editor: Path) -> None:
    import numpy as np
    from diffusers import AutoencoderKL
    from PIL import Image

    from cocoedit.actors.pretrain import GRID_ITEMS, vae_psnr
    from cocoedit.actors.synth import synthetic_items

    report = json.loads((editor / "pretrain.json").read_text())
    held_out = synthetic_items(FAST.num_items + FAST.eval_items, FAST.image_size, FAST.seed)[FAST.num_items :]
    # the saved VAE reconstructs the held-out items at the PSNR the report states
    vae = AutoencoderKL.from_pretrained(editor / "vae").eval()
    assert report["eval"]["vae_psnr"] == pytest.approx(vae_psnr(vae, held_out), abs=1e-3)
    assert set(report["eval"]) == {"vae_psnr", "instruction_score", "edit_psnr", "keep_psnr"}
    # grid.png: one column per held-out item (x2 nearest), rows source / edit / target
    grid = np.asarray(Image.open(editor / "grid.png"))[::2, ::2]
    n, size = min(GRID_ITEMS, FAST.eval_items), FAST.image_size
    assert grid.shape == (3 * size, n * size, 3)
    for k, item in enumerate(held_out[:n]):
        column = grid[:, k * size : (k + 1) * size]
        assert np.array_equal(column[:size], item.source_image.permute(1, 2, 0).numpy())
        assert np.array_equal(column[2 * size :], item.target_image.permute(1, 2, 0).numpy())


def test_build_is_bit_identical_under_any_thread_count(tmp_path: Path, editor: Path) -> None:
    """The module's editor was built under the session's thread count; one built under another count
    (set by the caller) has the same bytes, and the caller's setting is back afterwards. Unpinned, the
    two builds differed (1 vs 2 threads)."""
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    torch.set_num_threads(threads)
    try:
        other = pretrain_tiny(FAST, tmp_path / "editor")
        assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
    for part in ("transformer", "vae"):
        mine = next((editor / part).glob("*.safetensors")).read_bytes()
        assert next((other / part).glob("*.safetensors")).read_bytes() == mine, part

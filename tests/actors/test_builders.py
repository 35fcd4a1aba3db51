"""Editors built in code: the real-dims specs have the published sizes; the CLI writes a loadable model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cocoedit.actors.policies.builders import (
    ModelSpec,
    assemble,
    build_model,
    model_spec,
    parameter_counts,
    real_spec,
    tiny_spec,
)
from cocoedit.cluster.cli import main


def _meta_counts(spec: ModelSpec) -> dict[str, int]:
    with torch.device("meta"):
        pipe = assemble(spec)
    return {
        name: sum(p.numel() for p in module.parameters())
        for name, module in pipe.components.items()
        if isinstance(module, torch.nn.Module)
    }


@pytest.mark.parametrize(
    "family, expected",
    [
        # FLUX.1-Kontext-dev: transformer 11.9 B, T5-XXL encoder 4.76 B, CLIP-L text 123 M, VAE 83.8 M
        (
            "flux_kontext",
            {
                "transformer": 11_901_408_320,
                "text_encoder_2": 4_762_310_656,
                "text_encoder": 123_060_480,
                "vae": 83_819_683,
            },
        ),
        # Qwen-Image-Edit: transformer 20.4 B, Qwen2.5-VL-7B 8.29 B, VAE 127 M
        (
            "qwen_image_edit",
            {"transformer": 20_430_401_088, "text_encoder": 8_292_166_656, "vae": 126_892_531},
        ),
    ],
)
def test_full_real_spec_has_the_published_parameter_counts(family: str, expected: dict[str, int]) -> None:
    assert _meta_counts(real_spec(family, depth=None, real_vocab=True)) == expected


def test_depth_sets_the_transformer_blocks_and_text_encoders_keep_their_widths() -> None:
    flux1, flux2 = real_spec("flux_kontext", 1), real_spec("flux_kontext", 2)
    assert (flux1.transformer["num_layers"], flux1.transformer["num_single_layers"]) == (1, 1)
    assert flux1.text_encoder_2["d_model"] == 4096 and flux1.text_encoder_2["num_layers"] == 1
    assert flux1.token_limits == (77, 512)
    assert (flux2.transformer["num_layers"], flux2.transformer["num_single_layers"]) == (2, 2)
    assert _meta_counts(flux1)["transformer"] == 545_548_096  # 1 dual-stream + 1 single-stream block
    qwen = real_spec("qwen_image_edit_plus", 1)
    assert qwen.transformer["num_layers"] == 1 and qwen.text_encoder["text_config"]["hidden_size"] == 3584
    assert _meta_counts(qwen)["transformer"] == 380_354_624


def test_spec_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="tiny-only"):
        model_spec("flux_kontext", "real", 1, text_dim=64)
    with pytest.raises(ValueError, match="dims='huge'"):
        model_spec("flux_kontext", "huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth=0"):
        real_spec("flux_kontext", 0)
    with pytest.raises(ValueError, match="unknown policy family"):
        tiny_spec("sdxl")
    assert model_spec("qwen_image_edit", "tiny", depth=3).transformer["num_layers"] == 6


def test_build_model_cli_writes_a_model_and_prints_its_sizes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny"
    rc = main(
        ["build-model", "--family", "flux_kontext", "--dims", "tiny", "--depth", "1", "--out", str(out)]
    )
    assert rc == 0
    counts = parameter_counts(out)
    assert set(counts) == {"transformer", "text_encoder", "text_encoder_2", "vae"}
    printed = capsys.readouterr().out
    assert f"{counts['transformer'] / 1e6:10.1f} M" in printed
    from diffusers import FluxKontextPipeline

    pipe = FluxKontextPipeline.from_pretrained(out)
    assert pipe.transformer.config.num_layers == 1 and pipe.transformer.config.num_single_layers == 1
    assert sum(p.numel() for p in pipe.transformer.parameters()) == counts["transformer"]


def test_bfloat16_build_saves_bfloat16(tmp_path: Path) -> None:
    from cocoedit.actors.policies.builders import safetensors_shapes

    out = build_model("qwen_image_edit", tmp_path / "q", dims="tiny", depth=1, dtype="bfloat16")
    dtypes = {dtype for _, dtype in safetensors_shapes(out / "transformer").values()}
    assert dtypes == {"BF16"}

"""`cocoedit edit`: edit one image with the STOCK diffusers pipeline of a model directory (+ a LoRA).

    cocoedit edit --model DIR [--lora FILE|DIR] --image IN --instruction TEXT --out OUT \
        [--steps N] [--seed S] [--size PX]

The family (FLUX.1-Kontext, Qwen-Image-Edit, Qwen-Image-Edit-2509) comes from DIR/model_index.json.
A LoRA written by training (`RUN_DIR/lora`, a checkpoint's `lora/`, `cocoedit export`) or any diffusers
LoRA file or directory is applied with `pipe.load_lora_weights`. `--size` center-crops the input to a
square and resizes it to PX with the same function that prepares training items; the edit has the
input's size. bf16 on a GPU, float32 on CPU.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image

from cocoedit.actors.config import DataConfig
from cocoedit.actors.items import center_crop_resize, read_rgb


def load_image(path: str | Path, size: Optional[int]) -> Image.Image:
    """RGB image; with `size`, center-cropped to a square and resized to size x size by the function
    that prepares training items (actors.items), so an edit sees the pixels training saw."""
    image = read_rgb(str(path), DataConfig.max_image_pixels)
    if size is not None:
        image = center_crop_resize(image, None, size)[0]
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def build_pipeline(model: str | Path, lora: Optional[str | Path] = None) -> tuple[Any, str]:
    """(stock pipeline on the best device, family) for a diffusers model directory."""
    from cocoedit.actors.policies import FAMILIES, read_family

    family = read_family(model)
    policy_cls = FAMILIES[family].policy_class()
    cuda = torch.cuda.is_available()
    pipe = policy_cls.pipeline_class().from_pretrained(
        str(model), dtype=torch.bfloat16 if cuda else torch.float32
    )
    pipe.to("cuda" if cuda else "cpu")
    if lora is not None:
        if not Path(lora).exists():
            raise FileNotFoundError(f"--lora {lora} does not exist")
        pipe.load_lora_weights(str(lora))
    return pipe, family


def edit_image(
    pipe: Any,
    family: str,
    image: Image.Image,
    instruction: str,
    steps: Optional[int] = None,
    seed: int = 0,
) -> Image.Image:
    """One edit with the stock pipeline; the output has the input's size (rounded to the model's grid)."""
    multiple = pipe.vae_scale_factor * 2
    width, height = image.width // multiple * multiple, image.height // multiple * multiple
    if width == 0 or height == 0:
        raise ValueError(f"image {image.size} is smaller than the model's {multiple}-pixel grid; use --size")
    kwargs: dict[str, Any] = dict(
        image=image,
        prompt=instruction,
        height=height,
        width=width,
        generator=torch.Generator().manual_seed(seed),
    )
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    from cocoedit.actors.policies import family as family_of

    fam = family_of(family)
    kwargs.update(fam.policy_class().stock_call_kwargs(pipe, height, width, fam.guidance))
    return pipe(**kwargs).images[0]


def cli_edit(args: argparse.Namespace) -> int:
    """Entry point of `cocoedit edit` (see the module docstring)."""
    if not Path(args.image).is_file():
        print(f"--image {args.image} does not exist", file=sys.stderr)
        return 2
    if not args.instruction.strip():
        print("--instruction is empty", file=sys.stderr)
        return 2
    try:
        image = load_image(args.image, args.size)
    except ValueError as e:  # not an image, or over the pixel limit (read from its header)
        print(f"--image: {e}", file=sys.stderr)
        return 2
    pipe, family = build_pipeline(args.model, args.lora)
    pipe.set_progress_bar_config(disable=True)
    result = edit_image(pipe, family, image, args.instruction, args.steps, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result.save(out)
    print(f"{family} edit written to {out} ({result.width}x{result.height})")
    return 0

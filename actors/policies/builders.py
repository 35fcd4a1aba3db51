"""Editors built in code: the real diffusers / transformers classes with random (seeded) weights and
tokenizers built from an in-memory vocabulary (no hub access). One code path, two sizes:

- `dims="tiny"`: a few dozen units wide (tests, the CPU tiny mode; `tiny.build_tiny_model`);
- `dims="real"`: the published widths of FLUX.1-Kontext-dev and Qwen-Image-Edit(-2509) at a chosen
  depth, to dry-run a production config on a workstation (`cocoedit train --config X --dry-run`) and
  to size memory (`cocoedit plan`).

    cocoedit build-model --family flux_kontext --dims real --depth 1 --out /tmp/flux_d1
    path = build_model("qwen_image_edit", "/tmp/qwen_d1", dims="real", depth=1)

Real dims (depth d; None = the full model): the published widths with d transformer blocks of each
kind and 1-layer text encoders (and vision towers). The sizes themselves live in each family's module
(its `Architecture`, e.g. `flux_kontext.FluxKontextArchitecture`); this module only dispatches through
the FAMILIES registry. Text encoders use the vocabulary of the offline tokenizer (a few hundred tokens)
unless the spec says otherwise (`real_vocab=True`, what `cocoedit plan` counts).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Literal, Optional

import torch

from cocoedit.actors.policies import FAMILIES
from cocoedit.actors.policies.architecture import TINY_MAX_SEQUENCE_LENGTH, Architecture, ModelSpec

__all__ = [
    "TINY_MAX_SEQUENCE_LENGTH",
    "ModelSpec",
    "assemble",
    "build_model",
    "model_spec",
    "parameter_counts",
    "real_spec",
    "safetensors_shapes",
    "tiny_spec",
]

Dims = Literal["tiny", "real"]


def architecture(family: str) -> Architecture:
    if family not in FAMILIES:
        raise ValueError(f"unknown policy family {family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family].architecture()  # type: ignore[return-value]


def tiny_spec(
    family: str,
    *,
    num_layers: int = 2,
    num_single_layers: int = 2,
    num_attention_heads: int = 4,
    attention_head_dim: int = 16,
    text_dim: int = 32,
    vae_channels: int = 16,
    vae_blocks: int = 2,
    latent_channels: Optional[int] = None,
) -> ModelSpec:
    """The tiny editor's spec (see tiny.build_tiny_model for the knobs)."""
    return architecture(family).tiny_spec(
        family,
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        num_attention_heads=num_attention_heads,
        attention_head_dim=attention_head_dim,
        text_dim=text_dim,
        vae_channels=vae_channels,
        vae_blocks=vae_blocks,
        latent_channels=latent_channels,
    )


def real_spec(family: str, depth: Optional[int] = None, real_vocab: bool = False) -> ModelSpec:
    """The published widths of `family` with `depth` transformer blocks (FLUX: depth dual-stream +
    depth single-stream; Qwen: depth) and 1-layer text encoders; depth=None: the full model, text
    encoders included. real_vocab: the published tokenizers' vocabulary sizes (for counting)."""
    arch = architecture(family)
    if depth is not None and depth < 1:
        raise ValueError(f"depth={depth} must be >= 1 (or None for the full model)")
    return arch.real_spec(family, depth, real_vocab)


def model_spec(family: str, dims: Dims = "tiny", depth: Optional[int] = None, **size: Any) -> ModelSpec:
    """The spec of a `dims` editor of `family`: tiny (size kwargs of tiny_spec; depth sets both block
    counts) or real (real_spec; no size kwargs)."""
    if dims == "tiny":
        if depth is not None:
            size = {"num_layers": depth, "num_single_layers": depth, **size}
        return tiny_spec(family, **size)
    if dims == "real":
        if size:
            raise ValueError(
                f"dims='real' takes the published widths; size settings {sorted(size)} are tiny-only"
            )
        return real_spec(family, depth if depth is not None else 1)
    raise ValueError(f"dims={dims!r} must be 'tiny' or 'real'")


def assemble(spec: ModelSpec) -> Any:
    """The diffusers pipeline of `spec` with freshly initialised weights (global torch RNG; float32).

    Under `with torch.device("meta")` nothing is allocated: `cocoedit plan` counts parameters that way."""
    policy = FAMILIES[spec.family].policy_class()
    return policy.architecture.assemble(spec, policy.pipeline_class())


def build_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    *,
    dims: Dims = "tiny",
    depth: Optional[int] = None,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    **size: Any,
) -> Path:
    """Build an editor of `family` with random weights (seeded) and save it as a diffusers directory
    that `<Pipeline>.from_pretrained(out_dir)` loads. Returns out_dir.

    dims="tiny": size kwargs as tiny.build_tiny_model; dims="real": the published widths with `depth`
    blocks (default 1). dtype: the saved weights' type (bfloat16 halves the disk; loading casts).
    A real-dims FLUX of depth 1 is ~0.55 B transformer parameters + 0.28 B in the text encoders and VAE:
    ~3.3 GB of float32 while building."""
    from cocoedit.actors.policies.common import DTYPES

    architecture(family)
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} must be one of {sorted(DTYPES)}")
    spec = model_spec(family, dims, depth, **size)
    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pipe = assemble(spec)
    if dtype != "float32":
        pipe.to(dtype=DTYPES[dtype])
    pipe.save_pretrained(out)
    return out


def safetensors_shapes(directory: str | Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor name: (shape, safetensors dtype)} of the *.safetensors files in `directory`, read from
    their headers (nothing is loaded)."""
    import json
    import struct

    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(n))
        for name, meta in header.items():
            if name != "__metadata__":
                tensors[name] = (tuple(meta["shape"]), meta["dtype"])
    return tensors


def parameter_counts(model_dir: str | Path) -> dict[str, int]:
    """component -> number of parameters (elements of its saved tensors) of a diffusers directory;
    components without safetensors weights (tokenizers, scheduler) are left out."""
    counts = {}
    for sub in sorted(p for p in Path(model_dir).iterdir() if p.is_dir()):
        tensors = safetensors_shapes(sub)
        if tensors:
            counts[sub.name] = sum(math.prod(shape) for shape, _ in tensors.values())
    return counts


def cli_build_model(args: argparse.Namespace) -> int:
    """`cocoedit build-model --family F [--dims tiny|real] [--depth N] --out DIR`: write an editor with
    random weights (a real-dims one to dry-run a cluster config on a workstation)."""
    import time

    start = time.perf_counter()
    path = build_model(args.family, args.out, args.seed, dims=args.dims, depth=args.depth, dtype=args.dtype)
    depth = args.depth if args.depth is not None else (1 if args.dims == "real" else "default")
    print(f"{args.family}, {args.dims} dims, depth {depth}: {path} ({time.perf_counter() - start:.0f} s)")
    for component, n in parameter_counts(path).items():
        print(f"  {component:<16} {n / 1e6:10.1f} M parameters")
    return 0

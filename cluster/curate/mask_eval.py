"""Measuring edit masks against known ground truth (the synthetic task has exact masks).

Real editing datasets are not pixel-clean: targets are JPEG files, their colours drift a little, and
some are shifted by a pixel. `degrade_pair` applies the same to a clean synthetic pair, so that the
masks of cluster/curate/masks.py can be scored by IoU against the exact mask, per edit type:

    table = iou_by_task(examples, MaskConfig(), degrade=True, seed=0)   # {task: mean IoU}

Used by tests/cluster/test_masks.py and bench/curate.py; also a way to check a MaskConfig before
curating a dataset with it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from cocoedit.cluster.curate.masks import MaskConfig, edit_mask, mask_iou
from cocoedit.ranges import Range


@dataclass(frozen=True)
class Degradation:
    """How a clean pair is degraded: JPEG re-encoding of both images, a per-channel gain of the target
    of +-colour_shift (each channel's sign drawn at random), and a shift of the target by shift_px
    pixels (along one random axis and direction) for a share of the pairs."""

    jpeg_quality: Annotated[int, Range(ge=1, le=100)] = 70
    colour_shift: Annotated[float, Range(ge=0, lt=1)] = 0.03
    shift_px: Annotated[int, Range(ge=0)] = 1
    shift_share: Annotated[float, Range(ge=0, le=1)] = 0.5


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """uint8 [H, W, 3] through a JPEG encode/decode at `quality` (PIL defaults: 4:2:0 chroma)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as img:
        return np.asarray(img.convert("RGB")).copy()


def degrade_pair(
    source: np.ndarray, target: np.ndarray, rng: np.random.Generator, cfg: Degradation, shift: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) uint8 [H, W, 3] degraded by cfg; `shift` moves the target by cfg.shift_px.

    The target is shifted with edge replication (the scene moved, the frame did not); the ground-truth
    mask stays in source coordinates, where curated masks are expressed."""
    signs = rng.choice([-1.0, 1.0], size=3)
    shifted = target.astype(np.float64) * (1.0 + signs * cfg.colour_shift)
    shifted = np.clip(shifted + 0.5, 0, 255).astype(np.uint8)
    if shift and cfg.shift_px:
        axis = int(rng.integers(2))
        step = int(rng.choice([-1, 1])) * cfg.shift_px
        pad = [(0, 0), (0, 0), (0, 0)]
        pad[axis] = (cfg.shift_px, cfg.shift_px)
        padded = np.pad(shifted, pad, mode="edge")
        start = cfg.shift_px - step
        shifted = np.take(padded, np.arange(start, start + target.shape[axis]), axis=axis)
    return jpeg(source, cfg.jpeg_quality), jpeg(shifted, cfg.jpeg_quality)


def iou_by_task(
    examples: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    cfg: MaskConfig,
    degradation: Degradation | None = None,
    seed: int = 0,
) -> dict[str, list[float]]:
    """IoU of edit_mask against the exact mask for each (task, source, target, mask bool [H, W]),
    grouped by task. With `degradation`, every pair is degraded first and a random
    round(shift_share * len(examples)) of them (drawn with `seed`) also shifted."""
    rng = np.random.default_rng(seed)
    shifted: set[int] = set()
    if degradation is not None:
        count = round(degradation.shift_share * len(examples))
        shifted = set(rng.permutation(len(examples))[:count].tolist())
    out: dict[str, list[float]] = {}
    for n, (task, source, target, truth) in enumerate(examples):
        if degradation is not None:
            source, target = degrade_pair(source, target, rng, degradation, shift=n in shifted)
        out.setdefault(task, []).append(mask_iou(edit_mask(source, target, cfg).mask, truth))
    return out

"""The run directory: resolved config, metrics (JSONL + TensorBoard scalars), image grids.

runs/<name>/
  config.yaml          resolved config of the run
  metrics.jsonl        one JSON object per epoch (every logged scalar)
  tb/                  TensorBoard event files (scalars and image grids)
  images/epoch_XXXXX.png   source | group of edits | mask overlay, with scores
  checkpoints/         written by learner.checkpoint
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw


class RunLog:
    def __init__(self, run_dir: str | Path, config_yaml: str, tensorboard: bool = True) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "images").mkdir(exist_ok=True)
        (self.dir / "config.yaml").write_text(config_yaml)
        self._metrics = open(self.dir / "metrics.jsonl", "a")
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.dir / "tb"))

    def scalars(self, epoch: int, values: dict[str, float]) -> None:
        """Append `values` for `epoch` to metrics.jsonl and TensorBoard (non-finite values are kept as null)."""
        clean = {k: (float(v) if math.isfinite(float(v)) else None) for k, v in values.items()}
        self._metrics.write(json.dumps({"epoch": epoch, **clean}) + "\n")
        self._metrics.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if v is not None:
                    self._tb.add_scalar(k, v, epoch)

    def image_grid(
        self,
        epoch: int,
        source: torch.Tensor,
        edits: torch.Tensor,
        edit_mask: torch.Tensor,
        scores: Sequence[float],
        title: str = "",
    ) -> Path:
        """One row: source | each edit of the group (score under it) | mask overlay on the source.

        source: [3, H, W] uint8; edits: [G, 3, H, W] uint8; edit_mask: [1, H, W] in [0, 1].
        """
        from cocoedit.rewards.images import encode_png

        grid = np.asarray(make_grid_image(source, edits, edit_mask, scores, title))
        path = self.dir / "images" / f"epoch_{epoch:05d}.png"
        path.write_bytes(encode_png(grid))
        if self._tb is not None:
            self._tb.add_image("edits", grid, epoch, dataformats="HWC")
        return path

    def close(self) -> None:
        self._metrics.close()
        if self._tb is not None:
            self._tb.close()


def mask_overlay(source: torch.Tensor, edit_mask: torch.Tensor) -> np.ndarray:
    """[3, H, W] uint8 + [1, H, W] mask -> [H, W, 3] uint8: the edit region tinted red, the rest dimmed."""
    img = source.permute(1, 2, 0).numpy().astype(np.float32)
    m = edit_mask[0].numpy()[..., None]
    red = np.array([255.0, 0.0, 0.0])
    out = m * (0.5 * img + 0.5 * red) + (1 - m) * 0.6 * img
    return out.clip(0, 255).astype(np.uint8)


def make_grid_image(
    source: torch.Tensor,
    edits: torch.Tensor,
    edit_mask: torch.Tensor,
    scores: Sequence[float],
    title: str = "",
    cell: Optional[int] = None,
) -> Image.Image:
    """Render source | edits | mask overlay as a PIL image, upscaled (nearest) to at least 96 px cells."""
    h, w = source.shape[-2:]
    scale = max(1, math.ceil((cell or 96) / max(h, w)))
    ch, cw = h * scale, w * scale
    text_h = 14
    overlay = torch.from_numpy(mask_overlay(source, edit_mask)).permute(2, 0, 1)
    cells = [source, *edits, overlay]
    labels = ["source", *[f"{s:.3f}" for s in scores], "edit mask"]
    canvas = Image.new("RGB", (cw * len(cells), ch + 2 * text_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, 0), title, fill="black")
    for i, (img, label) in enumerate(zip(cells, labels, strict=True)):
        pil = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((cw, ch), Image.NEAREST)
        canvas.paste(pil, (i * cw, text_h))
        draw.text((i * cw + 2, ch + text_h), label, fill="black")
    return canvas

"""The benchmask layout every benchmark reader writes: `<key>.png`, `<key>_mask.png` and
instructions.jsonl in one folder, loaded through actors.data (so benchmarks get the same validation,
cropping and mask-polarity check as training data), and the helpers readers share."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from cocoedit.actors.types import EditItem

_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key(key: str) -> str:
    """A file-name-safe item key (benchmark keys may hold '/' or spaces)."""
    out = _SAFE_KEY.sub("_", key.strip()).strip("._")
    if not out:
        raise ValueError(f"item key {key!r} has no file-name-safe characters")
    return out


def mask_for(folder: Path, key: str, original: str) -> Optional[Path]:
    for base in (folder / "masks", folder / "mask", folder):
        for name in (f"{key}_mask.png", f"{original}_mask.png"):
            if (base / name).is_file():
                return base / name
    return None


def write_benchmask(rows: list[dict[str, Any]], out: Path) -> Path:
    """rows: key, instruction, task, image (bytes or a Path), mask (Path). Writes a benchmask folder
    (`<key>.png`, `<key>_mask.png`, instructions.jsonl) atomically; returns it. Reuses a complete one."""
    import numpy as np
    from PIL import Image

    from cocoedit.rewards.images import encode_png

    if (out / "instructions.jsonl").is_file():
        return out
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in rows:
        image = r["image"]
        # benchmark images come in any format Pillow reads (JPEG, WebP, ...): decode, store as PNG
        with Image.open(io.BytesIO(image) if isinstance(image, bytes) else image) as img:
            rgb = np.asarray(img.convert("RGB"))
        (tmp / f"{r['key']}.png").write_bytes(encode_png(rgb))
        (tmp / f"{r['key']}_mask.png").write_bytes(Path(r["mask"]).read_bytes())
        lines.append(json.dumps({"key": r["key"], "instruction": r["instruction"], "task": r["task"]}) + "\n")
    (tmp / "instructions.jsonl").write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return out


def check_masks(rows: list[dict[str, Any]], folder: Path, bench: str) -> None:
    missing = [r["original"] for r in rows if r["mask"] is None]
    if missing:
        raise ValueError(
            f"{bench}: {len(missing)} of {len(rows)} items have no mask <key>_mask.png in {folder}, "
            f"{folder}/masks or {folder}/mask (first: {missing[:5]}); masked metrics need every mask"
        )
    keys = [r["key"] for r in rows]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"{bench}: item keys collide after making them file-name safe: {dupes[:5]}")


def load_rows(
    rows: list[dict[str, Any]], work_dir: Path, image_size: int, mask_polarity: Optional[str]
) -> list[EditItem]:
    """Rows of a reader (see write_benchmask) as EditItems, through a benchmask folder under work_dir."""
    from cocoedit.actors.data import load_edit_data

    folder = write_benchmask(rows, work_dir / "bench")
    return list(load_edit_data(folder, "benchmask", image_size, mask_polarity))

"""Our own manifest (manifest.jsonl: source, mask, instruction, task per line) as a benchmark."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from cocoedit.actors.types import EditItem


def items(
    data: Path, work_dir: Path, image_size: int, mask_polarity: Optional[str], language: str
) -> list[EditItem]:
    from cocoedit.actors.data import load_edit_data

    manifest = data / "manifest.jsonl" if data.is_dir() else data
    return list(load_edit_data(manifest, "manifest", image_size, mask_polarity))

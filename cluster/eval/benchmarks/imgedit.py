"""ImgEdit-Bench (basic): `basic_edit.json` with the images under `singleturn/`, masks
`<key>_mask.png`; scored by the `imgedit` judge protocol."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.cluster.eval.benchmarks.benchmask import check_masks, load_rows, mask_for, safe_key

if TYPE_CHECKING:
    from cocoedit.actors.types import EditItem


def items(
    data: Path, work_dir: Path, image_size: int, mask_polarity: Optional[str], language: str
) -> list[EditItem]:
    return load_rows(imgedit_rows(data), work_dir, image_size, mask_polarity)


def imgedit_rows(data: Path) -> list[dict[str, Any]]:
    """ImgEdit-Bench basic: `basic_edit.json` ({key: {"id": image path, "prompt", "edit_type"}}) with the
    images under `singleturn/` (or beside the JSON)."""
    path = data / "basic_edit.json" if data.is_dir() else data
    if not path.is_file():
        raise FileNotFoundError(f"imgedit: {path} not found (the ImgEdit basic benchmark's basic_edit.json)")
    folder = path.parent
    loaded = json.loads(path.read_text(encoding="utf-8"))
    entries = loaded.items() if isinstance(loaded, dict) else ((str(i), e) for i, e in enumerate(loaded))
    rows = []
    for original, rec in entries:
        for field in ("id", "prompt", "edit_type"):
            if field not in rec:
                raise ValueError(f"imgedit entry {original!r} lacks {field!r} (has {sorted(rec)})")
        candidates = [folder / "singleturn" / rec["id"], folder / rec["id"]]
        image = next((c for c in candidates if c.is_file()), None)
        if image is None:
            raise FileNotFoundError(
                f"imgedit entry {original!r}: image {rec['id']} not in {folder}/singleturn"
            )
        key = safe_key(str(original))
        rows.append(
            {
                "key": key,
                "original": str(original),
                "instruction": str(rec["prompt"]),
                "task": str(rec["edit_type"]),
                "image": image,
                "mask": mask_for(folder, key, str(original)),
            }
        )
    check_masks(rows, folder, "imgedit")
    return rows

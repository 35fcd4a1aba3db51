"""GEdit-Bench: `*.parquet` files (the HF layout, images as bytes) or a JSON / JSONL list, with masks
`<key>_mask.png` beside them; scored by VIEScore (the `gedit` judge protocol)."""

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
    return load_rows(gedit_rows(data, language), work_dir, image_size, mask_polarity)


def gedit_rows(data: Path, language: str) -> list[dict[str, Any]]:
    """GEdit-Bench items: `*.parquet` files (the HF layout, images as bytes) or a JSON / JSONL list with
    `key`, `task_type`, `instruction`, `instruction_language`, `input_image` (a path under `data`)."""
    folder = data if data.is_dir() else data.parent
    parquet = (
        sorted(folder.rglob("*.parquet")) if data.is_dir() else ([data] if data.suffix == ".parquet" else [])
    )
    records: list[dict[str, Any]] = []
    if parquet:
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(
                "reading GEdit-Bench parquet files needs pyarrow (pip install pyarrow), or convert them to "
                "a JSON list with image paths"
            ) from e
        for path in parquet:
            records.extend(pq.read_table(path).to_pylist())
    else:
        files = [data] if data.is_file() else sorted([*folder.glob("*.json"), *folder.glob("*.jsonl")])
        if not files:
            raise FileNotFoundError(f"gedit: no *.parquet, *.json or *.jsonl file in {folder}")
        for path in files:
            text = path.read_text(encoding="utf-8")
            if path.suffix == ".jsonl":
                records.extend(json.loads(line) for line in text.splitlines() if line.strip())
            else:
                loaded = json.loads(text)
                records.extend(loaded if isinstance(loaded, list) else list(loaded.values()))
    rows = []
    for n, rec in enumerate(records):
        for field in ("key", "task_type", "instruction", "input_image"):
            if field not in rec:
                raise ValueError(f"gedit record {n} lacks {field!r} (has {sorted(rec)})")
        lang = str(rec.get("instruction_language", "en"))
        if language != "all" and lang != language:
            continue
        image = rec["input_image"]
        if isinstance(image, dict):  # HF datasets Image feature: {"bytes": ..., "path": ...}
            image = image.get("bytes") or folder / str(image.get("path"))
        elif isinstance(image, str):
            image = folder / image
        original = str(rec["key"])
        key = safe_key(original if language != "all" else f"{lang}_{original}")
        rows.append(
            {
                "key": key,
                "original": original,
                "instruction": str(rec["instruction"]),
                "task": str(rec["task_type"]),
                "image": image,
                "mask": mask_for(folder, key, original),
            }
        )
    if not rows:
        raise ValueError(f"gedit: no items with instruction_language={language!r} in {data}")
    check_masks(rows, folder, "gedit")
    return rows

"""Inputs of `cocoedit data curate`: dataset layouts, shards, and the images of one row.

A dataset is JSONL or Parquet files whose columns follow one of LAYOUTS. It is cut into shards of
consecutive rows (JSONL byte offsets, Parquet row-group slices) from file metadata alone, and a shard
is read on its own, so no process ever holds the whole dataset. An image cell is a path (relative to
its file, or absolute), embedded bytes, a Hugging Face image struct {"bytes", "path"}, or a data: URI;
its size is checked from the header before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# Layout -> our field -> the input's column(s); an id of several columns joins them with "-".
LAYOUTS: dict[str, dict[str, tuple[str, ...]]] = {
    "ours": {
        "source": ("source",),
        "target": ("target",),
        "instruction": ("instruction",),
        "id": ("id",),
        "task": ("task",),
    },
    "magicbrush": {  # osunlp/MagicBrush parquet
        "source": ("source_img",),
        "target": ("target_img",),
        "instruction": ("instruction",),
        "id": ("img_id", "turn_index"),
    },
    "instructpix2pix": {  # timbrooks/instructpix2pix-clip-filtered parquet
        "source": ("original_image",),
        "target": ("edited_image",),
        "instruction": ("edit_prompt",),
    },
    "hqedit": {  # UCSC-VLAA/HQ-Edit parquet
        "source": ("input_image",),
        "target": ("output_image",),
        "instruction": ("edit",),
    },
    "gedit": {  # GEdit-Bench parquet (as `cocoedit eval` reads it): no targets, masks from grounding
        "source": ("input_image",),
        "instruction": ("instruction",),
        "id": ("key", "instruction_language"),
        "task": ("task_type",),
    },
}
INPUT_SUFFIXES = (".jsonl", ".parquet")


@dataclass(frozen=True)
class Shard:
    """A run of rows of one input file: JSONL from byte `offset`, Parquet rows `offset`.. of a row group."""

    index: int
    path: str
    kind: str  # "jsonl" | "parquet"
    offset: int
    count: int
    first_row: int  # row number (0-based, in its file) of the shard's first row
    row_group: int = 0


def input_files(inputs: Sequence[str | Path]) -> list[Path]:
    """The JSONL / Parquet files named by `inputs` (folders: every such file inside, sorted)."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in INPUT_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"--input {path}: no *.jsonl or *.parquet file in this folder")
            files += found
        elif path.is_file():
            if path.suffix not in INPUT_SUFFIXES:
                raise ValueError(f"--input {path}: expected a .jsonl or .parquet file (or a folder of them)")
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path} does not exist")
    return [f.resolve() for f in files]


def plan_shards(files: Sequence[Path], shard_size: int) -> list[Shard]:
    """Shards of at most shard_size rows over `files`, in order; reads JSONL line offsets (one pass,
    nothing kept but an offset per shard) and Parquet metadata only."""
    if shard_size < 1:
        raise ValueError(f"curate.shard_size={shard_size} must be >= 1")
    shards: list[Shard] = []
    for path in files:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            meta = pq.ParquetFile(path).metadata
            row = 0
            for rg in range(meta.num_row_groups):
                n = meta.row_group(rg).num_rows
                for start in range(0, n, shard_size):
                    count = min(shard_size, n - start)
                    shards.append(Shard(len(shards), str(path), "parquet", start, count, row + start, rg))
                row += n
            continue
        rows, offset, start_offset, first = 0, 0, 0, 0
        with open(path, "rb") as f:
            for line in f:
                if line.strip():
                    if rows % shard_size == 0:
                        if rows:
                            shards.append(
                                Shard(len(shards), str(path), "jsonl", start_offset, shard_size, first)
                            )
                        start_offset, first = offset, rows
                    rows += 1
                offset += len(line)
        if rows:
            shards.append(Shard(len(shards), str(path), "jsonl", start_offset, rows - first, first))
    return shards


def _columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                return list(obj) if isinstance(obj, dict) else []
    return []


def detect_layout(path: Path, layout: str) -> str:
    """`layout`, or with "auto" the first of LAYOUTS whose source and instruction columns `path` has."""
    names = set(_columns(path))
    if layout != "auto":
        need = LAYOUTS[layout]["source"] + LAYOUTS[layout]["instruction"]
        missing = [c for c in need if c not in names]
        if missing:
            raise ValueError(f"{path} lacks the {layout} layout's columns {missing} (it has {sorted(names)})")
        return layout
    for name, fields in LAYOUTS.items():
        if all(c in names for c in fields["source"] + fields["instruction"]):
            return name
    known = {k: v["source"] + v["instruction"] for k, v in LAYOUTS.items()}
    raise ValueError(
        f"{path}: columns {sorted(names)} match no known layout {known}; rename the columns or set curate.layout"
    )


def read_shard(shard: Shard, layout: str) -> list[dict[str, Any]]:
    """The raw rows of a shard, each {field: value} in our field names (LAYOUTS), plus `_error` for a
    line that is not a JSON object."""
    fields = LAYOUTS[layout]
    raw: list[dict[str, Any]] = []
    if shard.kind == "parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(shard.path)
        names = set(pf.schema_arrow.names)
        columns = sorted({c for cols in fields.values() for c in cols if c in names})
        table = pf.read_row_group(shard.row_group, columns=columns).slice(shard.offset, shard.count)
        raw = table.to_pylist()
    else:
        with open(shard.path, "rb") as f:
            f.seek(shard.offset)
            while len(raw) < shard.count:
                line = f.readline()
                if not line:
                    break
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    obj = {"_error": f"not valid JSON ({e.msg} at column {e.colno})"}
                raw.append(obj if isinstance(obj, dict) else {"_error": "not a JSON object"})
    rows = []
    for obj in raw:
        row: dict[str, Any] = {"_error": obj.get("_error")}
        for name, cols in fields.items():
            values = [obj.get(c) for c in cols]
            if name == "id":
                row[name] = "-".join(str(v) for v in values) if all(v is not None for v in values) else None
            else:
                row[name] = values[0]
        rows.append(row)
    return rows


class ItemError(ValueError):
    """An item that cannot be used (recorded with the reason; never a crash of the run)."""


_FORMAT_SUFFIX = {
    "PNG": ".png",
    "JPEG": ".jpg",
    "WEBP": ".webp",
    "BMP": ".bmp",
    "TIFF": ".tif",
    "GIF": ".gif",
}


def image_bytes(value: Any, base: Path, field: str) -> bytes:
    """The encoded image of one input cell: a path (relative to the input file), embedded bytes, a
    Hugging Face image struct {"bytes", "path"}, or a data: URI."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str) and value.startswith("data:"):
        try:
            return base64.b64decode(value.split(",", 1)[1], validate=True)
        except (IndexError, binascii.Error) as e:
            raise ItemError(f"{field}: undecodable data URI ({e})") from e
    if isinstance(value, str) and value:
        path = Path(value) if os.path.isabs(value) else base / value
        if not path.is_file():
            raise ItemError(f"{field}: file not found: {path}")
        return path.read_bytes()
    raise ItemError(
        f"{field}: expected an image path, bytes or {{'bytes', 'path'}}, got {type(value).__name__}"
    )


def decode_image(data: bytes, field: str, max_pixels: int) -> tuple[np.ndarray, str]:
    """(uint8 [H, W, 3], file suffix of the encoding); the size is checked from the header before
    decoding (a small file can decode to a huge image)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise ItemError(f"{field}: {w}x{h} image exceeds curate.max_image_pixels={max_pixels}")
            suffix = _FORMAT_SUFFIX.get(img.format or "", "")
            return np.asarray(img.convert("RGB")).copy(), suffix
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        if isinstance(e, ItemError):
            raise
        raise ItemError(f"{field}: cannot decode image ({e})") from e

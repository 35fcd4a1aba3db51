"""Benchmark layouts read as edit data: GEdit-Bench, ImgEdit-Bench (basic) and our manifest.

    items = load_benchmark("gedit", "/data/gedit", work_dir, image_size=512)

GEdit/ImgEdit items (images as parquet bytes or paths, masks `<key>_mask.png`) are written once as a
benchmask folder under `work_dir/bench` and loaded through actors.data, so benchmarks get the same
validation, cropping and mask-polarity check as training data.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from cocoedit.actors.types import EditItem

BENCHES = ("gedit", "imgedit", "manifest")
_SAFE_KEY = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key(key: str) -> str:
    """A file-name-safe item key (benchmark keys may hold '/' or spaces)."""
    out = _SAFE_KEY.sub("_", key.strip()).strip("._")
    if not out:
        raise ValueError(f"item key {key!r} has no file-name-safe characters")
    return out


def _mask_for(folder: Path, key: str, original: str) -> Optional[Path]:
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


def _check_masks(rows: list[dict[str, Any]], folder: Path, bench: str) -> None:
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
                "mask": _mask_for(folder, key, original),
            }
        )
    if not rows:
        raise ValueError(f"gedit: no items with instruction_language={language!r} in {data}")
    _check_masks(rows, folder, "gedit")
    return rows


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
                "mask": _mask_for(folder, key, str(original)),
            }
        )
    _check_masks(rows, folder, "imgedit")
    return rows


def load_benchmark(
    bench: str,
    data: str | Path,
    work_dir: Path,
    image_size: int,
    mask_polarity: Optional[str] = None,
    language: str = "en",
    max_items: Optional[int] = None,
) -> list[EditItem]:
    """The benchmark's items as EditItems (task = group / edit type), the first `max_items` when given."""
    from cocoedit.actors.data import load_edit_data

    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    if bench == "manifest":
        manifest = data / "manifest.jsonl" if data.is_dir() else data
        items = load_edit_data(manifest, "manifest", image_size, mask_polarity)
    elif bench in ("gedit", "imgedit"):
        rows = gedit_rows(data, language) if bench == "gedit" else imgedit_rows(data)
        folder = write_benchmask(rows, work_dir / "bench")
        items = load_edit_data(folder, "benchmask", image_size, mask_polarity)
    else:
        raise ValueError(f"--bench {bench!r} is unknown; expected one of {BENCHES}")
    items = list(items)
    for item in items:
        if safe_key(item.item_id) != item.item_id:
            raise ValueError(
                f"item id {item.item_id!r} is not file-name safe; rename it (e.g. {safe_key(item.item_id)!r})"
            )
    return items[:max_items] if max_items is not None else items

"""The training data as the driver holds it: an index of items, checked before training starts.

    index = load_index(cfg.data)   # item id -> ItemRef (text and file paths, no pixels), file order
    cocoedit data check MANIFEST [--format manifest|cocoedit40k|benchmask] [--mask-polarity P] [--root DIR]

The driver never decodes a data file's images: its index holds a few hundred bytes per item, and each
rollout worker reads the items it samples (actors.items). Before training, `data.validate` decides whose
files are checked (paths, sizes and image headers; masks decoded for their coverage): every item
(`full`), `data.validate_sample` items drawn at random (`sample`, the default; every item of a smaller
set), or none (`off`). A problem refuses the run with every problem listed as `line N: field: reason`;
a broken item that was not checked stops the run when a worker reads it, with the same words.
`cocoedit data check` checks every item. The formats are described in actors/manifests.py.

Without a data file (data.manifest unset) the index holds SynthRefs of the synthetic task's
data.synth_num items (index, size and seed; no pixels): each item is generated where it is used, by the
rollout worker that samples it (actors.items.load_item), identical to the item generated in a batch.
`cocoedit data synth` writes the task as files.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from cocoedit.actors.config import DataConfig
from cocoedit.actors.items import check_files, empty_mask_reason, load_item, read_mask
from cocoedit.actors.manifests import DEFAULT_POLARITY, FORMATS, Problem, dataset_root, read_refs
from cocoedit.actors.types import DataSource, EditItem, IndexItem, ItemRef

log = logging.getLogger(__name__)
MAX_LISTED = 50  # problems a refused run lists; `cocoedit data check` lists them all
CHECK_THREADS = 8  # image headers and mask decoding wait on storage and release the GIL


@dataclass(frozen=True)
class Scan:
    """A data file read and checked: its usable items, every problem, statistics of the checked items."""

    path: Path
    format: str
    mask_polarity: str
    refs: list[ItemRef]  # items with no problem found (unchecked items: none in the data file)
    problems: list[Problem]  # sorted by line
    checked: int  # items whose files were checked
    source_sizes: dict[int, tuple[int, int]]  # line -> (width, height) of the source, checked items
    edit_fraction: dict[int, float]  # line -> fraction of pixels to edit (after polarity), checked items


def data_source(cfg: DataConfig) -> DataSource:
    """The DataSource of cfg.manifest: its root, crop size, mask polarity and file limits."""
    if cfg.manifest is None:
        raise ValueError("data.manifest is not set: the synthetic task has no data file")
    if cfg.format not in FORMATS:
        raise ValueError(f"unknown data format {cfg.format!r}; expected one of {FORMATS}")
    polarity = cfg.mask_polarity or DEFAULT_POLARITY[cfg.format]
    if polarity not in ("edit_white", "keep_white"):
        raise ValueError(f"mask_polarity={polarity!r}; expected 'edit_white' or 'keep_white'")
    path = Path(cfg.manifest)
    root = dataset_root(path, cfg.format, cfg.root)
    return DataSource(
        str(path), str(root), cfg.image_size, polarity, cfg.max_file_bytes, cfg.max_image_pixels
    )


def check_item(ref: ItemRef) -> tuple[list[Problem], Optional[tuple[int, int]], float]:
    """Every problem of one item's files (headers read, the mask decoded), its source size and the
    fraction of its pixels to edit."""
    sizes, found = check_files(ref)
    if found:
        return [Problem(ref.line, field, reason) for field, reason in found], None, 0.0
    data = ref.data
    try:
        mask = read_mask(os.path.join(data.root, ref.mask), data.mask_polarity, data.max_image_pixels)
    except ValueError as e:
        return [Problem(ref.line, "mask", str(e))], None, 0.0
    fraction = float(mask.mean())
    if fraction == 0.0:
        return [Problem(ref.line, "mask", empty_mask_reason(data.mask_polarity))], None, 0.0
    return [], sizes["source"], fraction


def _to_check(n: int, validate: str, sample: int, seed: int) -> list[int]:
    if validate == "full" or (validate == "sample" and n <= sample):
        return list(range(n))
    if validate == "sample":
        return sorted(np.random.default_rng(seed).choice(n, size=sample, replace=False).tolist())
    if validate == "off":
        return []
    raise ValueError(f"data.validate={validate!r}; expected 'full', 'sample' or 'off'")


def scan(cfg: DataConfig, validate: Optional[str] = None) -> Scan:
    """Read cfg.manifest and check it: the data file line by line, then the files of the items that
    `validate` (default cfg.validate) selects, on CHECK_THREADS threads."""
    data = data_source(cfg)
    refs, problems = read_refs(data, cfg.format, cfg.max_manifest_bytes)
    chosen = _to_check(len(refs), validate or cfg.validate, cfg.validate_sample, cfg.seed)
    broken: set[int] = set()
    sizes: dict[int, tuple[int, int]] = {}
    coverage: dict[int, float] = {}
    with ThreadPoolExecutor(min(CHECK_THREADS, os.cpu_count() or 1)) as pool:
        checks = pool.map(check_item, [refs[i] for i in chosen])
        for i, (found, size, fraction) in zip(chosen, checks, strict=True):
            if found:
                problems.extend(found)
                broken.add(i)
            else:
                sizes[refs[i].line], coverage[refs[i].line] = size, fraction  # type: ignore[assignment]
    problems.sort(key=lambda p: p.line)
    usable = [ref for i, ref in enumerate(refs) if i not in broken]
    return Scan(
        Path(data.path), cfg.format, data.mask_polarity, usable, problems, len(chosen), sizes, coverage
    )


def _warn_if_inverted(name: str, polarity: str, edit_fractions: Sequence[float]) -> None:
    if not edit_fractions:
        return
    keep = 1.0 - float(np.mean(edit_fractions))
    if keep < 0.5:
        n_small = sum(1 for f in edit_fractions if f > 0.5)
        other = "keep_white" if polarity == "edit_white" else "edit_white"
        warnings.warn(
            f"{name}: the keep region averages {keep:.0%} of the image ({n_small} of {len(edit_fractions)} "
            f"items keep under half) with mask_polarity={polarity}; the masks are probably inverted: "
            f"try mask_polarity={other}",
            stacklevel=3,
        )


def load_index(cfg: DataConfig) -> dict[str, IndexItem]:
    """The training items by id, in file order: ItemRefs of cfg.manifest, or the synthetic task's
    SynthRefs when it is unset. Refuses (ValueError listing the problems with their line numbers) a data
    file with a problem, so training never starts on a broken file."""
    if cfg.manifest is None:
        from cocoedit.actors.synth import synthetic_refs

        return {ref.item_id: ref for ref in synthetic_refs(cfg.synth_num, cfg.image_size, cfg.synth_seed)}
    result = scan(cfg)
    if result.problems:
        listing = "\n".join(f"  {p}" for p in result.problems[:MAX_LISTED])
        if len(result.problems) > MAX_LISTED:
            listing += f"\n  ... and {len(result.problems) - MAX_LISTED} more"
        raise ValueError(
            f"{result.path} ({cfg.format}) has {len(result.problems)} problem(s); fix them and retry "
            f"(`cocoedit data check {result.path} --format {cfg.format}` lists them):\n{listing}"
        )
    if not result.refs:
        raise ValueError(f"{result.path} ({cfg.format}) lists no items")
    _warn_if_inverted(str(result.path), result.mask_polarity, list(result.edit_fraction.values()))
    log.info(
        "data: %d items in %s; the files of %d checked (data.validate=%s)",
        len(result.refs),
        result.path,
        result.checked,
        cfg.validate,
    )
    return {ref.item_id: ref for ref in result.refs}


def split_held_out(cfg: DataConfig, n: int) -> tuple[dict[str, IndexItem], list[IndexItem]]:
    """(training items by id as `load_index` gives them, `n` held-out items never trained on): the fixed
    evaluation set's source.

    The synthetic task holds out the `n` items after its `synth_num` training items (item i is the same
    whatever the count); a data file gives up the `n` items whose ids hash lowest (sha256), so the split
    does not depend on the order of the file."""
    if n < 0:
        raise ValueError(f"held-out item count must be >= 0, got {n}")
    if cfg.manifest is None:
        from cocoedit.actors.synth import synthetic_refs

        refs = synthetic_refs(cfg.synth_num + n, cfg.image_size, cfg.synth_seed)
        return {ref.item_id: ref for ref in refs[: cfg.synth_num]}, list(refs[cfg.synth_num :])
    index = load_index(cfg)
    if n >= len(index):
        raise ValueError(
            f"{cfg.manifest} has {len(index)} items; holding out {n} for evaluation (run.eval_items) leaves "
            f"none to train on: lower run.eval_items or add data"
        )
    held = set(sorted(index, key=lambda i: hashlib.sha256(i.encode()).digest())[:n])
    return {i: item for i, item in index.items() if i not in held}, [
        item for i, item in index.items() if i in held
    ]


def load_edit_data(
    path: str | Path, format: str, image_size: int, mask_polarity: Optional[str] = None
) -> list[EditItem]:
    """Every item of a data file with its pixels, every file checked first (evaluation sets)."""
    cfg = DataConfig(
        manifest=str(path),
        format=format,  # type: ignore[arg-type]
        image_size=image_size,
        mask_polarity=mask_polarity,  # type: ignore[arg-type]
        validate="full",
    )
    return [load_item(item) for item in load_index(cfg).values()]


def _histogram(values: Sequence[float], bins: int = 10, width: int = 40) -> list[str]:
    counts, edges = np.histogram(np.asarray(values), bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    return [
        f"  {edges[b]:.1f}-{edges[b + 1]:.1f} | {'#' * round(width * int(c) / top):<{width}} {int(c)}"
        for b, c in enumerate(counts)
    ]


def cli_check(args: argparse.Namespace) -> int:
    """`cocoedit data check MANIFEST [--format F] [--mask-polarity P] [--root DIR]`: every item's files
    checked; a summary and exit 0, or every problem as `line N: field: reason` and exit 1."""
    cfg = DataConfig(
        manifest=args.manifest, format=args.format, mask_polarity=args.mask_polarity, root=args.root
    )
    result = scan(cfg, validate="full")
    if result.problems:
        for problem in result.problems:
            print(problem)
        print(f"{result.path}: {len(result.problems)} problem(s); fix them before training")
        return 1
    if not result.refs:
        print(f"{result.path}: no items")
        return 1
    refs = result.refs
    tasks = Counter(r.task or "(none)" for r in refs)
    sizes = Counter(result.source_sizes[r.line] for r in refs)
    fractions = [result.edit_fraction[r.line] for r in refs]
    keep = 1.0 - float(np.mean(fractions))
    print(f"{result.path}: format {result.format}, mask polarity {result.mask_polarity}")
    print(f"items: {len(refs)} ({sum(r.target is not None for r in refs)} with a target), every file checked")
    print("tasks: " + ", ".join(f"{t} {c}" for t, c in sorted(tasks.items())))
    print("image sizes: " + ", ".join(f"{w}x{h} ({c})" for (w, h), c in sizes.most_common(8)))
    print(f"mask coverage (fraction of pixels to edit; mean keep region {keep:.0%}):")
    print("\n".join(_histogram(fractions)))
    if keep < 0.5:
        print("warning: the keep region is under half the image on average; the masks may be inverted")
    return 0

"""Edit data: manifests, dataset readers, crop/resize, and the epoch sampler (ALGORITHM.md section 1).

Three on-disk formats, all read into `actors.types.EditItem` (uint8 [3, S, S] images, float32
[1, S, S] edit_mask with 1 = region to edit, center-cropped to a square and resized to S):

- `manifest` (ours): JSONL, one item per line, paths relative to the manifest file:
      {"id": "a1", "source": "img/a1.png", "instruction": "make the car red", "mask": "mask/a1.png",
       "target": "tgt/a1.png", "task": "recolour", "group": "cars"}
  `target`, `task` and `group` are optional; any other key is a problem. Masks: edit_white by default.
- `cocoedit40k`: CoCoEdit-40K's `metadata.jsonl` (`prompt`, `image`, `mask`, paths relative to the
  file; extra keys ignored). Its masks are white = KEEP: use mask_polarity="keep_white".
- `benchmask`: GEdit-Bench / ImgEdit-Bench with masks, a folder holding `<key>.png` (or .jpg, .jpeg,
  .webp) with `<key>_mask.png` beside it and `instructions.jsonl`, one line per item:
      {"key": "0001", "instruction": "remove the cup", "task": "remove"}
  (`task_type` / `edit_type` are accepted for `task`; extra keys ignored). Pass the folder or the
  instructions file.

Masks are read as grey levels and thresholded at 128 (white = 255). A mask whose KEEP region averages
under half the image across the dataset is probably inverted: loading warns.

    cocoedit data check MANIFEST [--format manifest|cocoedit40k|benchmask] [--mask-polarity ...]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from cocoedit.actors.config import DataConfig
from cocoedit.actors.types import EditItem, GroupedItem

Format = Literal["manifest", "cocoedit40k", "benchmask"]
MaskPolarity = Literal["edit_white", "keep_white"]
FORMATS: tuple[str, ...] = ("manifest", "cocoedit40k", "benchmask")
DEFAULT_POLARITY: dict[str, MaskPolarity] = {
    "manifest": "edit_white",
    "cocoedit40k": "keep_white",
    "benchmask": "edit_white",
}
MANIFEST_REQUIRED = ("id", "source", "instruction", "mask")
MANIFEST_OPTIONAL = ("target", "task", "group")
BENCH_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
BENCH_INSTRUCTIONS = "instructions.jsonl"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a data file: 1-based `line` of the JSONL file (0 = the file itself)."""

    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(frozen=True)
class Record:
    """One item as listed in a data file, before its images are read."""

    line: int
    item_id: str
    source: Path
    instruction: str
    mask: Path
    target: Optional[Path] = None
    task: str = ""
    group: str = ""


@dataclass(frozen=True)
class Scan:
    """A data file read and checked: records, every problem, and per-record statistics."""

    path: Path
    format: str
    mask_polarity: MaskPolarity
    records: list[Record]
    problems: list[Problem]
    source_sizes: dict[int, tuple[int, int]]  # line -> (width, height) of the source image
    edit_fraction: dict[int, float]  # line -> fraction of pixels to edit (after polarity)


def _read_jsonl(path: Path) -> tuple[list[tuple[int, dict]], list[Problem]]:
    """Parsed objects with their line numbers; blank lines are skipped, every bad line is a problem."""
    rows: list[tuple[int, dict]] = []
    problems: list[Problem] = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return [], [Problem(0, "file", f"{path} is not UTF-8 text ({e.reason} at byte {e.start})")]
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            problems.append(Problem(line, "json", f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(line, "json", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        rows.append((line, obj))
    return rows, problems


def _text_field(obj: dict, key: str, line: int, problems: list[Problem], required: bool = True) -> str:
    value = obj.get(key)
    if value is None:
        if required:
            problems.append(Problem(line, key, "missing required field"))
        return ""
    if not isinstance(value, str):
        problems.append(Problem(line, key, f"must be a string, got {type(value).__name__}"))
        return ""
    if required and not value.strip():
        problems.append(Problem(line, key, "is empty"))
        return ""
    return value


def _records_manifest(path: Path) -> tuple[list[Record], list[Problem]]:
    rows, problems = _read_jsonl(path)
    base = path.parent
    records = []
    for line, obj in rows:
        n = len(problems)
        unknown = sorted(set(obj) - set(MANIFEST_REQUIRED) - set(MANIFEST_OPTIONAL))
        for key in unknown:
            allowed = ", ".join(MANIFEST_REQUIRED + MANIFEST_OPTIONAL)
            problems.append(Problem(line, key, f"unknown field (allowed: {allowed})"))
        values = {k: _text_field(obj, k, line, problems) for k in MANIFEST_REQUIRED}
        target = _text_field(obj, "target", line, problems, required=False)
        task = _text_field(obj, "task", line, problems, required=False)
        group = _text_field(obj, "group", line, problems, required=False)
        if len(problems) == n:
            records.append(
                Record(
                    line,
                    values["id"],
                    base / values["source"],
                    values["instruction"],
                    base / values["mask"],
                    base / target if target else None,
                    task,
                    group,
                )
            )
    return records, problems


def _records_cocoedit40k(path: Path) -> tuple[list[Record], list[Problem]]:
    rows, problems = _read_jsonl(path)
    base = path.parent
    records = []
    for line, obj in rows:
        n = len(problems)
        prompt = _text_field(obj, "prompt", line, problems)
        image = _text_field(obj, "image", line, problems)
        mask = _text_field(obj, "mask", line, problems)
        # the same source image carries several prompts: the line number keeps ids unique
        item_id = _text_field(obj, "id", line, problems, required=False) or f"{line:06d}-{Path(image).stem}"
        if len(problems) == n:
            records.append(Record(line, item_id, base / image, prompt, base / mask))
    return records, problems


def _records_benchmask(path: Path) -> tuple[list[Record], list[Problem]]:
    folder = path if path.is_dir() else path.parent
    instructions = folder / BENCH_INSTRUCTIONS if path.is_dir() else path
    if not instructions.is_file():
        return [], [
            Problem(0, "file", f"{instructions} not found; a benchmask folder needs {BENCH_INSTRUCTIONS}")
        ]
    rows, problems = _read_jsonl(instructions)
    records = []
    for line, obj in rows:
        n = len(problems)
        key = _text_field(obj, "key", line, problems)
        instruction = _text_field(obj, "instruction", line, problems)
        task = ""
        for name in ("task", "task_type", "edit_type"):
            task = task or _text_field(obj, name, line, problems, required=False)
        if len(problems) > n:
            continue
        sources = [folder / f"{key}{s}" for s in BENCH_IMAGE_SUFFIXES if (folder / f"{key}{s}").is_file()]
        if not sources:
            names = "/".join(BENCH_IMAGE_SUFFIXES)
            problems.append(Problem(line, "source", f"no image {key}{{{names}}} in {folder}"))
            continue
        records.append(Record(line, key, sources[0], instruction, folder / f"{key}_mask.png", task=task))
    return records, problems


READERS = {
    "manifest": _records_manifest,
    "cocoedit40k": _records_cocoedit40k,
    "benchmask": _records_benchmask,
}


def _open_size(path: Path, line: int, field: str, problems: list[Problem]) -> Optional[tuple[int, int]]:
    """(width, height) of an image file, or None after recording why it cannot be used."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        problems.append(Problem(line, field, f"file not found: {path}"))
        return None
    try:
        with Image.open(path) as img:
            img.verify()
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        problems.append(Problem(line, field, f"cannot read image {path}: {e}"))
        return None


def _read_mask(path: Path, polarity: MaskPolarity) -> np.ndarray:
    """edit mask float32 [H, W] in {0, 1} (1 = edit) from a grey/RGB mask file of the given polarity."""
    from PIL import Image

    with Image.open(path) as img:
        white = np.asarray(img.convert("L")) >= 128
    return (white if polarity == "edit_white" else ~white).astype(np.float32)


def _read_rgb(path: Path) -> torch.Tensor:
    """uint8 [3, H, W] from any image file PIL reads (alpha dropped, palettes expanded)."""
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def scan(path: str | Path, format: Format = "manifest", mask_polarity: Optional[MaskPolarity] = None) -> Scan:
    """Read a data file and check every record: files exist and decode, mask and target sizes match the
    source, ids are unique. Masks are decoded (for coverage); source and target only have headers read."""
    path = Path(path)
    if format not in READERS:
        raise ValueError(f"unknown data format {format!r}; expected one of {FORMATS}")
    polarity: MaskPolarity = mask_polarity or DEFAULT_POLARITY[format]
    if polarity not in ("edit_white", "keep_white"):
        raise ValueError(f"mask_polarity={polarity!r}; expected 'edit_white' or 'keep_white'")
    if not path.exists():
        return Scan(path, format, polarity, [], [Problem(0, "file", f"{path} not found")], {}, {})
    if path.is_dir() and format != "benchmask":
        problem = Problem(0, "file", f"{path} is a folder; pass the {format} JSONL file")
        return Scan(path, format, polarity, [], [problem], {}, {})
    records, problems = READERS[format](path)
    first_line: dict[str, int] = {}
    good: list[Record] = []
    sizes: dict[int, tuple[int, int]] = {}
    coverage: dict[int, float] = {}
    for rec in records:
        n = len(problems)
        if rec.item_id in first_line:
            problems.append(
                Problem(
                    rec.line, "id", f"duplicate id {rec.item_id!r} (first on line {first_line[rec.item_id]})"
                )
            )
        else:
            first_line[rec.item_id] = rec.line
        size = _open_size(rec.source, rec.line, "source", problems)
        mask_size = _open_size(rec.mask, rec.line, "mask", problems)
        if size and mask_size and mask_size != size:
            problems.append(
                Problem(
                    rec.line,
                    "mask",
                    f"mask is {mask_size[0]}x{mask_size[1]} but source is {size[0]}x{size[1]}",
                )
            )
        if rec.target is not None:
            target_size = _open_size(rec.target, rec.line, "target", problems)
            if size and target_size and target_size != size:
                problems.append(
                    Problem(
                        rec.line,
                        "target",
                        f"target is {target_size[0]}x{target_size[1]} but source is {size[0]}x{size[1]}",
                    )
                )
        if len(problems) == n:
            try:
                fraction = float(_read_mask(rec.mask, polarity).mean())
            except OSError as e:
                problems.append(Problem(rec.line, "mask", f"cannot decode {rec.mask}: {e}"))
                continue
            if fraction == 0.0:
                reason = f"marks no pixel to edit with mask_polarity={polarity}; check the polarity or drop the item"
                problems.append(Problem(rec.line, "mask", reason))
                continue
            coverage[rec.line] = fraction
            sizes[rec.line] = size  # type: ignore[assignment]
            good.append(rec)
    problems.sort(key=lambda p: p.line)
    return Scan(path, format, polarity, good, problems, sizes, coverage)


def validate_manifest(
    path: str | Path, mask_polarity: Optional[MaskPolarity] = None, format: Format = "manifest"
) -> list[Problem]:
    """Every problem of a data file (empty list = loadable), sorted by line number."""
    return scan(path, format, mask_polarity).problems


def center_crop_resize(
    image: torch.Tensor, mask: Optional[torch.Tensor], size: int
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Center-crop to a square and resize image and mask TOGETHER (same crop box, pixel-center aligned).

    image: uint8 [3, H, W] -> uint8 [3, size, size] (bicubic, antialiased when shrinking);
    mask: float [1, H, W] in {0, 1} -> float32 [1, size, size] in {0, 1} (nearest-exact), or None."""
    if image.dtype != torch.uint8 or image.ndim != 3:
        raise ValueError(f"image must be uint8 [3, H, W], got {image.dtype} {tuple(image.shape)}")
    _, h, w = image.shape
    if mask is not None and tuple(mask.shape[-2:]) != (h, w):
        raise ValueError(f"mask {tuple(mask.shape)} and image {tuple(image.shape)} differ in size")
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    image = image[:, top : top + side, left : left + side]
    if side != size:
        resized = F.interpolate(
            image[None].float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True
        )
        # round half up via +0.5 and truncation: torch.round is ~20 ms per call on 2 busy threads here
        image = resized[0].clamp(0, 255).add(0.5).to(torch.uint8)
    if mask is None:
        return image.contiguous(), None
    mask = mask[..., top : top + side, left : left + side].float()
    if side != size:
        mask = F.interpolate(mask[None], size=(size, size), mode="nearest-exact")[0]
    return image.contiguous(), (mask >= 0.5).float().contiguous()


def _warn_if_inverted(name: str, polarity: MaskPolarity, edit_fractions: Sequence[float]) -> None:
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


def _load_record(rec: Record, path: Path, polarity: MaskPolarity, image_size: int) -> EditItem:
    try:
        mask = torch.from_numpy(_read_mask(rec.mask, polarity))[None]
        source, target = _read_rgb(rec.source), (_read_rgb(rec.target) if rec.target else None)
    except OSError as e:  # headers were fine but the pixel data is truncated or corrupt
        raise ValueError(
            f"{path} line {rec.line}: cannot decode an image of item {rec.item_id!r}: {e}"
        ) from e
    image, mask = center_crop_resize(source, mask, image_size)
    target = center_crop_resize(target, None, image_size)[0] if target is not None else None
    return EditItem(rec.item_id, rec.instruction, image, mask, target, rec.task)  # type: ignore[arg-type]


class LazyEditItems(Sequence[EditItem]):
    """The items of a checked data file, read from disk (and cropped/resized) each time one is indexed.

    For datasets too large to hold decoded: CoCoEdit-40K at 512 px is ~73 GB as EditItems (uint8 image
    + float32 mask), but an epoch only touches n_items of them. `by_id` serves `grouped_items`."""

    def __init__(self, result: Scan, image_size: int) -> None:
        self._result = result
        self._image_size = image_size
        self._index = {rec.item_id: i for i, rec in enumerate(result.records)}

    @property
    def item_ids(self) -> list[str]:
        return [rec.item_id for rec in self._result.records]

    def __len__(self) -> int:
        return len(self._result.records)

    def __getitem__(self, index: int) -> EditItem:  # type: ignore[override]
        if not isinstance(index, int):
            raise TypeError(f"LazyEditItems takes an int index, got {type(index).__name__}")
        rec = self._result.records[index]
        return _load_record(rec, self._result.path, self._result.mask_polarity, self._image_size)

    def by_id(self, item_id: str) -> EditItem:
        if item_id not in self._index:
            raise KeyError(f"item {item_id!r} is not in {self._result.path}")
        return self[self._index[item_id]]


def load_edit_data(
    path: str | Path,
    format: Format,
    image_size: int,
    mask_polarity: Optional[MaskPolarity] = None,
    lazy: bool = False,
) -> list[EditItem] | LazyEditItems:
    """Read a data file of any format into EditItems; refuses (ValueError listing every problem with
    its line number) when anything is wrong, so training never starts on a broken file. `lazy=True`
    checks everything now but decodes images only when an item is indexed (LazyEditItems)."""
    result = scan(path, format, mask_polarity)
    if result.problems:
        listing = "\n".join(f"  {p}" for p in result.problems)
        raise ValueError(
            f"{result.path} ({format}) has {len(result.problems)} problem(s); fix them and retry "
            f"(`cocoedit data check {result.path} --format {format}` lists them):\n{listing}"
        )
    if not result.records:
        raise ValueError(f"{result.path} ({format}) lists no items")
    _warn_if_inverted(str(result.path), result.mask_polarity, list(result.edit_fraction.values()))
    if lazy:
        return LazyEditItems(result, image_size)
    return [_load_record(rec, result.path, result.mask_polarity, image_size) for rec in result.records]


def load_manifest(
    path: str | Path, image_size: int, mask_polarity: MaskPolarity = "edit_white"
) -> list[EditItem]:
    """Our JSONL manifest -> EditItems (see the module docstring for the format)."""
    return load_edit_data(path, "manifest", image_size, mask_polarity)


def load_cocoedit40k(
    path: str | Path, image_size: int, mask_polarity: MaskPolarity = "keep_white"
) -> list[EditItem]:
    """CoCoEdit-40K `metadata.jsonl` (white = keep) -> EditItems with edit_mask = 1 on the edit region."""
    return load_edit_data(path, "cocoedit40k", image_size, mask_polarity)


def load_benchmask(
    path: str | Path, image_size: int, mask_polarity: MaskPolarity = "edit_white"
) -> list[EditItem]:
    """A GEdit/ImgEdit-with-mask folder (or its instructions.jsonl) -> EditItems."""
    return load_edit_data(path, "benchmask", image_size, mask_polarity)


def load_items(cfg: DataConfig) -> list[EditItem]:
    """The training loop's one entry point: the synthetic task when cfg.manifest is None, else the file."""
    if cfg.manifest is None:
        from cocoedit.actors.synth import synthetic_items

        return synthetic_items(cfg.synth_num, cfg.image_size, cfg.synth_seed)
    return load_edit_data(cfg.manifest, cfg.format, cfg.image_size, cfg.mask_polarity)


def split_held_out(cfg: DataConfig, n: int) -> tuple[list[EditItem], list[EditItem]]:
    """(training items, `n` held-out items never trained on): the fixed evaluation set's source.

    The synthetic task generates `n` more items after its `synth_num` training items (item i is the same
    whatever the count); a data file gives up the `n` items whose ids hash lowest (sha256), so the split
    does not depend on the order of the file."""
    if n < 0:
        raise ValueError(f"held-out item count must be >= 0, got {n}")
    if cfg.manifest is None:
        from cocoedit.actors.synth import synthetic_items

        items = synthetic_items(cfg.synth_num + n, cfg.image_size, cfg.synth_seed)
        return items[: cfg.synth_num], items[cfg.synth_num :]
    items = list(load_items(cfg))
    if n >= len(items):
        raise ValueError(
            f"{cfg.manifest} has {len(items)} items; holding out {n} for evaluation (run.eval_items) leaves "
            f"none to train on: lower run.eval_items or add data"
        )
    by_hash = sorted(range(len(items)), key=lambda i: hashlib.sha256(items[i].item_id.encode()).digest())
    held = set(by_hash[:n])
    return [it for i, it in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


@dataclass(frozen=True)
class Draw:
    """One edit of an epoch, before the item is attached (see `grouped_items`)."""

    item_id: str
    group_id: str  # f"{epoch}:{item_id}"
    edit_id: str  # f"{epoch}:{item_id}:{k}", k < group_size
    seed: int  # initial-noise seed, distinct for every edit of a run


def _mix(*values: int) -> int:
    return int(np.random.SeedSequence([v & 0xFFFFFFFF for v in values]).generate_state(1)[0])


class EpochSampler:
    """Draws n_items distinct items per epoch, each repeated group_size times (one group per item).

    Items are walked in shuffled passes: every active item comes once per pass before any repeats; an
    epoch that straddles two passes defers to the end of the new pass the items it already holds, so
    items inside an epoch stay distinct. Everything is deterministic from `seed`; `state_dict` /
    `load_state_dict` resume exactly. Banned items are never drawn again."""

    def __init__(self, item_ids: Sequence[str], n_items: int, group_size: int, seed: int = 0) -> None:
        ids = list(item_ids)
        duplicates = sorted(i for i, c in Counter(ids).items() if c > 1)
        if duplicates:
            raise ValueError(f"item ids must be unique; repeated: {duplicates[:5]}")
        if group_size < 1:
            raise ValueError(f"data.group_size={group_size} must be >= 1")
        if not 1 <= n_items <= len(ids):
            raise ValueError(f"data.n_items={n_items} must be between 1 and the {len(ids)} items in the data")
        self.item_ids = ids
        self.n_items = n_items
        self.group_size = group_size
        self.seed = seed
        self.epoch = 0
        self.edits_drawn = 0
        self.passes = 0
        self.banned: set[str] = set()
        self._order: list[str] = []  # rest of the current pass, next item first
        self._seed_base = _mix(seed, 1) % 2**31

    def _new_pass(self) -> list[str]:
        active = [i for i in self.item_ids if i not in self.banned]
        gen = torch.Generator().manual_seed(_mix(self.seed, 2, self.passes))
        self.passes += 1
        return [active[j] for j in torch.randperm(len(active), generator=gen).tolist()]

    def next_epoch(self) -> list[Draw]:
        """The next epoch: n_items groups of group_size edits, groups contiguous."""
        chosen: list[str] = []
        while len(chosen) < self.n_items:
            if not self._order:
                fresh = self._new_pass()
                # items already in this epoch wait until the end of the new pass
                self._order = [i for i in fresh if i not in chosen] + [i for i in fresh if i in chosen]
            chosen.append(self._order.pop(0))
        draws = []
        for item_id in chosen:
            group_id = f"{self.epoch}:{item_id}"
            for k in range(self.group_size):
                seed = (self._seed_base + self.edits_drawn) % 2**31
                draws.append(Draw(item_id, group_id, f"{group_id}:{k}", seed))
                self.edits_drawn += 1
        self.epoch += 1
        return draws

    def ban(self, item_ids: Sequence[str]) -> None:
        """Never draw these items again (e.g. groups that are already solved)."""
        known = set(self.item_ids)
        unknown = sorted(set(item_ids) - known)
        if unknown:
            raise ValueError(f"cannot ban unknown item ids {unknown[:5]}")
        banned = self.banned | set(item_ids)
        remaining = len(known) - len(banned)
        if remaining < self.n_items:
            raise ValueError(
                f"banning {len(set(item_ids) - self.banned)} more item(s) leaves {remaining} of {len(known)} "
                f"items but data.n_items={self.n_items} are needed per epoch; lower data.n_items, add data, "
                f"or relax the ban thresholds (learner.ban_*)"
            )
        self.banned = banned
        self._order = [i for i in self._order if i not in banned]

    def state_dict(self) -> dict:
        return {
            "item_ids": list(self.item_ids),
            "n_items": self.n_items,
            "group_size": self.group_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "edits_drawn": self.edits_drawn,
            "passes": self.passes,
            "banned": sorted(self.banned),
            "order": list(self._order),
        }

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("item_ids", "n_items", "group_size", "seed"):
            if state[key] != getattr(self, key):
                what = "the item ids" if key == "item_ids" else f"{key}={state[key]!r}"
                raise ValueError(
                    f"sampler state was saved with {what}, but this sampler has a different {key}; "
                    f"resume with the same data and data.* config, or start a new run"
                )
        self.epoch = int(state["epoch"])
        self.edits_drawn = int(state["edits_drawn"])
        self.passes = int(state["passes"])
        self.banned = set(state["banned"])
        self._order = list(state["order"])


def grouped_items(
    draws: Sequence[Draw], items: Mapping[str, EditItem] | Sequence[EditItem]
) -> list[GroupedItem]:
    """Attach the items to an epoch's draws (items: a list, LazyEditItems, or an id -> item mapping)."""
    if isinstance(items, LazyEditItems):
        known = set(items.item_ids)
        # read each drawn item once per epoch, not once per edit
        by_id: Mapping[str, EditItem] = {
            i: items.by_id(i) for i in dict.fromkeys(d.item_id for d in draws) if i in known
        }
    else:
        by_id = items if isinstance(items, Mapping) else {it.item_id: it for it in items}
    missing = sorted({d.item_id for d in draws} - set(by_id))
    if missing:
        raise KeyError(f"draws name items that are not loaded: {missing[:5]}")
    return [GroupedItem(by_id[d.item_id], d.group_id, d.edit_id, d.seed) for d in draws]


def _histogram(values: Sequence[float], bins: int = 10, width: int = 40) -> list[str]:
    counts, edges = np.histogram(np.asarray(values), bins=bins, range=(0.0, 1.0))
    top = max(int(counts.max()), 1)
    return [
        f"  {edges[b]:.1f}-{edges[b + 1]:.1f} | {'#' * round(width * int(c) / top):<{width}} {int(c)}"
        for b, c in enumerate(counts)
    ]


def cli_check(args: argparse.Namespace) -> int:
    """`cocoedit data check MANIFEST [--format F] [--mask-polarity P]`: summary and exit 0, or every
    problem as `line N: field: reason` and exit 1."""
    result = scan(args.manifest, args.format, args.mask_polarity)
    if result.problems:
        for problem in result.problems:
            print(problem)
        print(f"{result.path}: {len(result.problems)} problem(s); fix them before training")
        return 1
    if not result.records:
        print(f"{result.path}: no items")
        return 1
    records = result.records
    tasks = Counter(r.task or "(none)" for r in records)
    sizes = Counter(result.source_sizes[r.line] for r in records)
    fractions = [result.edit_fraction[r.line] for r in records]
    keep = 1.0 - float(np.mean(fractions))
    print(f"{result.path}: format {result.format}, mask polarity {result.mask_polarity}")
    print(f"items: {len(records)} ({sum(r.target is not None for r in records)} with a target)")
    print("tasks: " + ", ".join(f"{t} {c}" for t, c in sorted(tasks.items())))
    print("image sizes: " + ", ".join(f"{w}x{h} ({c})" for (w, h), c in sizes.most_common(8)))
    print(f"mask coverage (fraction of pixels to edit; mean keep region {keep:.0%}):")
    print("\n".join(_histogram(fractions)))
    if keep < 0.5:
        print("warning: the keep region is under half the image on average; the masks may be inverted")
    return 0

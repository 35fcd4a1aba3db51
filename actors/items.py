"""The pixels of one item: its files checked, image headers read before decoding, images center-cropped.

    item = read_item(ref)      # ItemRef -> EditItem: uint8 [3, S, S] images, float32 [1, S, S] edit_mask
    item = load_item(entry)    # any index entry -> EditItem (a SynthRef's item generated, actors.synth)

Rollout workers read the items they sample (`ItemPrefetcher` reads, or generates, the next epoch's items
in a background thread while the current one is sampled); validation (actors.data) and `cocoedit edit` use
the same checks and the same crop, so every image is prepared one way. A file is usable when it
resolves (symlinks followed) inside the dataset root, is a regular file of at most data.max_file_bytes,
and its header says at most data.max_image_pixels; the size is known before anything is decoded.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
import stat
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, overload

import numpy as np
import torch
import torch.nn.functional as F

from cocoedit.actors.synth import load_synthetic
from cocoedit.actors.types import EditItem, GroupedItem, IndexItem, ItemRef, SynthRef


class ItemError(ValueError):
    """An item whose files cannot be used; the message names the data file, line, field and reason."""


@functools.lru_cache(maxsize=64)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def file_problem(root: str, rel: str, max_bytes: int) -> Optional[str]:
    """Why the file `rel` under `root` cannot be used, or None: it must resolve (symlinks followed)
    inside root, exist, be a regular file and hold at most max_bytes."""
    path = os.path.join(root, rel)
    real, base = os.path.realpath(path), _real_root(root)
    if os.path.commonpath([real, base]) != base:
        return f"{path} resolves to {real}, outside the dataset root {root}"
    try:
        info = os.stat(real)
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as e:
        return f"cannot read {path}: {e.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if info.st_size > max_bytes:
        return f"{path} is {info.st_size} bytes, over data.max_file_bytes={max_bytes}"
    return None


def _open(path: str, max_pixels: int):  # -> PIL.Image.Image, header read, pixels not decoded
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():  # our own pixel limit below is the one that counts
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ValueError(f"{path}: {e} (data.max_image_pixels={max_pixels})") from e
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    width, height = img.size
    if width * height > max_pixels or width * height == 0:
        img.close()
        raise ValueError(
            f"{path} is {width}x{height} = {width * height} pixels; images must have 1 to "
            f"data.max_image_pixels={max_pixels} pixels"
        )
    return img


def image_size(path: str, max_pixels: int) -> tuple[int, int]:
    """(width, height) from the image's header, without decoding; ValueError saying why it is unusable."""
    with _open(path, max_pixels) as img:
        return img.size


def read_rgb(path: str, max_pixels: int) -> torch.Tensor:
    """uint8 [3, H, W] from any image file PIL reads (alpha dropped, palettes expanded)."""
    with _open(path, max_pixels) as img:
        try:
            array = np.asarray(img.convert("RGB"))
        except OSError as e:  # the header was fine but the pixel data is truncated or corrupt
            raise ValueError(f"cannot decode {path}: {e}") from e
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def read_mask(path: str, polarity: str, max_pixels: int) -> torch.Tensor:
    """edit mask float32 [1, H, W] in {0, 1} (1 = edit) from a grey/RGB mask file of the given polarity
    (grey levels thresholded at 128, white = 255)."""
    with _open(path, max_pixels) as img:
        try:
            white = np.asarray(img.convert("L")) >= 128
        except OSError as e:
            raise ValueError(f"cannot decode {path}: {e}") from e
    return torch.from_numpy((white if polarity == "edit_white" else ~white).astype(np.float32))[None]


@overload
def center_crop_resize(
    image: torch.Tensor, mask: torch.Tensor, size: int
) -> tuple[torch.Tensor, torch.Tensor]: ...
@overload
def center_crop_resize(image: torch.Tensor, mask: None, size: int) -> tuple[torch.Tensor, None]: ...
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


def item_files(ref: ItemRef) -> dict[str, str]:
    """field -> path relative to the dataset root, for the item's image files."""
    files = {"source": ref.source, "mask": ref.mask}
    if ref.target is not None:
        files["target"] = ref.target
    return files


def check_files(ref: ItemRef) -> tuple[dict[str, tuple[int, int]], list[tuple[str, str]]]:
    """Header sizes of the item's files (field -> (width, height)) and every (field, reason) that makes
    one unusable: outside the root, not a regular file, too many bytes or pixels, not an image, or a mask
    or target of another size than the source. Reads headers only."""
    data = ref.data
    sizes: dict[str, tuple[int, int]] = {}
    problems: list[tuple[str, str]] = []
    for field, rel in item_files(ref).items():
        reason = file_problem(data.root, rel, data.max_file_bytes)
        if reason is None:
            try:
                sizes[field] = image_size(os.path.join(data.root, rel), data.max_image_pixels)
            except ValueError as e:
                reason = str(e)
        if reason is not None:
            problems.append((field, reason))
    source = sizes.get("source")
    for field in ("mask", "target"):
        if source is not None and field in sizes and sizes[field] != source:
            (w, h), (sw, sh) = sizes[field], source
            problems.append((field, f"{field} is {w}x{h} but source is {sw}x{sh}"))
    return sizes, problems


def empty_mask_reason(polarity: str) -> str:
    return f"marks no pixel to edit with mask_polarity={polarity}; check the polarity or drop the item"


def read_item(ref: ItemRef) -> EditItem:
    """The item with its pixels: files checked, decoded, center-cropped and resized to data.image_size.

    Raises ItemError naming the data file, line, field and reason (an item that validation did not
    check, data.validate=sample|off, can fail here)."""
    data = ref.data

    def error(field: str, reason: str) -> ItemError:
        return ItemError(
            f"{data.path} line {ref.line} (item {ref.item_id!r}): {field}: {reason}. "
            f"`cocoedit data check {data.path}` lists every problem of the file"
        )

    _, problems = check_files(ref)
    if problems:
        raise error(*problems[0])
    files = {field: os.path.join(data.root, rel) for field, rel in item_files(ref).items()}
    try:
        source = read_rgb(files["source"], data.max_image_pixels)
    except ValueError as e:
        raise error("source", str(e)) from e
    try:
        mask = read_mask(files["mask"], data.mask_polarity, data.max_image_pixels)
    except ValueError as e:
        raise error("mask", str(e)) from e
    try:
        target = read_rgb(files["target"], data.max_image_pixels) if "target" in files else None
    except ValueError as e:
        raise error("target", str(e)) from e
    if not mask.any():
        raise error("mask", empty_mask_reason(data.mask_polarity))
    image, mask = center_crop_resize(source, mask, data.image_size)
    target = center_crop_resize(target, None, data.image_size)[0] if target is not None else None
    return EditItem(ref.item_id, ref.instruction, image, mask, target, ref.task)


class ItemPrefetcher:
    """A rollout worker's items: `prefetch(items)` starts loading the references among them (ItemRefs
    read, SynthRefs generated) in a background thread; `resolve(items)` returns the items with every
    reference replaced by its EditItem, taken from a prefetch when one covered it, else loaded on the
    spot. Holds the last `keep` prefetches (the next epoch, and the one after when rollouts run ahead of
    the learner)."""

    def __init__(self, keep: int = 2) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocoedit-prefetch")
        self._pending: collections.deque[dict[ItemRef | SynthRef, Future[EditItem]]] = collections.deque(
            maxlen=keep
        )
        self.hits = 0  # items resolve() took from a prefetch
        self.misses = 0  # items resolve() loaded on the spot

    def prefetch(self, items: Sequence[GroupedItem]) -> None:
        if len(self._pending) == self._pending.maxlen:
            for future in self._pending[0].values():  # the oldest prefetch is dropped: stop its reads
                future.cancel()
        refs = dict.fromkeys(gi.item for gi in items if not isinstance(gi.item, EditItem))
        self._pending.append({ref: self._pool.submit(load_item, ref) for ref in refs})

    def resolve(self, items: Sequence[GroupedItem]) -> list[GroupedItem]:
        loaded: dict[ItemRef | SynthRef, EditItem] = {}
        for gi in items:
            ref = gi.item
            if isinstance(ref, EditItem) or ref in loaded:
                continue
            future = next((p[ref] for p in reversed(self._pending) if ref in p), None)
            if future is not None and not future.cancelled():
                loaded[ref] = future.result()  # raises the ItemError of a broken item here
                self.hits += 1
            else:
                loaded[ref] = load_item(ref)
                self.misses += 1
        return [
            gi if isinstance(gi.item, EditItem) else dataclasses.replace(gi, item=loaded[gi.item])
            for gi in items
        ]


def load_item(item: IndexItem) -> EditItem:
    """The item with its pixels: an ItemRef's files read, a SynthRef's item generated (an EditItem is
    returned as it is)."""
    if isinstance(item, ItemRef):
        return read_item(item)
    if isinstance(item, SynthRef):
        return load_synthetic(item)
    return item

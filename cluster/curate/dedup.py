"""Duplicate detection and balanced sampling for curated edit data; NumPy only.

    h = perceptual_hash(image)                      # uint8 [H, W, 3] -> 64-bit int (DCT pHash)
    first = duplicates(keys, max_distance=4)        # item -> the earlier item it duplicates
    chosen = balanced_sample(groups, n=1000, seed=0)

An exact duplicate has the same pixels (sha256 of the decoded images); a near duplicate has every
perceptual hash within `max_distance` bits of an earlier item's (re-encoded, resized or lightly
retouched copies). Candidates are found by banding: the 64 bits are cut into max_distance + 1 ranges,
and two hashes within max_distance bits agree exactly on at least one of them (pigeonhole), so only
items sharing a range value are compared, never all pairs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

HASH_BITS = 64


def perceptual_hash(image: np.ndarray) -> int:
    """DCT perceptual hash of uint8 [H, W, 3] or [H, W]: the signs of the 8x8 lowest frequencies of a
    32x32 greyscale thumbnail, relative to their median, as a 64-bit int."""
    from PIL import Image
    from scipy.fft import dctn

    grey = Image.fromarray(image).convert("L").resize((32, 32), Image.Resampling.BOX)
    low = dctn(np.asarray(grey, dtype=np.float64), norm="ortho")[:8, :8].ravel()
    bits = low > np.median(low)
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def pixel_digest(*images: np.ndarray) -> str:
    """sha256 hex of the images' shapes and pixels: equal iff every image is pixel-identical."""
    h = hashlib.sha256()
    for image in images:
        h.update(str(image.shape).encode())
        h.update(np.ascontiguousarray(image).tobytes())
    return h.hexdigest()


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class DedupKey:
    """What an item is compared by: `digest` for exact duplicates, `hashes` (one perceptual hash per
    image, e.g. source and target) and `text` (must be equal, e.g. '' or a normalised instruction)
    for near duplicates."""

    item_id: str
    digest: str
    hashes: tuple[int, ...]
    text: str = ""


def _bands(max_distance: int) -> list[tuple[int, int]]:
    """Bit ranges such that two hashes within max_distance bits agree on at least one whole range
    (pigeonhole: max_distance + 1 disjoint ranges)."""
    n = min(max_distance + 1, HASH_BITS)
    edges = np.linspace(0, HASH_BITS, n + 1).round().astype(int)
    return [(int(edges[i]), int(edges[i + 1])) for i in range(n)]


def duplicates(keys: Sequence[DedupKey], max_distance: int) -> dict[str, tuple[str, str]]:
    """{item_id: (kind, id of the earlier item it duplicates)} for every duplicate in `keys` (in
    order: the first of a group is kept); kind is "exact" or "near". max_distance < 0 = exact only."""
    out: dict[str, tuple[str, str]] = {}
    by_digest: dict[str, str] = {}
    bands = _bands(max_distance) if max_distance >= 0 else []
    buckets: dict[tuple, list[int]] = {}
    kept: list[DedupKey] = []
    for key in keys:
        if key.digest in by_digest:
            out[key.item_id] = ("exact", by_digest[key.digest])
            continue
        by_digest[key.digest] = key.item_id
        if not bands:
            continue
        # band values of the first hash pick the candidates; every hash must then be within range
        first = key.hashes[0]
        band_keys = [
            (b, lo, (first >> lo) & ((1 << (hi - lo)) - 1), key.text) for b, (lo, hi) in enumerate(bands)
        ]
        match = None
        for bk in band_keys:
            for j in buckets.get(bk, ()):
                other = kept[j]
                if all(hamming(a, b) <= max_distance for a, b in zip(key.hashes, other.hashes, strict=True)):
                    match = other.item_id
                    break
            if match is not None:
                break
        if match is not None:
            out[key.item_id] = ("near", match)
            continue
        kept.append(key)
        for bk in band_keys:
            buckets.setdefault(bk, []).append(len(kept) - 1)
    return out


def balanced_sample(groups: Mapping[str, Sequence[str]], n: int, seed: int) -> list[str]:
    """At most n ids, as evenly spread over the groups as they allow: every group gets an equal quota,
    a group with fewer items gives the rest of its quota to the others (water-filling). Within a group
    the ids are drawn at random (seeded); the result is in group order, then draw order."""
    if n < 0:
        raise ValueError(f"balanced sample size n={n} must be >= 0")
    sizes = {g: len(ids) for g, ids in groups.items()}
    quota = dict.fromkeys(groups, 0)
    left = min(n, sum(sizes.values()))
    open_groups = sorted(g for g in groups if sizes[g] > 0)
    while left > 0 and open_groups:
        share = max(1, left // len(open_groups))
        for g in list(open_groups):
            take = min(share, sizes[g] - quota[g], left)
            quota[g] += take
            left -= take
            if quota[g] == sizes[g]:
                open_groups.remove(g)
            if left == 0:
                break
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for g in sorted(groups):
        ids = list(groups[g])
        order = rng.permutation(len(ids))[: quota[g]]
        out.extend(ids[i] for i in order)
    return out

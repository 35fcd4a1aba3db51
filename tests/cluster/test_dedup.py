"""Perceptual hashes, duplicate detection and the balanced sample of curated data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from cocoedit.actors.synth import synthetic_example
from cocoedit.cluster.curate.dedup import (
    DedupKey,
    balanced_sample,
    duplicates,
    hamming,
    perceptual_hash,
    pixel_digest,
)
from cocoedit.cluster.curate.mask_eval import jpeg


def _image(i: int, size: int = 64) -> np.ndarray:
    return synthetic_example(i, size, seed=5).item.source_image.permute(1, 2, 0).numpy()


def test_perceptual_hash_survives_reencoding_and_resizing_but_not_other_images() -> None:
    from PIL import Image

    a = _image(0, 128)
    h = perceptual_hash(a)
    assert 0 <= h < 2**64
    assert hamming(h, perceptual_hash(jpeg(a, 70))) <= 4
    half = np.asarray(Image.fromarray(a).resize((64, 64), Image.Resampling.BICUBIC))
    assert hamming(h, perceptual_hash(half)) <= 4
    others = [hamming(h, perceptual_hash(_image(i, 128))) for i in range(1, 9)]
    assert min(others) > 8, others


def test_duplicates_exact_near_and_text() -> None:
    imgs = [_image(i) for i in range(4)]
    keys = [
        DedupKey("a", pixel_digest(imgs[0], imgs[1]), (perceptual_hash(imgs[0]), perceptual_hash(imgs[1]))),
        DedupKey("b", pixel_digest(imgs[2], imgs[3]), (perceptual_hash(imgs[2]), perceptual_hash(imgs[3]))),
        DedupKey(
            "a-copy", pixel_digest(imgs[0], imgs[1]), (perceptual_hash(imgs[0]), perceptual_hash(imgs[1]))
        ),
        DedupKey(
            "a-jpeg",
            pixel_digest(jpeg(imgs[0], 80), jpeg(imgs[1], 80)),
            (perceptual_hash(jpeg(imgs[0], 80)), perceptual_hash(jpeg(imgs[1], 80))),
        ),
        # same source, another target: not a duplicate (every hash must be close)
        DedupKey(
            "a-other", pixel_digest(imgs[0], imgs[3]), (perceptual_hash(imgs[0]), perceptual_hash(imgs[3]))
        ),
    ]
    found = duplicates(keys, max_distance=4)
    assert found == {"a-copy": ("exact", "a"), "a-jpeg": ("near", "a")}
    assert duplicates(keys, max_distance=-1) == {"a-copy": ("exact", "a")}
    # near duplicates must also agree on the text (e.g. the instruction of items without a target)
    h = perceptual_hash(imgs[0])
    texts = [DedupKey("x", "d1", (h,), "remove the cup"), DedupKey("y", "d2", (h,), "add a hat")]
    assert duplicates(texts, 4) == {}


def test_duplicates_agree_with_all_pairs_search() -> None:
    rng = np.random.default_rng(0)
    base = [int(v) for v in rng.integers(0, 2**63, 40)]
    hashes = []
    for b in base:  # each base hash plus copies with 1..6 flipped bits
        hashes.append(b)
        for flips in (1, 3, 6):
            bits = rng.choice(64, flips, replace=False)
            hashes.append(b ^ sum(1 << int(x) for x in bits))
    keys = [DedupKey(str(i), str(i), (h,)) for i, h in enumerate(hashes)]
    found = duplicates(keys, max_distance=4)
    kept: list[int] = []
    expected = {}
    for i, h in enumerate(hashes):  # the same greedy rule by brute force
        match = next((j for j in kept if hamming(h, hashes[j]) <= 4), None)
        if match is None:
            kept.append(i)
        else:
            expected[str(i)] = ("near", str(match))
    assert found == expected and len(found) >= 80


def test_balanced_sample_water_fills_and_is_seeded() -> None:
    groups = {
        "add": [f"a{i}" for i in range(10)],
        "remove": [f"r{i}" for i in range(2)],
        "style": [f"s{i}" for i in range(6)],
    }
    chosen = balanced_sample(groups, 12, seed=0)
    counts = Counter(c[0] for c in chosen)
    assert counts == {"a": 5, "r": 2, "s": 5} and len(set(chosen)) == 12
    assert balanced_sample(groups, 12, seed=0) == chosen
    assert balanced_sample(groups, 12, seed=1) != chosen
    assert sorted(balanced_sample(groups, 100, seed=0)) == sorted(sum(groups.values(), []))
    assert Counter(c[0] for c in balanced_sample(groups, 3, seed=0)) == {"a": 1, "r": 1, "s": 1}
    with pytest.raises(ValueError, match="n=-1"):
        balanced_sample(groups, -1, 0)

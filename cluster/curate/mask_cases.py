"""Edit pairs with exact masks for measuring edit masks on data nobody tuned to (bench/masks.py).

Real photographs (scikit-image's sample images, centre-cropped and resized to SIZE px) edited the way
editing datasets edit them, inside random antialiased regions (the exact mask is alpha >= 0.5):

    recolour    chroma replaced in CIELAB, lightness (the texture) kept
    paste       the region taken from another photograph (an added object)
    remove      the region filled from its surroundings (normalised convolution + grain: inpainting)
    retexture   the local mean kept, the fine structure replaced by a texture photo (brick, grass, gravel)

plus synthetic hard cases: `texture` (a same-mean, same-contrast texture swapped for another),
`uneven` (a recolour whose strength ramps from strong to weak across the region), `small` (regions of
5-8 px radius), and `unchanged` pairs (the truth is empty: false positives). Every pair is then seen
under each of DEGRADATIONS. Item i of a kind is fixed by its id; `held_out(id)` (a hash of the id)
puts a third of the items aside so that a method can be tuned on the rest and measured on them.

    cases = mask_cases()                          # list[MaskCase], clean pairs
    source, target = degrade(case, "jpeg")        # uint8 [SIZE, SIZE, 3] each
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import cache

import numpy as np

from cocoedit.cluster.curate.mask_eval import jpeg

SIZE = 256
PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "retina",
    "immunohistochemistry",
    "hubble_deep_field",
    "motorcycle",
)
TEXTURES = ("brick", "grass", "gravel")
REAL_KINDS = ("recolour", "paste", "remove", "retexture")
HARD_KINDS = ("texture", "uneven", "small")
DEGRADATIONS = ("none", "jpeg", "noise", "shift", "gain", "offset")
PER_PHOTO = 2  # items per (photo, real kind)
PER_HARD = 8  # items per hard kind


@dataclass(frozen=True)
class MaskCase:
    """One clean pair and its exact mask (empty for `unchanged`)."""

    id: str
    kind: str
    source: np.ndarray  # uint8 [SIZE, SIZE, 3]
    target: np.ndarray  # uint8 [SIZE, SIZE, 3]
    truth: np.ndarray  # bool [SIZE, SIZE], True = edited


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def held_out(case_id: str) -> bool:
    """Whether an item belongs to the held-out part (a third of the ids, by hash; never tuned on)."""
    return _seed("held-out", case_id) % 3 == 0


def _square(image: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side, :3]))
    return np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))


@cache
def photo(name: str, size: int = SIZE) -> np.ndarray:
    """A scikit-image sample (PHOTOS or TEXTURES) as uint8 [size, size, 3], centre square."""
    import skimage.data

    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    return _square(image, size)


def blob(
    rng: np.random.Generator, size: int, radius: tuple[float, float], supersample: int = 4
) -> np.ndarray:
    """float [size, size] coverage in [0, 1] of a random smooth blob (a wobbly rotated ellipse), from
    supersample^2 samples per pixel: the antialiased alpha of an edit region."""
    r0 = rng.uniform(*radius)
    aspect = rng.uniform(0.6, 1.0)
    angle = rng.uniform(0, math.pi)
    margin = r0 + 4
    cy, cx = rng.uniform(margin, size - margin, 2)
    wobble = [(k, rng.uniform(0, 0.12), rng.uniform(0, 2 * math.pi)) for k in (3, 4, 5)]
    n = size * supersample
    coords = (np.arange(n) + 0.5) / supersample
    ys, xs = coords[:, None] - cy, coords[None, :] - cx
    u = xs * math.cos(angle) + ys * math.sin(angle)
    v = (-xs * math.sin(angle) + ys * math.cos(angle)) / aspect
    theta = np.arctan2(v, u)
    limit = r0 * (1 + sum(a * np.cos(k * theta + p) for k, a, p in wobble))
    inside = (u * u + v * v) <= limit * limit
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _compose(source: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = source.astype(np.float64) * (1 - alpha[..., None]) + edited * alpha[..., None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _recolour(source: np.ndarray, alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float [H, W, 3]: source with its chroma moved away from the region's mean chroma, lightness kept."""
    from skimage.color import lab2rgb, rgb2lab

    lab = rgb2lab(source)
    inside = alpha >= 0.5
    mean_ab = lab[inside][:, 1:].mean(axis=0)
    heading = math.atan2(-mean_ab[1], -mean_ab[0]) + rng.uniform(-1.0, 1.0)  # away from the region's hue
    chroma = rng.uniform(40, 60)
    new = lab.copy()
    new[..., 1] = chroma * math.cos(heading) + 0.3 * lab[..., 1]
    new[..., 2] = chroma * math.sin(heading) + 0.3 * lab[..., 2]
    new[..., 0] = np.clip(lab[..., 0], 25, 85)  # chroma needs light: no black or white pixels
    return lab2rgb(new) * 255


def _fill(source: np.ndarray, alpha: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """float [H, W, 3]: the region filled from outside it (Gaussian normalised convolution) plus grain."""
    from scipy import ndimage

    outside = (alpha < 0.01).astype(np.float64)
    weight = ndimage.gaussian_filter(outside, sigma) + 1e-9
    channels = [ndimage.gaussian_filter(source[..., c] * outside, sigma) / weight for c in range(3)]
    return np.stack(channels, axis=-1) + rng.normal(0, 2.0, source.shape[:2])[..., None]


def _highpass(grey: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return grey - ndimage.gaussian_filter(grey, sigma)


def _retexture(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float [H, W, 3]: the source's local mean (Gaussian, 3 px) plus the fine structure of a texture."""
    from scipy import ndimage

    texture = photo(TEXTURES[int(rng.integers(len(TEXTURES)))])[..., 0].astype(np.float64)
    detail = _highpass(np.rot90(texture, int(rng.integers(4))), 3.0)
    detail *= 14.0 / (detail.std() + 1e-9)
    mean = ndimage.gaussian_filter(source.astype(np.float64), (3, 3, 0))
    return mean + detail[..., None]


def _grating(size: int, rng: np.random.Generator, colour: np.ndarray, style: int) -> np.ndarray:
    """float [size, size, 3]: a zero-mean texture of contrast ~30 around `colour` (style 0 stripes,
    1 noise, 2 checks)."""
    from scipy import ndimage

    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    if style == 0:
        angle = rng.uniform(0, math.pi)
        pattern = np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / rng.uniform(3, 6))
    elif style == 1:
        pattern = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 0.7)
    else:
        cell = int(rng.integers(2, 4))
        pattern = ((ys // cell + xs // cell) % 2) * 2.0 - 1.0
    pattern = (pattern - pattern.mean()) / (pattern.std() + 1e-9)
    return colour + 30.0 * pattern[..., None]


def _other_photo(name: str, rng: np.random.Generator) -> np.ndarray:
    others = [p for p in PHOTOS if p != name]
    return np.roll(photo(others[int(rng.integers(len(others)))]), tuple(rng.integers(0, SIZE, 2)), (0, 1))


def _real_case(name: str, kind: str, k: int) -> MaskCase:
    case_id = f"{name}-{kind}-{k}"
    rng = np.random.default_rng(_seed(case_id))
    source = photo(name)
    for _ in range(50):  # a region where the edit is visible (a fill of a flat region changes nothing)
        alpha = blob(rng, SIZE, (18, 50))
        if kind == "recolour":
            edited = _recolour(source, alpha, rng)
        elif kind == "paste":
            edited = _other_photo(name, rng).astype(np.float64)
        elif kind == "remove":
            edited = _fill(source.astype(np.float64), alpha, 8.0, rng)
        else:
            edited = _retexture(source, rng)
        target = _compose(source, edited, alpha)
        truth = alpha >= 0.5
        change = np.abs(target.astype(np.int16) - source)[truth].max(axis=-1)
        if np.median(change) >= 8:
            return MaskCase(case_id, kind, source, target, truth)
    raise RuntimeError(f"{case_id}: no region with a visible edit in 50 draws")


def _hard_case(kind: str, k: int) -> MaskCase:
    case_id = f"{kind}-{k}"
    rng = np.random.default_rng(_seed(case_id))
    if kind == "texture":
        colour = rng.uniform(70, 180, 3)
        first, second = rng.choice(3, 2, replace=False)
        source_f = _grating(SIZE, rng, colour, int(first))
        alpha = blob(rng, SIZE, (18, 50))
        # same mean colour and contrast inside the region, another structure
        target = _compose(np.clip(source_f + 0.5, 0, 255), _grating(SIZE, rng, colour, int(second)), alpha)
        source = np.clip(source_f + 0.5, 0, 255).astype(np.uint8)
        return MaskCase(case_id, kind, source, target, alpha >= 0.5)
    name = PHOTOS[k % len(PHOTOS)]
    source = photo(name)
    if kind == "uneven":
        alpha = blob(rng, SIZE, (25, 50))
        ys, xs = np.nonzero(alpha >= 0.5)
        angle = rng.uniform(0, 2 * math.pi)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        ramp = np.zeros_like(alpha)
        ramp[ys, xs] = (along - along.min()) / max(along.max() - along.min(), 1.0)
        strength = 1.0 - 0.75 * ramp  # full recolour on one side, a quarter of it on the other
        edited = source + strength[..., None] * (_recolour(source, alpha, rng) - source)
        return MaskCase(case_id, kind, source, _compose(source, edited, alpha), alpha >= 0.5)
    alpha = blob(rng, SIZE, (5, 8))
    edited = _recolour(source, alpha, rng) if k % 2 else _other_photo(name, rng).astype(np.float64)
    return MaskCase(case_id, kind, source, _compose(source, edited, alpha), alpha >= 0.5)


def _unchanged_case(k: int) -> MaskCase:
    case_id = f"unchanged-{k}"
    if k < len(PHOTOS):
        source = photo(PHOTOS[k])
    elif k < len(PHOTOS) + len(TEXTURES):
        source = photo(TEXTURES[k - len(PHOTOS)])
    elif k % 2:  # the photographs again, turned and mirrored: other content under the degradations
        source = np.ascontiguousarray(np.rot90(photo(PHOTOS[k % len(PHOTOS)]), 1 + k // 16)[:, ::-1])
    else:
        rng = np.random.default_rng(_seed(case_id))
        source = np.clip(_grating(SIZE, rng, rng.uniform(70, 180, 3), k % 3) + 0.5, 0, 255).astype(np.uint8)
    return MaskCase(case_id, "unchanged", source, source.copy(), np.zeros((SIZE, SIZE), bool))


def case_ids(unchanged: int = 48) -> list[str]:
    """The ids of every pair: PER_PHOTO per (photo, real kind), PER_HARD per hard kind, `unchanged`."""
    ids = [f"{p}-{kind}-{k}" for p in PHOTOS for kind in REAL_KINDS for k in range(PER_PHOTO)]
    ids += [f"{kind}-{k}" for kind in HARD_KINDS for k in range(PER_HARD)]
    return ids + [f"unchanged-{k}" for k in range(unchanged)]


def mask_case(case_id: str) -> MaskCase:
    """The clean pair of one id of case_ids()."""
    *head, kind, k = case_id.split("-")
    if kind in REAL_KINDS and "-".join(head) in PHOTOS:
        return _real_case("-".join(head), kind, int(k))
    if kind in HARD_KINDS and not head:
        return _hard_case(kind, int(k))
    if kind == "unchanged" and not head:
        return _unchanged_case(int(k))
    raise ValueError(f"mask case {case_id!r} is not an id of case_ids()")


def mask_cases(unchanged: int = 48) -> list[MaskCase]:
    """Every clean pair, in the order of case_ids()."""
    return [mask_case(i) for i in case_ids(unchanged)]


def degrade(case: MaskCase, degradation: str) -> tuple[np.ndarray, np.ndarray]:
    """(source, target) uint8 [H, W, 3] of `case` under one of DEGRADATIONS (drawn from the id):
    none; jpeg: both through JPEG 75; noise: Gaussian noise of sd 4 levels on the target; shift: the
    target's scene moved 1 px (edges repeated); gain: per-channel gain of the target 1 +- 4-7%;
    offset: the target brightened or darkened by 8-16 levels (+-3 per channel). The truth stays in
    source coordinates."""
    if degradation not in DEGRADATIONS:
        raise ValueError(f"degradation {degradation!r} is not one of {DEGRADATIONS}")
    rng = np.random.default_rng(_seed(case.id, degradation))
    source, target = case.source, case.target.astype(np.float64)
    if degradation == "jpeg":
        return jpeg(source, 75), jpeg(case.target, 75)
    if degradation == "noise":
        target = target + rng.normal(0, 4.0, target.shape)
    elif degradation == "shift":
        axis, step = int(rng.integers(2)), int(rng.choice([-1, 1]))
        index = np.clip(np.arange(target.shape[axis]) - step, 0, target.shape[axis] - 1)
        target = np.take(target, index, axis=axis)
    elif degradation == "gain":
        target = target * (1 + rng.choice([-1, 1], 3) * rng.uniform(0.04, 0.07, 3))
    elif degradation == "offset":
        target = target + rng.choice([-1, 1]) * rng.uniform(8, 16) + rng.uniform(-3, 3, 3)
    return source, np.clip(target + 0.5, 0, 255).astype(np.uint8)

"""Edit masks from (source, target) pairs, and from bounding boxes, with NumPy and scikit-image.

The mask of a pair is where the target differs from the source, found robustly for real datasets whose
targets are JPEG-compressed, noisy, brighter or tinted, or shifted by a pixel or two:

    align          estimate_shift + check_shift + apply_shift: undo a global translation (phase
                   correlation, checked against the whole-pixel shifts nearby)
    photometric    match_gain_offset: undo a global per-channel gain AND offset, fitted on the pixels
                   that agree on one line target = gain * source + offset (the unchanged ones)
    difference     colour_difference: CIE76 delta E in CIELAB after a Gaussian blur (JPEG noise), and
                   structure_difference: 1 - local SSIM contrast-structure of the luminance, which finds
                   texture changes that keep the mean colour; change_score combines them
    threshold      adaptive_threshold: Otsu's threshold of the differences, never below a floor, seeds
                   regions that grow_regions down to hysteresis_delta_e (an uneven change stays one)
    edges          refine_edges: on the region's rim keep pixels whose score is at least edge_ratio of
                   the local peak (the half-way point of an antialiased, blurred edge)
    clean          open_close, fill_holes, drop_small_components: morphology on the binary mask
    margin         dilate: grow the mask by a margin (off by default)

Each step is one function; `edit_mask` runs them with the thresholds of a `MaskConfig`. Masks are bool
[H, W] with True = edit (the project's manifest convention, white = edit when saved). Measured on
photographs and hard cases nobody tuned to in bench/masks.py (docs/masks.md).

    result = edit_mask(source, target, MaskConfig())   # uint8 [H, W, 3] each -> MaskResult
    result.mask                                         # bool [H, W]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

import numpy as np

from cocoedit.ranges import Range


@dataclass(frozen=True)
class MaskConfig:
    """Thresholds of the mask steps; pixel sizes refer to the image as given (or as shrunk to max_side)."""

    # Work on images shrunk so that the longer side is at most this (the mask is scaled back up).
    max_side: Annotated[int, Range(ge=32)] = 1024
    align: bool = True  # undo a global shift between source and target (phase correlation)
    # Translations shorter than min_shift_px are left alone; longer than max_shift_px are not
    # misalignment but different images (not corrected, reported in MaskResult.shift_applied).
    min_shift_px: Annotated[float, Range(ge=0)] = 0.5
    max_shift_px: Annotated[float, Range(ge=0)] = 4.0  # see min_shift_px
    match_colour: bool = True  # undo a global per-channel gain before differencing
    # A global per-channel gain further than this from 1 is an edit (e.g. a new background), not a shift.
    max_gain_shift: Annotated[float, Range(ge=0, lt=1)] = 0.08
    # Likewise a global per-channel offset (brightness) larger than this share of the range (0-255).
    max_offset: Annotated[float, Range(ge=0, lt=1)] = 0.1
    blur_sigma: Annotated[float, Range(ge=0)] = 1.0  # px, Gaussian blur before differencing
    min_delta_e: Annotated[float, Range(gt=0)] = 10.0  # the threshold's floor (CIE76 delta E)
    # Local SSIM window (px) of the structure term; 0 = colour difference only. A structure change of
    # structure_floor (1 - contrast-structure, 0..2) scores like a colour change of min_delta_e.
    structure_sigma: Annotated[float, Range(ge=0)] = 1.5
    structure_floor: Annotated[float, Range(gt=0)] = 0.4  # see structure_sigma
    # The structure term counts in full where the luminance itself changed by this many levels (0-255).
    structure_min_change: Annotated[float, Range(gt=0)] = 12.0
    # Regions grow from pixels above the threshold through pixels above the larger of these two
    # (hysteresis): a floor, and a share of the threshold (JPEG blocks around a strong edit change too).
    hysteresis_delta_e: Annotated[float, Range(gt=0)] = 5.0
    hysteresis_ratio: Annotated[float, Range(ge=0, lt=1)] = 0.35  # see hysteresis_delta_e
    edge_ratio: Annotated[float, Range(ge=0, lt=1)] = 0.5  # rim pixels below this share of the local peak go
    open_radius: Annotated[int, Range(ge=0)] = 1  # px; removes specks thinner than 2r + 1
    close_radius: Annotated[int, Range(ge=0)] = 2  # px; closes cracks narrower than 2r + 1
    max_hole_fraction: Annotated[float, Range(ge=0, le=1)] = 0.002  # holes up to this share of the image
    min_component_fraction: Annotated[float, Range(ge=0, le=1)] = 0.001  # smaller components dropped
    margin_px: Annotated[int, Range(ge=0)] = 0  # dilation after cleaning


@dataclass(frozen=True)
class MaskResult:
    """An edit mask and how it was found."""

    mask: np.ndarray  # bool [H, W], True = edit
    threshold: float  # delta E threshold used
    shift: tuple[float, float]  # (dy, dx) estimated translation of target vs source
    shift_applied: bool  # whether the target was shifted back before differencing
    gain: tuple[float, float, float]  # per-channel gain target / source that was divided out (1 = none)
    # per-channel offset (levels of 0-255) taken off before dividing by the gain: target = gain * source + offset
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def area_fraction(self) -> float:
        return float(self.mask.mean())


def _check_pair(source: np.ndarray, target: np.ndarray) -> None:
    for name, a in (("source", source), ("target", target)):
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
            raise ValueError(f"{name} must be uint8 [H, W, 3], got {a.dtype} {tuple(a.shape)}")
    if source.shape != target.shape:
        raise ValueError(
            f"source {tuple(source.shape)} and target {tuple(target.shape)} differ in size; resize the "
            "target to the source first"
        )


def _grey(image: np.ndarray) -> np.ndarray:
    """float64 [H, W] luminance in [0, 1]."""
    return image.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0


def estimate_shift(source: np.ndarray, target: np.ndarray, upsample: int = 10) -> tuple[float, float]:
    """(dy, dx) that moves `target` onto `source` (phase correlation of the luminance, 1/upsample px).

    An edit changes a minority of the pixels; the correlation peak of the unchanged rest dominates."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(_grey(source), _grey(target), upsample_factor=upsample)
    return float(shift[0]), float(shift[1])


def apply_shift(image: np.ndarray, shift: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """`image` [H, W, C] moved by (dy, dx), and the bool [H, W] map of pixels that had a source inside
    the image (the uncovered border is False). Whole-pixel shifts are copied, others interpolated
    bilinearly; uncovered pixels repeat the nearest edge."""
    from scipy import ndimage

    dy, dy_int = shift[0], round(shift[0])
    dx, dx_int = shift[1], round(shift[1])
    h, w = image.shape[:2]
    if abs(dy - dy_int) < 0.05 and abs(dx - dx_int) < 0.05:
        rows = np.clip(np.arange(h) - dy_int, 0, h - 1)
        cols = np.clip(np.arange(w) - dx_int, 0, w - 1)
        moved = image[rows][:, cols]
        dy, dx = float(dy_int), float(dx_int)
    else:
        channels = [
            ndimage.shift(image[..., c].astype(np.float32), (dy, dx), order=1, mode="nearest")
            for c in range(image.shape[2])
        ]
        moved = np.clip(np.stack(channels, axis=-1) + 0.5, 0, 255).astype(np.uint8)
    valid = np.ones((h, w), dtype=bool)
    ky, kx = math.ceil(abs(dy) - 1e-6), math.ceil(abs(dx) - 1e-6)
    if ky:
        valid[(slice(0, ky) if dy > 0 else slice(h - ky, h)), :] = False
    if kx:
        valid[:, (slice(0, kx) if dx > 0 else slice(w - kx, w))] = False
    return moved, valid


def check_shift(
    source: np.ndarray, target: np.ndarray, shift: tuple[float, float], radius: int = 2
) -> tuple[float, float]:
    """`shift`, or the whole-pixel shift within `radius` px (no shift included) under which the
    luminances differ least, if that is less: the 75th percentile of the absolute differences over
    the covered pixels, which an edit of under a quarter of the image does not move.

    Phase correlation of a periodic texture (stripes, checks) has several equal peaks and may pick a
    wrong one."""
    grey_s, grey_t = _grey(source), _grey(target)
    h, w = grey_s.shape

    def cost(moved: np.ndarray) -> float:
        return float(np.quantile(np.abs(grey_s[radius : h - radius, radius : w - radius] - moved), 0.75))

    moved, _ = apply_shift(target, shift)
    best, best_cost = shift, cost(_grey(moved)[radius : h - radius, radius : w - radius])
    steps = range(-radius, radius + 1)
    # shortest first: a period of the texture makes several shifts fit equally, the shortest is taken
    for dy, dx in sorted(((y, x) for y in steps for x in steps), key=lambda d: math.hypot(*d)):
        # target moved by (dy, dx): pixel (y, x) comes from (y - dy, x - dx)
        c = cost(grey_t[radius - dy : h - radius - dy, radius - dx : w - radius - dx])
        if c < best_cost - 1e-9:
            best, best_cost = (float(dy), float(dx)), c
    return best


def match_colour(
    source: np.ndarray, target: np.ndarray, valid: np.ndarray, max_gain_shift: float
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """`target` with a global per-channel gain divided out, and the gains (1 where none was found): the
    gain-only step that match_gain_offset (used by edit_mask) replaced; kept for callers of it.

    The gain of a channel is the mode of log(target / source) over valid, well-exposed pixels: the
    unchanged part of the image agrees on one ratio while edited pixels scatter, so the mode survives
    edits covering more than half the image. A gain further than max_gain_shift from 1 is left in."""
    gains = []
    out = target.astype(np.float64)
    # every other row and column: the mode of a quarter of the pixels is as sharp, 4x cheaper
    step = 2 if valid.size > 256 * 256 else 1
    s_all, t_all = source[::step, ::step].astype(np.float64), target[::step, ::step].astype(np.float64)
    sub = valid[::step, ::step]
    for c in range(3):
        s, t = s_all[..., c][sub], t_all[..., c][sub]
        ok = (s > 16) & (t > 16) & (s < 250) & (t < 250)  # clipped or dark pixels carry no gain
        gain = 1.0
        if ok.sum() >= 64:
            ratios = np.log(t[ok] / s[ok])
            lim = math.log(1 + 2 * max_gain_shift) if max_gain_shift > 0 else 0.01
            counts, edges = np.histogram(ratios, bins=200, range=(-lim, lim))
            smooth = np.convolve(counts, np.ones(5) / 5, mode="same")
            peak = int(np.argmax(smooth))
            # refine the peak to the mean ratio of the pixels in its bins
            lo, hi = edges[max(peak - 2, 0)], edges[min(peak + 3, len(edges) - 1)]
            near = ratios[(ratios >= lo) & (ratios <= hi)]
            if near.size and smooth[peak] > 0:
                g = float(math.exp(near.mean()))
                gain = g if abs(g - 1.0) <= max_gain_shift else 1.0
        gains.append(gain)
        out[..., c] /= gain
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), (gains[0], gains[1], gains[2])


def match_gain_offset(
    source: np.ndarray, target: np.ndarray, valid: np.ndarray, max_gain_shift: float, max_offset: float
) -> tuple[np.ndarray, tuple[float, float, float], tuple[float, float, float]]:
    """`target` with a global per-channel line target = gain * source + offset undone, the gains and the
    offsets (levels of 0-255; 1 and 0 where none was found).

    Per channel, every gain within max_gain_shift of 1 (steps of 0.005) is tried: the unchanged pixels
    put target - gain * source into one sharp histogram peak at the right gain, edited pixels scatter,
    so the fit survives edits covering most of the image. The peak's pixels are then fitted by least
    squares (twice, keeping residuals within 3 robust sd). A fit outside the limits, or one that fewer
    than a fifth of the pixels agree with, is not a global change: nothing is undone."""
    limit = max_offset * 255.0
    step = max(1, round(math.sqrt(valid.size / 65536)))  # the peak of ~65k pixels is as sharp
    sub = valid[::step, ::step]
    s_all, t_all = source[::step, ::step].astype(np.float64), target[::step, ::step].astype(np.float64)
    candidates = np.linspace(1 - max_gain_shift, 1 + max_gain_shift, 2 * round(max_gain_shift / 0.005) + 1)
    edges = np.arange(-limit - 6.5, limit + 7.5)  # 1-level bins, a margin for noise beyond the limit
    gains, offsets = [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]
    out = target.astype(np.float64)
    for c in range(3):
        s, t = s_all[..., c][sub], t_all[..., c][sub]
        ok = (s > 8) & (t > 8) & (s < 247) & (t < 247)  # clipped pixels do not follow the line
        s, t = s[ok], t[ok]
        if s.size < 64:
            continue
        best = (-1.0, 1.0, 0.0)
        for a in candidates:
            counts, _ = np.histogram(t - a * s, bins=edges)
            smooth = np.convolve(counts, np.ones(3), mode="same")
            peak = int(np.argmax(smooth))
            score = smooth[peak] * (1 - 0.5 * abs(a - 1))  # a tie goes to the gain nearest 1
            if score > best[0]:
                best = (score, float(a), float(edges[peak] + 0.5))
        _, a, b = best
        inliers = np.abs(t - a * s - b) <= 3.0
        for _ in range(2):
            if inliers.sum() < 32 or np.ptp(s[inliers]) < 16:
                break  # too few or too narrow a range to fit a line: keep the histogram's estimate
            a, b = np.polyfit(s[inliers], t[inliers], 1)
            res = t - a * s - b
            sd = 1.4826 * np.median(np.abs(res[inliers]))
            inliers = np.abs(res) <= max(3 * sd, 1.5)
        if inliers.mean() < 0.2 or abs(a - 1) > max_gain_shift or abs(b) > limit:
            continue
        if abs(a - 1) < 0.002 and abs(b) < 0.5:
            continue  # nothing to undo: leave the pixels exactly as they are
        gains[c], offsets[c] = float(a), float(b)
        out[..., c] = (out[..., c] - b) / a
    corrected = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return corrected, (gains[0], gains[1], gains[2]), (offsets[0], offsets[1], offsets[2])


def colour_difference(source: np.ndarray, target: np.ndarray, blur_sigma: float) -> np.ndarray:
    """float32 [H, W] CIE76 delta E between the images in CIELAB, each blurred by blur_sigma px first
    (JPEG blocks and noise average out; a real edit survives the blur)."""
    from scipy import ndimage
    from skimage.color import rgb2lab

    def lab(image: np.ndarray) -> np.ndarray:
        # float32 throughout: half the time of float64, delta E equal to within 1e-4
        x = image.astype(np.float32) / 255.0
        if blur_sigma > 0:
            x = ndimage.gaussian_filter(x, sigma=(blur_sigma, blur_sigma, 0))
        return rgb2lab(x)

    d = lab(source) - lab(target)
    return np.sqrt((d * d).sum(axis=-1))


def adaptive_threshold(diff: np.ndarray, valid: np.ndarray, min_delta_e: float) -> float:
    """Otsu's threshold of the valid differences, never below min_delta_e (an unedited pair, whose
    differences are all noise, then gets an empty mask rather than its noisiest half)."""
    from skimage.filters import threshold_otsu

    values = diff[valid]
    if values.size == 0 or float(values.max() - values.min()) == 0.0:
        return float(min_delta_e)
    return max(float(threshold_otsu(values)), float(min_delta_e))


def structure_difference(source: np.ndarray, target: np.ndarray, sigma: float) -> np.ndarray:
    """float32 [H, W] 1 - the contrast-structure term of SSIM between the luminances (0-255), local
    moments in a Gaussian window of sigma px: 0 where the local patterns agree, ~1 where a texture of
    the same mean colour was replaced by another (uncorrelated) one, 2 where it was inverted. Noise of
    a few levels stays near 0 (the constant (0.03 * 255)^2 outweighs its variance)."""
    from scipy import ndimage

    x, y = _grey(source) * 255.0, _grey(target) * 255.0

    def local(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(a, sigma)

    mx, my = local(x), local(y)
    vx = np.maximum(local(x * x) - mx * mx, 0)
    vy = np.maximum(local(y * y) - my * my, 0)
    cov = local(x * y) - mx * my
    c2 = (0.03 * 255.0) ** 2
    return (1.0 - (2 * cov + c2) / (vx + vy + c2)).astype(np.float32)


def change_score(source: np.ndarray, target: np.ndarray, cfg: MaskConfig) -> np.ndarray:
    """float32 [H, W] how much each pixel changed, in delta E units: the colour difference, or the
    structure difference scaled so that structure_floor scores min_delta_e, whichever is larger.

    The structure term of a pixel counts in full only where the pixel itself changed (its luminance by
    8 levels or more, Gaussian-averaged over blur_sigma): beside a recoloured outline the SSIM window
    sees the changed edge, but the unchanged pixels there must stay out of the mask."""
    from scipy import ndimage

    score = colour_difference(source, target, cfg.blur_sigma)
    if cfg.structure_sigma > 0:
        moved = np.abs(_grey(source) - _grey(target)) * 255.0
        if cfg.blur_sigma > 0:
            moved = ndimage.gaussian_filter(moved, cfg.blur_sigma)
        structure = structure_difference(source, target, cfg.structure_sigma) * np.minimum(
            moved / cfg.structure_min_change, 1.0
        )
        score = np.maximum(score, structure * (cfg.min_delta_e / cfg.structure_floor))
    return score.astype(np.float32)


def grow_regions(score: np.ndarray, valid: np.ndarray, threshold: float, low: float) -> np.ndarray:
    """bool [H, W]: the 8-connected regions of score > low that contain a pixel above threshold
    (hysteresis: the weak side of an uneven change stays with its strong side)."""
    from skimage.filters import apply_hysteresis_threshold

    return apply_hysteresis_threshold(np.where(valid, score, 0), min(low, threshold), threshold) & valid


def refine_edges(mask: np.ndarray, score: np.ndarray, ratio: float, radius: int = 3) -> np.ndarray:
    """`mask` with pixels within `radius` px of its border dropped where the score is below `ratio` of
    the largest score within `radius` px: a blurred antialiased edge falls from the region's change to
    0, and its half-way point (ratio 0.5) is where the coverage is one half, whatever the change."""
    from scipy import ndimage

    if ratio <= 0 or not mask.any():
        return mask
    rim = mask & ~ndimage.binary_erosion(mask, structure=_disk(radius), border_value=1)
    peak = ndimage.maximum_filter(np.where(mask, score, 0), footprint=_disk(radius))
    return mask & ~(rim & (score < ratio * peak))


def _disk(radius: int) -> np.ndarray:
    from skimage.morphology import disk

    return disk(radius).astype(bool)


def open_close(mask: np.ndarray, open_radius: int, close_radius: int) -> np.ndarray:
    """Opening (removes specks) then closing (bridges cracks), disk footprints; radius 0 = skip."""
    from scipy import ndimage

    out = mask
    if open_radius > 0:
        out = ndimage.binary_opening(out, structure=_disk(open_radius))
    if close_radius > 0:
        # pad so that closing near the border does not eat into the mask (binary_closing treats
        # outside as background)
        pad = close_radius
        padded = np.pad(out, pad, mode="edge")
        out = ndimage.binary_closing(padded, structure=_disk(close_radius))[pad:-pad, pad:-pad]
    return out


def fill_holes(mask: np.ndarray, max_hole_px: int) -> np.ndarray:
    """Fill enclosed holes of at most max_hole_px pixels (larger holes are unedited objects, e.g. the
    shapes inside an edited background)."""
    from skimage.morphology import remove_small_holes

    if max_hole_px <= 0:
        return mask
    return remove_small_holes(mask, max_size=max_hole_px)


def drop_small_components(mask: np.ndarray, min_px: int) -> np.ndarray:
    """Remove 8-connected components of fewer than min_px pixels."""
    from skimage.morphology import remove_small_objects

    if min_px <= 1:
        return mask
    return remove_small_objects(mask, max_size=min_px - 1, connectivity=2)


def dilate(mask: np.ndarray, margin_px: int) -> np.ndarray:
    """Grow the mask by margin_px pixels (disk footprint)."""
    from scipy import ndimage

    if margin_px <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=_disk(margin_px))


def _shrink(image: np.ndarray, max_side: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def _grow(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    grown = Image.fromarray(mask.astype(np.uint8) * 255).resize(
        (shape[1], shape[0]), Image.Resampling.NEAREST
    )
    return np.asarray(grown) >= 128


def edit_mask(source: np.ndarray, target: np.ndarray, cfg: MaskConfig) -> MaskResult:
    """The edit mask of a pair: uint8 [H, W, 3] source and target -> MaskResult (mask bool [H, W])."""
    _check_pair(source, target)
    full_shape = source.shape[:2]
    scale = 1.0
    if max(full_shape) > cfg.max_side:
        scale = cfg.max_side / max(full_shape)
        source, target = _shrink(source, cfg.max_side), _shrink(target, cfg.max_side)
    h, w = source.shape[:2]
    valid = np.ones((h, w), dtype=bool)
    shift, applied = (0.0, 0.0), False
    if cfg.align:
        shift = check_shift(source, target, estimate_shift(source, target))
        length = math.hypot(*shift)
        if cfg.min_shift_px <= length <= cfg.max_shift_px:
            target, valid = apply_shift(target, shift)
            applied = True
    gain, offset = (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)
    if cfg.match_colour:
        target, gain, offset = match_gain_offset(source, target, valid, cfg.max_gain_shift, cfg.max_offset)
    score = change_score(source, target, cfg)
    threshold = adaptive_threshold(score, valid, cfg.min_delta_e)
    low = max(cfg.hysteresis_delta_e, cfg.hysteresis_ratio * threshold)
    mask = refine_edges(grow_regions(score, valid, threshold, low), score, cfg.edge_ratio)
    mask = open_close(mask, cfg.open_radius, cfg.close_radius)
    mask = fill_holes(mask, int(cfg.max_hole_fraction * h * w))
    mask = drop_small_components(mask, math.ceil(cfg.min_component_fraction * h * w))
    mask = dilate(mask, cfg.margin_px)
    if (h, w) != full_shape:
        mask = _grow(mask, full_shape)
        shift = (shift[0] / scale, shift[1] / scale)
    return MaskResult(mask, threshold, shift, applied, gain, offset)


def undo_global_change(target: np.ndarray, result: MaskResult) -> np.ndarray:
    """`target` uint8 [H, W, 3] with the translation, offset and gain that edit_mask found (and undid
    before differencing) undone at full resolution: the target as the mask sees it."""
    if result.shift_applied:
        target, _ = apply_shift(target, result.shift)
    if result.gain != (1.0, 1.0, 1.0) or result.offset != (0.0, 0.0, 0.0):
        undone = (target - np.asarray(result.offset)) / np.asarray(result.gain)
        target = np.clip(undone + 0.5, 0, 255).astype(np.uint8)
    return target


def box_mask(
    shape: tuple[int, int], boxes: Sequence[tuple[float, float, float, float]], margin_fraction: float = 0.0
) -> np.ndarray:
    """bool [H, W]: the union of boxes (x1, y1, x2, y2) in pixels, each grown on every side by
    margin_fraction of its own width / height and clipped to the image."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in boxes:
        if not (x2 > x1 and y2 > y1):
            raise ValueError(
                f"box {(x1, y1, x2, y2)} is empty; boxes are (x1, y1, x2, y2) with x2 > x1, y2 > y1"
            )
        mx, my = margin_fraction * (x2 - x1), margin_fraction * (y2 - y1)
        c0, c1 = max(0, math.floor(x1 - mx)), min(w, math.ceil(x2 + mx))
        r0, r1 = max(0, math.floor(y1 - my)), min(h, math.ceil(y2 + my))
        mask[r0:r1, c0:c1] = True
    return mask


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two bool masks of one shape (1.0 when both are empty)."""
    if a.shape != b.shape:
        raise ValueError(f"masks {a.shape} and {b.shape} differ in shape")
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)

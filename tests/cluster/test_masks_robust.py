"""Edit masks on hand-built hard cases that the masks before issue 26 got wrong: a texture change that
keeps the mean colour, an additive brightness offset, an uneven change, antialiased edges; and the
benchmark's data builder (cluster/curate/mask_cases.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from cocoedit.cluster.curate.mask_cases import DEGRADATIONS, blob, case_ids, degrade, held_out, mask_case
from cocoedit.cluster.curate.masks import (
    MaskConfig,
    apply_shift,
    check_shift,
    edit_mask,
    mask_iou,
    match_gain_offset,
    refine_edges,
    structure_difference,
    undo_global_change,
)

SIZE = 128


def _photo(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """A smooth textured image (no flat areas), uint8 [size, size, 3]."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size] / size
    base = np.stack([120 + 60 * np.sin(6 * xs + c) * np.cos(5 * ys - c) for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _disc(size: int, cy: float, cx: float, r: float, supersample: int = 8) -> np.ndarray:
    """float [size, size] antialiased coverage of a disc."""
    c = (np.arange(size * supersample) + 0.5) / supersample
    inside = (c[:, None] - cy) ** 2 + (c[None, :] - cx) ** 2 <= r * r
    return inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _stripes(size: int, period: float, angle: float) -> np.ndarray:
    ys, xs = np.mgrid[0:size, 0:size].astype(float)
    return np.sin((xs * math.cos(angle) + ys * math.sin(angle)) * 2 * math.pi / period)


def _grey_rgb(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.clip(values + 0.5, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


def test_same_mean_texture_change_is_found() -> None:
    """Horizontal stripes replaced by vertical ones of the same mean and contrast inside a square: the
    blurred colour difference alone (the old masks) found nothing."""
    source = _grey_rgb(128 + 40 * _stripes(SIZE, 3.0, 0.0))
    target = source.copy()
    target[40:90, 30:80] = _grey_rgb(128 + 40 * _stripes(SIZE, 3.0, math.pi / 2))[40:90, 30:80]
    truth = np.zeros((SIZE, SIZE), bool)
    truth[40:90, 30:80] = True
    assert abs(float(source.mean()) - float(target.mean())) < 1.0
    assert structure_difference(source, target, 1.5)[50:80, 40:70].min() > 0.5
    assert mask_iou(edit_mask(source, target, MaskConfig()).mask, truth) > 0.85


def test_additive_offset_is_undone() -> None:
    """The whole target 18 levels brighter, alone and plus a recoloured square: the offset is fitted
    and taken off, so only the square is masked, even with a low floor."""
    source = _photo(seed=5)
    target = np.clip(source.astype(float) + 18 + 0.5, 0, 255).astype(np.uint8)
    low = MaskConfig(min_delta_e=4.0, hysteresis_delta_e=2.5)
    assert not edit_mask(source, target, low).mask.any()  # the old masks covered 45% of this pair
    target[20:50, 60:100] = (240, 30, 200)
    truth = np.zeros((SIZE, SIZE), bool)
    truth[20:50, 60:100] = True
    result = edit_mask(source, target, low)
    assert result.offset == pytest.approx((18.0, 18.0, 18.0), abs=1.0)
    assert result.gain == pytest.approx((1.0, 1.0, 1.0), abs=0.01)
    assert mask_iou(result.mask, truth) > 0.95
    # the keep region of the target as the mask saw it is the source again
    undone = undo_global_change(target, result)
    assert np.abs(undone.astype(int) - source)[~truth].max() <= 1


def test_gain_and_offset_fit_survives_a_large_edit() -> None:
    source = _photo(seed=1)
    line = source.astype(float) * np.array([1.05, 0.96, 1.0]) + np.array([-10.0, 6.0, 12.0])
    target = np.clip(line + 0.5, 0, 255).astype(np.uint8)
    target[:45, :] = (30, 200, 30)  # a third of the image repainted
    _, gains, offsets = match_gain_offset(source, target, np.ones((SIZE, SIZE), bool), 0.08, 0.1)
    assert gains == pytest.approx((1.05, 0.96, 1.0), abs=0.01)
    assert offsets == pytest.approx((-10.0, 6.0, 12.0), abs=1.5)
    darker = (source.astype(float) * 0.6).astype(np.uint8)  # a new, darker image: an edit, not a shift
    _, gains, offsets = match_gain_offset(source, darker, np.ones((SIZE, SIZE), bool), 0.08, 0.1)
    assert gains == (1.0, 1.0, 1.0) and offsets == (0.0, 0.0, 0.0)


def test_uneven_change_stays_one_region() -> None:
    """A square whose left half is strongly recoloured (delta E ~60) and right half weakly (~14): Otsu's
    threshold falls between them and the old masks kept only the strong half."""
    source = _photo(seed=2)
    target = source.astype(float)
    target[30:90, 30:60] += (90, -60, -40)
    target[30:90, 60:90] += (22, -14, -10)
    target = np.clip(target + 0.5, 0, 255).astype(np.uint8)
    truth = np.zeros((SIZE, SIZE), bool)
    truth[30:90, 30:90] = True
    assert mask_iou(edit_mask(source, target, MaskConfig()).mask, truth) > 0.9


def test_antialiased_edges_fall_at_half_coverage() -> None:
    """Strong and weak changes of an antialiased disc: the rim is cut where the coverage is one half,
    whatever the strength (a fixed floor on the blurred difference cuts a weak edit's rim short)."""
    source = _photo(seed=3)
    alpha = _disc(SIZE, 60.3, 58.7, 22.4)
    truth = alpha >= 0.5
    for change in ((100, -70, -50), (25, -15, -10)):  # delta E ~60 and ~15 inside
        target = np.clip(source + np.array(change) * alpha[..., None] + 0.5, 0, 255).astype(np.uint8)
        mask = edit_mask(source, target, MaskConfig()).mask
        assert mask_iou(mask, truth) > 0.985, change  # the old masks: 0.995 and 0.978
    score = np.zeros((20, 20))
    score[5:15, 5:15] = 40.0
    score[5:15, 4] = score[5:15, 15] = 15.0  # a faint rim column on each side
    grown = np.zeros((20, 20), bool)
    grown[5:15, 4:16] = True
    assert np.array_equal(refine_edges(grown, score, 0.5), score >= 40.0)


def test_periodic_texture_shift_is_checked() -> None:
    """A 2 px checkerboard moved by 1 px: phase correlation's peaks repeat with the period; the checked
    shift is the whole pixel that makes the images agree."""
    ys, xs = np.mgrid[0:96, 0:96]
    source = _grey_rgb(np.where((ys // 2 + xs // 2) % 2, 170.0, 90.0))
    target = np.roll(source, 1, axis=1)
    assert check_shift(source, target, (0.2, 0.0)) == (0.0, -1.0)
    moved, valid = apply_shift(target, (0.0, -1.0))
    assert np.array_equal(moved[valid], source[valid])
    assert not edit_mask(source, target, MaskConfig()).mask.any()


def test_mask_cases_are_fixed_and_split_by_id() -> None:
    a = blob(np.random.default_rng(0), 64, (10, 12))
    assert 0 < ((a > 0) & (a < 1)).sum() < 0.5 * (a >= 0.5).sum()  # an antialiased rim, a solid inside
    ids = case_ids()
    assert len(set(ids)) == len(ids) == 136  # 64 photo edits, 24 hard cases, 48 unchanged
    share = np.mean([held_out(i) for i in ids])
    assert 0.2 < share < 0.45
    case = mask_case("chelsea-recolour-1")
    assert case.kind == "recolour" and case.id == "chelsea-recolour-1"
    assert case.truth.any() and case.source.shape == case.target.shape == (256, 256, 3)
    changed = np.abs(case.target.astype(int) - case.source).max(axis=-1) > 0
    assert not changed[~ndimage.binary_dilation(case.truth, iterations=2)].any()  # only the region moved
    with pytest.raises(ValueError, match="not an id"):
        mask_case("chelsea-recolour")
    for degradation in DEGRADATIONS:
        s1, t1 = degrade(case, degradation)
        s2, t2 = degrade(case, degradation)
        assert np.array_equal(t1, t2) and s1.dtype == t1.dtype == np.uint8
    with pytest.raises(ValueError, match="not one of"):
        degrade(case, "blur")

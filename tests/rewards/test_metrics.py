"""rewards/metrics.py: S_pix by hand values and float64 references, and the benchmark conventions
against scikit-image."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from cocoedit.rewards.metrics import (
    CONVENTIONS,
    masked_psnr_ssim,
    masked_psnr_ssim_reference,
    pixel_reward,
    uint8_to_unit,
)
from cocoedit.rewards.metrics_cv import ScoringStopped, pixel_reward_cv


def batch(rng: np.random.Generator, n: int, h: int, w: int, noise: float = 0.05):
    """edited, source [N,3,H,W] float32 in [0,1] (smooth-ish images + noise), masks [N,1,H,W] in {0,1}."""
    base = ndimage.gaussian_filter(rng.random((n, 3, h, w)), sigma=(0, 0, 2, 2))
    base = (base - base.min()) / (base.max() - base.min())
    source = base + 0.1 * rng.random((n, 3, h, w))
    edited = np.clip(source + noise * rng.standard_normal(source.shape), 0, 1)
    source = np.clip(source, 0, 1)
    masks = np.zeros((n, 1, h, w), np.float32)
    for i in range(n):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        masks[i, 0, y0 : y0 + rng.integers(3, h // 2 + 3), x0 : x0 + rng.integers(3, w // 2 + 3)] = 1
        edited[i][:, masks[i, 0] > 0] = rng.random((3, int(masks[i].sum())))
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return as_t(edited), as_t(source), as_t(masks)


def reference_s_pix(x: np.ndarray, y: np.ndarray, edit_mask: np.ndarray, compat: str) -> dict[str, float]:
    """Float64 transcription of docs/algorithm.md section 3 with scipy filters. x, y [3,H,W]; mask [H,W]."""
    keep = (edit_mask < 0.5).astype(np.float64)
    x, y = x.astype(np.float64), y.astype(np.float64)
    area = keep.sum()

    def gauss(a: np.ndarray) -> np.ndarray:  # zero padding: outside the image is "not kept"
        return ndimage.gaussian_filter(a, sigma=1.5, mode="constant", cval=0.0, truncate=3.5)

    if compat == "standard":
        mse = ((x - y) ** 2 * keep).sum() / (3 * area)
        weight = np.maximum(gauss(keep), 1e-8)
        denom = area
    else:
        mse = ((x - y) ** 2 * keep).sum() / (area + 1e-8)
        weight = ndimage.uniform_filter(keep, size=11, mode="constant", cval=0.0) * 121 + 1e-8
        denom = area + 1e-8
    maps = []
    for c in range(3):
        xm, ym = x[c] * keep, y[c] * keep
        mu_x, mu_y = gauss(xm) / weight, gauss(ym) / weight
        vx = gauss(xm * x[c]) / weight - mu_x**2
        vy = gauss(ym * y[c]) / weight - mu_y**2
        cxy = gauss(xm * y[c]) / weight - mu_x * mu_y
        c1, c2 = 0.01**2, 0.03**2
        maps.append(((2 * mu_x * mu_y + c1) * (2 * cxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (vx + vy + c2)))
    ssim = float(np.clip((np.mean(maps, axis=0) * keep).sum() / denom, 0, 1))
    psnr = 10 * math.log10(1 / max(mse, 1e-8))
    return {"mse": mse, "psnr": psnr, "ssim": ssim, "score": 0.35 * ssim + 0.65 * min(psnr / 40, 1)}


@pytest.mark.parametrize("compat", ["standard", "release"])
def test_s_pix_matches_float64_reference(compat: str) -> None:
    rng = np.random.default_rng(1)
    edited, source, masks = batch(rng, 4, 37, 29)
    out = pixel_reward(edited, source, masks, compat=compat)
    for i in range(4):
        ref = reference_s_pix(edited[i].numpy(), source[i].numpy(), masks[i, 0].numpy(), compat)
        assert out["psnr"][i].item() == pytest.approx(ref["psnr"], abs=1e-4)
        assert out["ssim"][i].item() == pytest.approx(ref["ssim"], abs=1e-5)
        assert out["mse"][i].item() == pytest.approx(ref["mse"], rel=1e-5)
        assert out["score"][i].item() == pytest.approx(ref["score"], abs=1e-5)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (4,) for k in ("score", "psnr", "ssim", "mse", "keep_fraction")
    }
    assert out["keep_fraction"].tolist() == pytest.approx((1 - masks.mean(dim=(1, 2, 3))).tolist())


def test_identical_images_score_one() -> None:
    edited, _, masks = batch(np.random.default_rng(2), 3, 24, 24)
    for compat in ("standard", "release"):
        out = pixel_reward(edited, edited.clone(), masks, compat=compat)
        assert out["psnr"].tolist() == pytest.approx([80.0] * 3)  # MSE floored at 1e-8
        assert out["ssim"].tolist() == pytest.approx([1.0] * 3, abs=1e-6)
        assert out["score"].tolist() == pytest.approx([1.0] * 3, abs=1e-6)


@pytest.mark.parametrize("d", [0.01, 0.05, 0.2])
def test_uniform_shift_psnr(d: float) -> None:
    rng = np.random.default_rng(3)
    source = torch.from_numpy(rng.uniform(0.3, 0.7, (2, 3, 20, 20)).astype(np.float32))
    masks = torch.zeros(2, 1, 20, 20)
    masks[0, :, :5] = 1
    out = pixel_reward(source + d, source, masks)
    assert out["psnr"].tolist() == pytest.approx([10 * math.log10(1 / d**2)] * 2, abs=1e-3)
    # a constant shift keeps structure: the SSIM loss is luminance only, (2 mu (mu+d) + C1)/(mu^2+(mu+d)^2+C1)
    assert out["ssim"].min().item() > 1 - d**2 / (2 * 0.3**2)


def test_all_edit_mask_gives_zero_and_all_keep_gives_full_image_metrics() -> None:
    edited, source, _ = batch(np.random.default_rng(4), 2, 26, 30)
    everything = torch.ones(2, 1, 26, 30)
    out = pixel_reward(edited, source, everything)
    assert out["score"].tolist() == [0.0, 0.0]
    assert out["keep_fraction"].tolist() == [0.0, 0.0]
    assert torch.isnan(out["psnr"]).all() and torch.isnan(out["ssim"]).all()

    nothing = torch.zeros(2, 1, 26, 30)
    out = pixel_reward(edited, source, nothing)
    full_mse = ((edited - source) ** 2).mean(dim=(1, 2, 3))
    assert out["mse"].tolist() == pytest.approx(full_mse.tolist(), rel=1e-5)
    assert out["psnr"].tolist() == pytest.approx((10 * torch.log10(1 / full_mse)).tolist(), abs=1e-4)
    # all-keep: the keep-only benchmark PSNR is the same number
    psnr_keep, _ = masked_psnr_ssim(edited, source, nothing, "keep-only")
    assert psnr_keep.tolist() == pytest.approx(out["psnr"].tolist(), abs=1e-4)
    # all-keep SSIM: normalised convolution over the whole image (windows at the border renormalised)
    ref = reference_s_pix(edited[0].numpy(), source[0].numpy(), np.zeros((26, 30)), "standard")
    assert out["ssim"][0].item() == pytest.approx(ref["ssim"], abs=1e-5)


def test_release_psnr_is_10log10_3_below_standard() -> None:
    edited, source, masks = batch(np.random.default_rng(5), 4, 32, 32)
    std = pixel_reward(edited, source, masks, compat="standard")
    rel = pixel_reward(edited, source, masks, compat="release")
    assert (std["psnr"] - rel["psnr"]).tolist() == pytest.approx([10 * math.log10(3)] * 4, abs=1e-4)
    assert (rel["mse"] / std["mse"]).tolist() == pytest.approx([3.0] * 4, rel=1e-5)
    # the release SSIM is a different statistic (box-count normalisation), not a rounding of the standard one
    assert (rel["ssim"] - std["ssim"]).abs().max().item() > 1e-3


def test_ssim_is_clipped_to_unit_interval() -> None:
    edited, source, masks = batch(np.random.default_rng(6), 2, 24, 24)
    out = pixel_reward(1 - source, source, masks)  # anti-correlated: raw SSIM < 0
    assert out["ssim"].tolist() == [0.0, 0.0]
    assert ((out["score"] >= 0) & (out["score"] <= 1)).all()


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_conventions_agree_with_scikit_image(convention: str) -> None:
    rng = np.random.default_rng(7)
    edited, source, masks = batch(rng, 5, 41, 33)
    psnr, ssim = masked_psnr_ssim(edited, source, masks, convention)
    assert psnr.shape == ssim.shape == (5,)
    for i in range(5):
        ref_psnr, ref_ssim = masked_psnr_ssim_reference(
            edited[i].permute(1, 2, 0).numpy(),
            source[i].permute(1, 2, 0).numpy(),
            masks[i, 0].numpy(),
            convention,
        )
        assert abs(psnr[i].item() - ref_psnr) < 1e-4
        assert abs(ssim[i].item() - ref_ssim) < 1e-4


def test_conventions_agree_on_uint8_images_and_differ_from_each_other() -> None:
    rng = np.random.default_rng(8)
    src = rng.integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
    out = np.clip(src.astype(int) + rng.integers(-12, 13, src.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((2, 48, 40), np.float32)
    mask[:, 10:30, 5:25] = 1
    e, s = uint8_to_unit(torch.from_numpy(out)), uint8_to_unit(torch.from_numpy(src))
    m = torch.from_numpy(mask)[:, None]
    results = {}
    for convention in CONVENTIONS:
        psnr, ssim = masked_psnr_ssim(e, s, m, convention)
        for i in range(2):
            ref = masked_psnr_ssim_reference(out[i], src[i], mask[i], convention)
            assert psnr[i].item() == pytest.approx(ref[0], abs=1e-4)
            assert ssim[i].item() == pytest.approx(ref[1], abs=1e-4)
        results[convention] = psnr
    # pie zeroes the edit region in both images: more matching pixels, higher PSNR
    assert (results["pie"] > results["keep-only"]).all()


def test_keep_only_is_nan_without_kept_pixels() -> None:
    edited, source, _ = batch(np.random.default_rng(9), 1, 16, 16)
    psnr, ssim = masked_psnr_ssim(edited, source, torch.ones(1, 1, 16, 16), "keep-only")
    assert math.isnan(psnr.item()) and math.isnan(ssim.item())
    ref = masked_psnr_ssim_reference(
        edited[0].permute(1, 2, 0).numpy(), source[0].permute(1, 2, 0).numpy(), np.ones((16, 16))
    )
    assert all(math.isnan(v) for v in ref)


def test_bad_inputs_raise_with_the_fix() -> None:
    edited, source, masks = batch(np.random.default_rng(10), 2, 16, 16)
    with pytest.raises(ValueError, match="same shape"):
        pixel_reward(edited, source[:, :, :8], masks)
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        pixel_reward(edited, source, masks[:, :, :8])
    with pytest.raises(ValueError, match="compat"):
        pixel_reward(edited, source, masks, compat="paper")
    with pytest.raises(ValueError, match="uint8_to_unit"):
        pixel_reward((edited * 255).to(torch.uint8), (source * 255).to(torch.uint8), masks)
    with pytest.raises(ValueError, match="convention"):
        masked_psnr_ssim(edited, source, masks, "psnr-everywhere")
    with pytest.raises(ValueError, match="smaller than the 11x11"):
        masked_psnr_ssim(edited[:, :, :8, :8], source[:, :, :8, :8], masks[:, :, :8, :8])
    with pytest.raises(ValueError, match="odd"):
        pixel_reward(edited, source, masks, window=10)


@pytest.mark.parametrize("band_pixels", [1, 29 * 4 * 3, 10**9])
def test_row_bands_do_not_change_the_result(monkeypatch, band_pixels: int) -> None:
    import cocoedit.rewards.metrics

    monkeypatch.setattr(cocoedit.rewards.metrics, "BAND_PIXELS", band_pixels)  # 1 row, 3 rows, one band
    edited, source, masks = batch(np.random.default_rng(11), 4, 37, 29)
    masks[0, :, :20] = 1  # bands with nothing kept are skipped
    for compat in ("standard", "release"):
        out = pixel_reward(edited, source, masks, compat=compat)
        for i in range(4):
            ref = reference_s_pix(edited[i].numpy(), source[i].numpy(), masks[i, 0].numpy(), compat)
            assert out["ssim"][i].item() == pytest.approx(ref["ssim"], abs=1e-5)


def uint8_batch(rng: np.random.Generator, n: int, h: int, w: int):
    """edited, source [N, H, W, 3] uint8 and edit masks [N, H, W] float32 in {0, 1} from batch()."""
    edited, source, masks = batch(rng, n, h, w)
    to_u8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # noqa: E731
    return to_u8(edited), to_u8(source), masks[:, 0].numpy()


@pytest.mark.parametrize("compat", ["standard", "release"])
@pytest.mark.parametrize("band_pixels", [1, 10**9])  # one band per 32 rows (halos cut), one band
def test_opencv_path_matches_float64_reference(monkeypatch, compat: str, band_pixels: int) -> None:
    import cocoedit.rewards.metrics_cv

    monkeypatch.setattr(cocoedit.rewards.metrics_cv, "CV_BAND_PIXELS", band_pixels)
    edited, source, masks = uint8_batch(np.random.default_rng(12), 4, 77, 29)
    masks[0, :40] = 1  # a band with nothing kept is skipped
    unit = lambda a: a.transpose(2, 0, 1).astype(np.float64) / 255  # noqa: E731
    torch_out = pixel_reward(
        uint8_to_unit(torch.from_numpy(edited)),
        uint8_to_unit(torch.from_numpy(source)),
        torch.from_numpy(masks)[:, None],
        compat=compat,
    )
    for i in range(4):
        out = pixel_reward_cv(edited[i], source[i], masks[i], compat=compat)
        ref = reference_s_pix(unit(edited[i]), unit(source[i]), masks[i], compat)
        assert out["ssim"] == pytest.approx(ref["ssim"], abs=1e-5)
        assert out["score"] == pytest.approx(ref["score"], abs=1e-5)
        assert out["psnr"] == pytest.approx(ref["psnr"], abs=1e-4)
        assert out["mse"] == pytest.approx(ref["mse"], rel=1e-5)
        assert out["keep_fraction"] == pytest.approx(1 - masks[i].mean())
        for k in ("score", "ssim", "mse", "psnr"):  # the torch path, to float32 rounding
            assert out[k] == pytest.approx(torch_out[k][i].item(), rel=1e-5, abs=1e-6)


def test_opencv_path_empty_keep_region_and_stop() -> None:
    edited, source, _ = uint8_batch(np.random.default_rng(13), 1, 16, 16)
    out = pixel_reward_cv(edited[0], source[0], np.ones((16, 16), np.float32))
    assert out["score"] == 0.0 and out["keep_fraction"] == 0.0
    assert all(math.isnan(out[k]) for k in ("psnr", "ssim", "mse"))
    stop = threading.Event()
    stop.set()
    with pytest.raises(ScoringStopped):
        pixel_reward_cv(edited[0], source[0], np.zeros((16, 16), np.float32), stop=stop)
    with pytest.raises(ValueError, match="uint8"):
        pixel_reward_cv(edited[0].astype(np.float32), source[0], np.zeros((16, 16)))


def test_release_score_is_not_negative_below_0_db() -> None:
    """Black vs white keep region: the release PSNR (channel-summed MSE = 3) is -4.8 dB; its share of
    S_pix is clipped at 0 as in standard mode, so S_pix = 0.35 SSIM (~0.017), not 0.35 SSIM - 0.078."""
    white = np.full((1, 32, 32, 3), 255, np.uint8)
    black = np.zeros_like(white)
    mask = np.zeros((1, 32, 32), np.float32)
    mask[:, 8:16, 8:16] = 1
    out = pixel_reward(
        uint8_to_unit(torch.from_numpy(black)),
        uint8_to_unit(torch.from_numpy(white)),
        torch.from_numpy(mask)[:, None],
        compat="release",
    )
    assert out["psnr"].item() == pytest.approx(-10 * math.log10(3), abs=1e-4)
    assert out["score"].item() == pytest.approx(0.35 * out["ssim"].item(), abs=1e-7)
    assert 0.01 < out["score"].item() < 0.03
    cv = pixel_reward_cv(black[0], white[0], mask[0], compat="release")
    assert cv["score"] == pytest.approx(out["score"].item(), abs=1e-6)
    standard = pixel_reward_cv(black[0], white[0], mask[0])
    assert standard["psnr"] == pytest.approx(0.0) and standard["score"] >= 0

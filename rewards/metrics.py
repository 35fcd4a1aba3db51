"""Masked image-consistency metrics: the pixel reward S_pix and the benchmark conventions.

Torch, batched, CPU or GPU. Shapes: images [N, C, H, W] float32 in [0, 1] (C = 3 for RGB),
edit masks [N, 1, H, W] with 1 = region to EDIT (the keep region is B = {edit_mask < 0.5}).
rewards/metrics_cv.py computes the same S_pix for one uint8 edit with OpenCV (no torch): the CPU
path of the pixel service (several times faster than torch there, see bench/pixel_service.py);
this module is the batched path for GPUs, the benchmark conventions and the reference.

Training reward (docs/algorithm.md section 3), `pixel_reward(...)`:
  - compat="standard": MSE over the pixels and channels of B; PSNR = 10 log10(1 / max(MSE, 1e-8));
    SSIM by normalised convolution restricted to B (Gaussian 11x11, sigma 1.5, zero padding, so pixels
    outside the image count as not kept), averaged over channels, then over B, clipped to [0, 1].
  - compat="release": the authors' released arithmetic: channel-SUMMED squared error over the keep
    area (PSNR 10 log10(C) dB lower), Gaussian window sums divided by the box COUNT of kept pixels in
    the window, +1e-8 in every denominator.
  - S_pix = 0.35 SSIM + 0.65 clip(PSNR / 40, 0, 1); an empty B gives S_pix = 0. (Release PSNR is below
    0 dB when the keep region is nearly inverted; the clip keeps S_pix in [0, 1] in both modes.)

Benchmark conventions (docs/algorithm.md section 6), `masked_psnr_ssim(..., convention=...)`:
  - "keep-only": PSNR over the kept pixels; scikit-image's SSIM map (Gaussian, sigma 1.5,
    population covariance, symmetric padding) averaged over channels, then over the kept pixels.
  - "pie": both images multiplied by the keep mask, then full-image PSNR and scikit-image's mean
    SSIM (the map cropped by the window radius), as PIE-Bench does.
  `masked_psnr_ssim_reference` computes the same with scikit-image on one image, as the yardstick.
PSNR everywhere floors the MSE at 1e-8 (80 dB) so identical images give a finite number.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cocoedit.rewards.metrics_cv import MSE_FLOOR, RELEASE_EPS, SSIM_C1, SSIM_C2, gaussian_taps

Compat = Literal["standard", "release"]
Convention = Literal["keep-only", "pie"]
CONVENTIONS: tuple[str, ...] = ("keep-only", "pie")
BAND_PIXELS = 2**15  # pixels (all images of a batch together) per row band of the SSIM pass


def gaussian_kernel1d(window: int, sigma: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised Gaussian taps [window] centred on window // 2 (float32)."""
    return torch.from_numpy(gaussian_taps(window, sigma).copy()).to(device)


def _check_batch(edited: torch.Tensor, source: torch.Tensor, edit_mask: torch.Tensor) -> None:
    if edited.ndim != 4 or edited.shape != source.shape:
        raise ValueError(
            f"edited {tuple(edited.shape)} and source {tuple(source.shape)} must both be [N, C, H, W] "
            "of the same shape"
        )
    n, _, h, w = edited.shape
    if edit_mask.shape != (n, 1, h, w):
        raise ValueError(f"edit_mask {tuple(edit_mask.shape)} must be [N, 1, H, W] = {(n, 1, h, w)}")
    if not (edited.is_floating_point() and source.is_floating_point()):
        raise ValueError(
            f"images must be float in [0, 1], got {edited.dtype} / {source.dtype}; use uint8_to_unit(...)"
        )


def uint8_to_unit(images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] or [N, C, H, W] uint8 -> [N, C, H, W] float32 in [0, 1] (channels-last if last dim <= 4)."""
    if images.dtype != torch.uint8:
        raise ValueError(f"uint8_to_unit expects uint8, got {images.dtype}")
    if images.ndim != 4:
        raise ValueError(f"uint8_to_unit expects a 4-d batch, got shape {tuple(images.shape)}")
    if images.shape[-1] <= 4 and images.shape[1] > 4:
        images = images.permute(0, 3, 1, 2)
    return images.float().div_(255.0).contiguous()


def _separable(x: torch.Tensor, taps: torch.Tensor, padding: int) -> torch.Tensor:
    """Depthwise separable filter. x [N, K, H, W]; taps [K, window] per channel; zero padding `padding`.

    Returns [N, K, H + 2p - window + 1, W + 2p - window + 1].
    """
    k, window = taps.shape
    # oneDNN's depthwise convolution is ~8x faster on channels-last input than on NCHW (measured).
    x = x.contiguous(memory_format=torch.channels_last)
    horizontal = taps.view(k, 1, 1, window)
    vertical = taps.view(k, 1, window, 1)
    x = F.conv2d(x, horizontal, padding=(0, padding), groups=k)
    return F.conv2d(x, vertical, padding=(padding, 0), groups=k)


def _ssim_map(
    mu_x: torch.Tensor,
    mu_y: torch.Tensor,
    e_xx: torch.Tensor,
    e_yy: torch.Tensor,
    e_xy: torch.Tensor,
) -> torch.Tensor:
    """SSIM map from local means and raw second moments (all the same shape; e_* are overwritten).

    ((2 mu_x mu_y + C1)(2 cov + C2)) / ((mu_x^2 + mu_y^2 + C1)(var_x + var_y + C2)), computed with
    in-place ops: the metric is memory-bound on CPU, every temporary costs a pass.
    """
    mu_xy = mu_x * mu_y
    mu_sq = mu_x.square().add_(mu_y.square())
    cov_term = e_xy.sub_(mu_xy).mul_(2).add_(SSIM_C2)
    var_term = e_xx.add_(e_yy).sub_(mu_sq).add_(SSIM_C2)
    numerator = mu_xy.mul_(2).add_(SSIM_C1).mul_(cov_term)
    return numerator.div_(mu_sq.add_(SSIM_C1).mul_(var_term))


def masked_mse(
    edited: torch.Tensor, source: torch.Tensor, keep: torch.Tensor, compat: Compat = "standard"
) -> torch.Tensor:
    """MSE over the keep region. edited/source [N, C, H, W], keep [N, 1, H, W] in {0, 1} -> [N].

    standard: sum over B and channels / (C |B|); release: the same sum / (|B| + 1e-8).
    Empty B gives NaN (the caller decides what an empty keep region means).
    """
    area = keep.sum(dim=(1, 2, 3))
    sq = ((edited - source) ** 2 * keep).sum(dim=(1, 2, 3))
    if compat == "standard":
        mse = sq / (area * edited.shape[1]).clamp_min(1)
    elif compat == "release":
        mse = sq / (area + RELEASE_EPS)
    else:
        raise ValueError(f"compat={compat!r} must be 'standard' or 'release'")
    return torch.where(area > 0, mse, torch.full_like(mse, float("nan")))


def psnr_from_mse(mse: torch.Tensor) -> torch.Tensor:
    """10 log10(1 / max(mse, 1e-8)) for images in [0, 1]; NaN stays NaN. Any shape."""
    return 10.0 * torch.log10(1.0 / mse.clamp_min(MSE_FLOOR))


def masked_ssim(
    edited: torch.Tensor,
    source: torch.Tensor,
    keep: torch.Tensor,
    compat: Compat = "standard",
    window: int = 11,
    sigma: float = 1.5,
) -> torch.Tensor:
    """SSIM on the keep region by normalised convolution; [N, C, H, W] x2, keep [N, 1, H, W] -> [N].

    All five moments and the mask go through one depthwise separable convolution.
    Clipped to [0, 1]; empty B gives NaN.
    """
    if compat not in ("standard", "release"):
        raise ValueError(f"compat={compat!r} must be 'standard' or 'release'")
    n, c, h, w = edited.shape
    pad = window // 2
    g = gaussian_kernel1d(window, sigma, edited.device).to(edited.dtype)
    taps = g.expand(5 * c + 1, window).clone()
    if compat == "release":
        taps[-1] = 1.0  # the window COUNT of kept pixels (a box sum), not the Gaussian mass
    # Bands of rows (+ a halo of `pad` rows each side) keep every temporary small: full-size
    # [N, 16, H, W] stacks were 2-3x slower on CPU (page faults on fresh memory, cache misses).
    # On GPU one band: no host syncs.
    rows = max(1, BAND_PIXELS // (n * w)) if edited.device.type == "cpu" else h
    total = torch.zeros(n, dtype=edited.dtype, device=edited.device)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        band_keep = keep[:, :, r0:r1]
        if not band_keep.any():
            continue
        a0, a1 = max(0, r0 - pad), min(h, r1 + pad)
        smap = _masked_ssim_rows(
            edited[:, :, a0:a1], source[:, :, a0:a1], keep[:, :, a0:a1], taps, pad, compat
        )
        total += (smap[:, :, r0 - a0 : r1 - a0] * band_keep).sum(dim=(1, 2, 3))
    area = keep.sum(dim=(1, 2, 3))
    denom = area + RELEASE_EPS if compat == "release" else area.clamp_min(1)
    ssim = (total / denom).clamp(0.0, 1.0)
    return torch.where(area > 0, ssim, torch.full_like(ssim, float("nan")))


def _masked_ssim_rows(
    edited: torch.Tensor,
    source: torch.Tensor,
    keep: torch.Tensor,
    taps: torch.Tensor,
    pad: int,
    compat: Compat,
) -> torch.Tensor:
    """Channel-mean SSIM map [N, 1, R, W] of rows [N, C, R, W] by normalised convolution, zero padding.

    Rows next to the edge of this slice see zeros: callers use rows at least `pad` from a cut edge.
    """
    c = edited.shape[1]
    # Channels-last throughout: oneDNN's depthwise conv wants it, and converting [N, 16, R, W] between
    # layouts cost more than the convolution itself (measured).
    x, y, k = edited.permute(0, 2, 3, 1), source.permute(0, 2, 3, 1), keep.permute(0, 2, 3, 1)  # [N, R, W, *]
    xm, ym = x * k, y * k
    stack = torch.cat([xm, ym, xm * x, ym * y, xm * y, k], dim=-1)  # [N, R, W, 5C+1]
    filtered = _separable(stack.permute(0, 3, 1, 2), taps, pad).permute(0, 2, 3, 1)  # [N, R, W, 5C+1]
    weight = filtered[..., -1:]
    if compat == "standard":
        weight = weight.clamp_min(1e-8)  # > 0.07 on every kept pixel; the clamp only guards the rest
    else:
        weight = weight + RELEASE_EPS
    moments = filtered[..., :-1] / weight
    mu_x, mu_y, e_xx, e_yy, e_xy = moments.split(c, dim=-1)
    return _ssim_map(mu_x, mu_y, e_xx, e_yy, e_xy).mean(dim=-1, keepdim=True).permute(0, 3, 1, 2)


@torch.inference_mode()
def pixel_reward(
    edited: torch.Tensor,
    source: torch.Tensor,
    edit_mask: torch.Tensor,
    compat: Compat = "standard",
    ssim_weight: float = 0.35,
    psnr_weight: float = 0.65,
    psnr_cap_db: float = 40.0,
    window: int = 11,
    sigma: float = 1.5,
) -> dict[str, torch.Tensor]:
    """S_pix and its parts for a batch; edited/source [N, C, H, W] in [0, 1], edit_mask [N, 1, H, W].

    Returns {"score", "psnr", "ssim", "mse", "keep_fraction"}, each [N] float32. For an empty keep
    region score = 0 and psnr/ssim/mse are NaN (undefined; the service omits them).
    """
    _check_batch(edited, source, edit_mask)
    keep = (edit_mask < 0.5).to(edited.dtype)
    mse = masked_mse(edited, source, keep, compat)
    psnr = psnr_from_mse(mse)
    ssim = masked_ssim(edited, source, keep, compat, window, sigma)
    score = ssim_weight * ssim + psnr_weight * (psnr / psnr_cap_db).clamp(0.0, 1.0)
    score = torch.where(keep.sum(dim=(1, 2, 3)) > 0, score, torch.zeros_like(score))
    return {
        "score": score,
        "psnr": psnr,
        "ssim": ssim,
        "mse": mse,
        "keep_fraction": keep.mean(dim=(1, 2, 3)),
    }


def _symmetric_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dims by `pad` with half-sample symmetric reflection (scipy's mode='reflect')."""
    x = torch.cat([x[..., :pad].flip(-1), x, x[..., -pad:].flip(-1)], dim=-1)
    return torch.cat([x[..., :pad, :].flip(-2), x, x[..., -pad:, :].flip(-2)], dim=-2)


def skimage_ssim_map(
    edited: torch.Tensor, source: torch.Tensor, window: int = 11, sigma: float = 1.5
) -> torch.Tensor:
    """scikit-image's Gaussian SSIM map (use_sample_covariance=False, data_range=1, mode 'reflect').

    edited/source [N, C, H, W] in [0, 1] -> [N, C, H, W]. Needs H, W >= window.
    """
    n, c, h, w = edited.shape
    if h < window or w < window:
        raise ValueError(f"images of {h}x{w} are smaller than the {window}x{window} SSIM window")
    pad = window // 2
    g = gaussian_kernel1d(window, sigma, edited.device).to(edited.dtype)
    stack = torch.cat([edited, source, edited * edited, source * source, edited * source], dim=1)
    filtered = _separable(_symmetric_pad(stack, pad), g.expand(5 * c, window).contiguous(), 0).contiguous()
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.split(c, dim=1)
    return _ssim_map(mu_x, mu_y, e_xx, e_yy, e_xy)


@torch.inference_mode()
def masked_psnr_ssim(
    edited: torch.Tensor,
    source: torch.Tensor,
    edit_mask: torch.Tensor,
    convention: Convention = "keep-only",
    window: int = 11,
    sigma: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Benchmark masked PSNR (dB) and SSIM, each [N]; inputs as for pixel_reward.

    keep-only: statistics over kept pixels (NaN when nothing is kept); pie: both images times the keep
    mask, then full-image metrics. Agrees with masked_psnr_ssim_reference (scikit-image).
    """
    _check_batch(edited, source, edit_mask)
    keep = (edit_mask < 0.5).to(edited.dtype)
    if convention == "keep-only":
        mse = masked_mse(edited, source, keep, "standard")
        smap = skimage_ssim_map(edited, source, window, sigma).mean(dim=1, keepdim=True)
        area = keep.sum(dim=(1, 2, 3))
        ssim = (smap * keep).sum(dim=(1, 2, 3)) / area.clamp_min(1)
        ssim = torch.where(area > 0, ssim, torch.full_like(ssim, float("nan")))
    elif convention == "pie":
        x, y = edited * keep, source * keep
        mse = ((x - y) ** 2).mean(dim=(1, 2, 3))
        pad = window // 2
        ssim = skimage_ssim_map(x, y, window, sigma)[..., pad:-pad, pad:-pad].mean(dim=(1, 2, 3))
    else:
        raise ValueError(f"convention={convention!r} must be one of {CONVENTIONS}")
    return psnr_from_mse(mse), ssim


def masked_psnr_ssim_reference(
    edited: np.ndarray,
    source: np.ndarray,
    edit_mask: np.ndarray,
    convention: Convention = "keep-only",
    sigma: float = 1.5,
) -> tuple[float, float]:
    """scikit-image reference of masked_psnr_ssim for ONE image (float64).

    edited/source [H, W, C] (uint8, or float in [0, 1]); edit_mask [H, W], 1 = edit.
    """
    from skimage.metrics import mean_squared_error, structural_similarity

    def unit(a: np.ndarray) -> np.ndarray:
        return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)

    x, y = unit(edited), unit(source)
    keep = np.asarray(edit_mask, dtype=np.float64) < 0.5
    opts = dict(
        data_range=1.0, gaussian_weights=True, sigma=sigma, use_sample_covariance=False, channel_axis=2
    )
    if convention == "keep-only":
        if not keep.any():
            return float("nan"), float("nan")
        mse = mean_squared_error(x[keep], y[keep])
        _, smap = structural_similarity(x, y, full=True, **opts)
        ssim = float(smap.mean(axis=2)[keep].mean())
    elif convention == "pie":
        xk, yk = x * keep[..., None], y * keep[..., None]
        mse = mean_squared_error(xk, yk)
        ssim = float(structural_similarity(xk, yk, **opts))
    else:
        raise ValueError(f"convention={convention!r} must be one of {CONVENTIONS}")
    return 10.0 * math.log10(1.0 / max(mse, MSE_FLOOR)), ssim

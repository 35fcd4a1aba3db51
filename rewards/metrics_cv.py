"""The pixel reward S_pix (rewards/metrics.py, docs/algorithm.md section 3) for one uint8 edit on CPU, with
OpenCV's separable filters on float32 row bands and numpy; no torch, so a CPU pixel service starts (and
exits) without loading it.

    values = pixel_reward_cv(edited, source, edit_mask, compat="standard")  # {"score": ..., "ssim": ...}

The batched torch path (metrics.pixel_reward) gives the same numbers to float32 rounding; it is the
one for GPUs. The constants both paths share live here.
"""

from __future__ import annotations

import functools
import math
import threading
from typing import Literal

import numpy as np

MSE_FLOOR = 1e-8
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
RELEASE_EPS = 1e-8  # the released scorer adds this to the keep area and the window counts
# ~32K pixels per float32 plane keep a band's 13 planes in L2; at least 32 rows so the halo rows
# every band filters again (window - 1) stay a small share of the work.
CV_BAND_PIXELS = 2**15
CV_MIN_BAND_ROWS = 32


class ScoringStopped(RuntimeError):
    """Scoring was stopped part-way (the service is shutting down or the call was cancelled)."""


@functools.lru_cache(maxsize=8)
def gaussian_taps(window: int, sigma: float) -> np.ndarray:
    """Normalised Gaussian taps [window] centred on window // 2 (float32, computed in float64; read-only)."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window} must be a positive odd number of pixels (default 11)")
    if sigma <= 0:
        raise ValueError(f"sigma={sigma} must be > 0 (default 1.5)")
    x = np.arange(window, dtype=np.float64) - window // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    taps = (g / g.sum()).astype(np.float32)
    taps.flags.writeable = False
    return taps


def pixel_reward_cv(
    edited: np.ndarray,
    source: np.ndarray,
    edit_mask: np.ndarray,
    compat: Literal["standard", "release"] = "standard",
    ssim_weight: float = 0.35,
    psnr_weight: float = 0.65,
    psnr_cap_db: float = 40.0,
    window: int = 11,
    sigma: float = 1.5,
    stop: threading.Event | None = None,
) -> dict[str, float]:
    """S_pix of ONE edit on CPU with OpenCV: the numbers of metrics.pixel_reward (float32 rounding apart).

    edited/source [H, W, C] uint8; edit_mask [H, W] (bool, uint8 or float), edit where >= 0.5.
    Returns {"score", "psnr", "ssim", "mse", "keep_fraction"} as floats (NaN psnr/ssim/mse and score 0
    for an empty keep region). The MSE is exact (integer squared differences summed in float64); SSIM
    runs on float32 row bands, single-threaded, releasing the GIL in every filter and array op, so
    threads scoring different edits scale. Raises ScoringStopped between bands once `stop` is set.
    """
    import cv2

    if compat not in ("standard", "release"):
        raise ValueError(f"compat={compat!r} must be 'standard' or 'release'")
    if edited.shape != source.shape or edited.ndim != 3 or edited.shape[:2] != edit_mask.shape:
        raise ValueError(
            f"edited {edited.shape} and source {source.shape} must both be [H, W, C] and edit_mask "
            f"{edit_mask.shape} [H, W]"
        )
    if edited.dtype != np.uint8 or source.dtype != np.uint8:
        raise ValueError(f"pixel_reward_cv expects uint8 images, got {edited.dtype} / {source.dtype}")
    h, w, c = edited.shape
    keep = np.less(edit_mask, 0.5)
    area = int(np.count_nonzero(keep))
    nan = float("nan")
    if area == 0:
        return {"score": 0.0, "psnr": nan, "ssim": nan, "mse": nan, "keep_fraction": 0.0}
    squared = cv2.norm(edited, source, cv2.NORM_L2SQR, mask=keep.view(np.uint8)) / 255.0**2
    mse = squared / (c * area) if compat == "standard" else squared / (area + RELEASE_EPS)
    psnr = 10.0 * math.log10(1.0 / max(mse, MSE_FLOOR))
    total = _masked_ssim_sum_cv(edited, source, keep, compat, window, sigma, stop)
    ssim = min(max(total / (area if compat == "standard" else area + RELEASE_EPS), 0.0), 1.0)
    score = ssim_weight * ssim + psnr_weight * min(max(psnr / psnr_cap_db, 0.0), 1.0)
    return {"score": score, "psnr": psnr, "ssim": ssim, "mse": mse, "keep_fraction": area / (h * w)}


def _masked_ssim_sum_cv(
    edited: np.ndarray,
    source: np.ndarray,
    keep: np.ndarray,
    compat: Literal["standard", "release"],
    window: int,
    sigma: float,
    stop: threading.Event | None,
) -> float:
    """Sum over kept pixels of the channel-mean SSIM map (masked_ssim's numerator), in float64.

    Row bands of `rows` rows plus `window // 2` halo rows each side: the halo gives the vertical pass
    the true neighbours, so only the image's own edges see zero padding (BORDER_CONSTANT).
    """
    import cv2

    h, w, c = edited.shape
    pad = window // 2
    g = gaussian_taps(window, sigma).reshape(window, 1)  # OpenCV's kernel layout: a column
    weight_taps = np.ones_like(g) if compat == "release" else g  # release: the box COUNT of kept pixels
    rows = max(CV_MIN_BAND_ROWS, CV_BAND_PIXELS // w)
    buf = np.empty((13, min(h, rows + 2 * pad), w), np.float32)
    keep_bytes = keep.view(np.uint8)
    scale = np.float32(255.0)
    border = cv2.BORDER_CONSTANT
    total = 0.0
    for r0 in range(0, h, rows):
        if stop is not None and stop.is_set():
            raise ScoringStopped("pixel scoring stopped (shutdown or cancelled call)")
        r1 = min(h, r0 + rows)
        if not keep_bytes[r0:r1].any():
            continue
        a0, a1 = max(0, r0 - pad), min(h, r1 + pad)
        n, own = a1 - a0, slice(r0 - a0, r1 - a0)
        k, x, y, xm, ym, xy, acc, inv, *moments = (b[:n] for b in buf)
        np.copyto(k, keep[a0:a1])
        cv2.sepFilter2D(k, -1, weight_taps, weight_taps, dst=inv, borderType=border)
        inv = inv[own]
        if compat == "standard":
            np.maximum(inv, 1e-8, out=inv)  # > 0.07 on every kept pixel; the clamp only guards the rest
        else:
            np.add(inv, RELEASE_EPS, out=inv)
        np.reciprocal(inv, out=inv)
        acc = acc[own]
        acc.fill(0.0)
        for ch in range(c):
            np.divide(edited[a0:a1, :, ch], scale, out=x)
            np.divide(source[a0:a1, :, ch], scale, out=y)
            np.multiply(x, k, out=xm)
            np.multiply(y, k, out=ym)
            np.multiply(xm, y, out=xy)
            np.multiply(xm, x, out=x)
            np.multiply(ym, y, out=y)
            for src, dst in zip((xm, ym, x, y, xy), moments, strict=True):
                cv2.sepFilter2D(src, -1, g, g, dst=dst, borderType=border)
            mu_x, mu_y, e_xx, e_yy, e_xy = (m[own] for m in moments)
            mu_xy = xm[own]
            np.multiply(mu_x, inv, out=mu_x)
            np.multiply(mu_y, inv, out=mu_y)
            np.multiply(mu_x, mu_y, out=mu_xy)
            np.multiply(mu_x, mu_x, out=mu_x)
            np.multiply(mu_y, mu_y, out=mu_y)
            mu_sq = np.add(mu_x, mu_y, out=mu_x)
            np.multiply(e_xy, inv, out=e_xy)
            cov_term = cv2.addWeighted(e_xy, 2.0, mu_xy, -2.0, SSIM_C2, dst=e_xy)
            np.add(e_xx, e_yy, out=e_xx)
            np.multiply(e_xx, inv, out=e_xx)
            var_term = cv2.addWeighted(e_xx, 1.0, mu_sq, -1.0, SSIM_C2, dst=e_xx)
            numerator = cv2.addWeighted(mu_xy, 2.0, mu_xy, 0.0, SSIM_C1, dst=mu_xy)
            np.multiply(numerator, cov_term, out=numerator)
            np.add(mu_sq, SSIM_C1, out=mu_sq)
            np.multiply(mu_sq, var_term, out=mu_sq)
            np.divide(numerator, mu_sq, out=numerator)
            np.add(acc, numerator, out=acc)
        np.multiply(acc, k[own], out=acc)
        total += float(acc.sum(dtype=np.float64))
    return total / c

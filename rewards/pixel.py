"""The pixel-consistency reward service: S_pix of rewards/metrics.py behind the Scorer interface.

    cocoedit serve pixel --port 50051 rewards.pixel.compat=release

One request at a time. On CPU (`PixelConfig.device=cpu`, the default) `PixelConfig.threads` threads
score edits in parallel, one edit each, with OpenCV's separable filters on float32 row bands
(`metrics_cv.pixel_reward_cv`; torch is not imported at all): single-threaded OpenCV and numpy
release the GIL, so threads scale, and the work per edit was ~4x below torch's (conv2d plus a dozen
full-size temporaries; see bench/pixel_service.py). On a GPU (`device=cuda`) edits are grouped by
size, stacked and scored in batched torch chunks (`metrics.pixel_reward`). Both give the same numbers
to float32 rounding.
A call that is cancelled, or a scorer that is closed, stops its work within one row band.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from typing import cast

import numpy as np

from cocoedit.rewards.base import DecodedEdit, EditOutcome, Scorer
from cocoedit.rewards.config import PixelConfig
from cocoedit.rewards.metrics_cv import ScoringStopped, pixel_reward_cv

# Pixels (all edits together) per batched torch call on a GPU: enough to amortise the launches.
CHUNK_PIXELS = 2 * 512 * 512


class PixelScorer(Scorer):
    service = "pixel"
    score_name = "pixel"
    needs_mask = True

    def __init__(self, cfg: PixelConfig) -> None:
        if cfg.compat not in ("standard", "release"):
            raise ValueError(f"rewards.pixel.compat={cfg.compat!r} must be 'standard' or 'release'")
        if cfg.psnr_cap_db <= 0:
            raise ValueError(f"rewards.pixel.psnr_cap_db={cfg.psnr_cap_db} must be > 0 (default 40)")
        self.cfg = cfg
        self.device_type = cfg.device.split(":")[0]
        if self.device_type not in ("cpu", "cuda"):
            raise ValueError(f"rewards.pixel.device={cfg.device!r} must be 'cpu' or 'cuda[:N]'")
        if self.device_type == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError(
                    f"rewards.pixel.device={cfg.device!r} but CUDA is not available; use device=cpu"
                )
        if cfg.threads < 0:
            raise ValueError(f"rewards.pixel.threads={cfg.threads} must be >= 0 (0 = one per core)")
        self.threads = 1 if self.device_type != "cpu" else (cfg.threads or os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None  # one request at a time
        self._edit_pool: ThreadPoolExecutor | None = None  # edits of a request in parallel (CPU)
        self._stops: set[threading.Event] = set()  # one per call in flight; close() sets them all
        self._stops_lock = threading.Lock()

    async def load(self) -> None:
        self.start_threads()

    def start_threads(self) -> None:
        """Create the scoring threads; on CPU also cv2.setNumThreads(1) (process-wide): the threads
        here are the parallelism, OpenCV's own pool on top of them only oversubscribes the cores."""
        if self._pool is not None:
            return
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixel-score")
        if self.device_type == "cpu":
            import cv2

            cv2.setNumThreads(1)
            if self.threads > 1:
                self._edit_pool = ThreadPoolExecutor(
                    max_workers=self.threads, thread_name_prefix="pixel-edit"
                )

    async def close(self) -> None:
        """Stop the calls in flight (within one row band) and join the scoring threads."""
        with self._stops_lock:
            for stop in self._stops:
                stop.set()
        for pool in (self._pool, self._edit_pool):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._edit_pool = None

    def settings(self) -> dict[str, str]:
        scoring = (
            "compat",
            "ssim_weight",
            "psnr_weight",
            "psnr_cap_db",
            "window",
            "sigma",
            "device",
            "threads",
        )
        s = {k: str(v) for k, v in asdict(self.cfg).items() if k in scoring}
        s["definition"] = (
            "standard: masked MSE/PSNR over keep pixels+channels, normalised-convolution SSIM"
            if self.cfg.compat == "standard"
            else "release: channel-summed MSE, SSIM window sums over the box count of kept pixels"
        )
        s["backend"] = "opencv, one edit per thread" if self.device_type == "cpu" else "torch, batched"
        return s

    async def score(self, edits: list[DecodedEdit]) -> list[EditOutcome]:
        self.start_threads()
        stop = threading.Event()
        with self._stops_lock:
            self._stops.add(stop)
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, self.score_sync, edits, stop)
        except asyncio.CancelledError:
            stop.set()  # the thread stops at its next row band instead of scoring for nobody
            raise
        finally:
            with self._stops_lock:
                self._stops.discard(stop)

    def score_sync(self, edits: list[DecodedEdit], stop: threading.Event | None = None) -> list[EditOutcome]:
        """Score decoded edits; one outcome per edit, in order. Edits run in parallel after
        start_threads(). Raises ScoringStopped once `stop` is set."""
        for e in edits:
            if e.edit_mask is None:
                raise ValueError(f"edit {e.edit_id!r} has no edit_mask; the pixel reward needs one")
        if self.device_type != "cpu":
            return self._score_batched(edits, stop)
        run = self._edit_pool.map if self._edit_pool is not None and len(edits) > 1 else map
        return list(run(lambda e: self._outcome(e, self._score_one(e, stop)), edits))

    def _score_one(self, edit: DecodedEdit, stop: threading.Event | None) -> dict[str, float]:
        assert edit.edit_mask is not None  # score_sync refused edits without one
        return pixel_reward_cv(
            edit.edited_image,
            edit.source_image,
            edit.edit_mask,
            compat=self.cfg.compat,
            ssim_weight=self.cfg.ssim_weight,
            psnr_weight=self.cfg.psnr_weight,
            psnr_cap_db=self.cfg.psnr_cap_db,
            window=self.cfg.window,
            sigma=self.cfg.sigma,
            stop=stop,
        )

    def _score_batched(self, edits: list[DecodedEdit], stop: threading.Event | None) -> list[EditOutcome]:
        """GPU path: edits grouped by size, stacked, scored in chunks of CHUNK_PIXELS with torch."""
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, e in enumerate(edits):
            by_size[e.source_image.shape[:2]].append(i)
        outcomes: list[EditOutcome | None] = [None] * len(edits)
        for (h, w), indices in by_size.items():
            chunk = max(1, CHUNK_PIXELS // (h * w))
            for start in range(0, len(indices), chunk):
                if stop is not None and stop.is_set():
                    raise ScoringStopped("pixel scoring stopped (shutdown or cancelled call)")
                part = indices[start : start + chunk]
                values = self._score_stack([edits[i] for i in part])
                for j, i in enumerate(part):
                    outcomes[i] = self._outcome(edits[i], {k: float(v[j]) for k, v in values.items()})
        return outcomes  # type: ignore[return-value]

    def _score_stack(self, edits: list[DecodedEdit]) -> dict[str, np.ndarray]:
        import torch

        from cocoedit.rewards.metrics import pixel_reward

        device = torch.device(self.cfg.device)
        edited = torch.from_numpy(np.stack([e.edited_image for e in edits])).to(device)
        source = torch.from_numpy(np.stack([e.source_image for e in edits])).to(device)
        # score_sync refused edits without a mask
        mask = torch.from_numpy(np.stack([cast(np.ndarray, e.edit_mask) for e in edits])).to(device)
        with torch.inference_mode():
            values = pixel_reward(
                edited.permute(0, 3, 1, 2).float().div_(255.0),
                source.permute(0, 3, 1, 2).float().div_(255.0),
                mask[:, None].float(),
                compat=self.cfg.compat,
                ssim_weight=self.cfg.ssim_weight,
                psnr_weight=self.cfg.psnr_weight,
                psnr_cap_db=self.cfg.psnr_cap_db,
                window=self.cfg.window,
                sigma=self.cfg.sigma,
            )
        return {k: v.double().cpu().numpy() for k, v in values.items()}

    def _outcome(self, edit: DecodedEdit, v: dict[str, float]) -> EditOutcome:
        warnings = list(edit.warnings)
        if v["keep_fraction"] == 0.0:
            warnings.append("edit_mask covers the whole image: no keep region, so S_pix = 0 by definition")
            return EditOutcome(edit.edit_id, score=0.0, components={"keep_fraction": 0.0}, warnings=warnings)
        components = {name: v[name] for name in ("psnr", "ssim", "mse", "keep_fraction")}
        bad = [name for name, x in {"score": v["score"], **components}.items() if not math.isfinite(x)]
        if bad:
            return EditOutcome(edit.edit_id, error=f"pixel metrics not finite ({bad}); inputs: {components}")
        return EditOutcome(edit.edit_id, score=v["score"], components=components, warnings=warnings)

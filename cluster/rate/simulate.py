"""Raters in code that rate through the HTTP API exactly as the page does (GET next, images, POST answer).

    cocoedit rate simulate STUDY --url http://127.0.0.1:8765 [--raters 5] [--careless 1] [--oracle oracle]

They see what a person sees: the item, the instruction, the criterion and the three images, no system
names. What they decide with:
- `Oracle`: the exact truth of a task with known targets and masks (the synthetic task, actors/synth.py):
  instruction = mean squared error to the target inside the edit mask, consistency = to the source
  outside it, overall = to the target over the whole image (the target is the source outside the mask);
  lower wins, relative differences under `tie_rel` are ties.
- `NoisyRater`: a person modelled on the oracle (Thurstone): the log-ratio of the two errors plus
  Gaussian noise of `sigma`, a tie inside +-`tie_band`.
- `random_choice`: a careless rater (uniform left / right / tie), whom the exclusion rule should catch.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

# (task, left PNG bytes, right PNG bytes, source PNG bytes) -> "left" | "right" | "tie"
Chooser = Callable[[dict[str, Any], bytes, bytes, bytes], str]


def _request(url: str, token: str, body: Optional[dict] = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"X-Rater-Token": token, "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def rate_over_http(
    base_url: str, token: str, choose: Chooser, max_answers: Optional[int] = None
) -> list[dict]:
    """Answer the rater's queue (or `max_answers` of it); the acknowledged answers {pos, task_id, choice}."""
    acked: list[dict] = []
    while max_answers is None or len(acked) < max_answers:
        status, body = _request(f"{base_url}/api/next", token)
        if status != 200:
            raise RuntimeError(f"GET /api/next: {status} {body[:200]!r}")
        task = json.loads(body)
        if task["done"]:
            break
        shown = time.monotonic()
        imgs = {w: _request(base_url + task["images"][w], token)[1] for w in ("left", "right", "source")}
        choice = choose(task, imgs["left"], imgs["right"], imgs["source"])
        msg = {"pos": task["pos"], "task_id": task["task_id"], "choice": choice,
               "time_ms": int((time.monotonic() - shown) * 1000)}  # fmt: skip
        status, body = _request(f"{base_url}/api/answer", token, msg)
        if status != 200:
            raise RuntimeError(f"POST /api/answer: {status} {body[:200]!r}")
        acked.append(msg)
    return acked


def _decode(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


class Oracle:
    """Exact errors of an edit per criterion, from the items' targets and masks."""

    def __init__(self, design: dict[str, Any], study: Path, tie_rel: float = 0.02) -> None:
        from cocoedit.cluster.eval.benchmarks import load_benchmark

        cfg = design.get("eval_config") or {}
        items = load_benchmark(design["bench"], design["data"], Path(study), cfg.get("image_size", 512),
                               cfg.get("mask_polarity"), cfg.get("language", "en"))  # fmt: skip
        self.items = {}
        for i in items:
            if i.target_image is None:
                raise ValueError(
                    f"item {i.item_id} has no target: the oracle rater needs targets (synthetic data)"
                )
            self.items[i.item_id] = (
                i.target_image.permute(1, 2, 0).numpy() / 255.0,
                i.edit_mask[0].numpy() >= 0.5,
            )
        self.tie_rel = tie_rel

    def error(self, item: str, criterion: str, image: np.ndarray, source: np.ndarray) -> float:
        target, mask = self.items[item]
        if criterion == "instruction":
            return float(((image - target) ** 2)[mask].mean())
        if criterion == "consistency":
            return float(((image - source) ** 2)[~mask].mean()) if (~mask).any() else 0.0
        return float(((image - target) ** 2).mean())

    def errors(self, task: dict[str, Any], left: bytes, right: bytes, source: bytes) -> tuple[float, float]:
        src = _decode(source)
        return (self.error(task["item"], task["criterion"], _decode(left), src),
                self.error(task["item"], task["criterion"], _decode(right), src))  # fmt: skip

    def __call__(self, task: dict[str, Any], left: bytes, right: bytes, source: bytes) -> str:
        el, er = self.errors(task, left, right, source)
        if abs(el - er) <= self.tie_rel * max(el, er, 1e-12):
            return "tie"
        return "left" if el < er else "right"


class NoisyRater:
    def __init__(self, oracle: Oracle, sigma: float, tie_band: float, seed: int) -> None:
        self.oracle, self.sigma, self.tie_band = oracle, sigma, tie_band
        self.rng = random.Random(seed)

    def __call__(self, task: dict[str, Any], left: bytes, right: bytes, source: bytes) -> str:
        el, er = self.oracle.errors(task, left, right, source)
        d = np.log(er + 1e-4) - np.log(el + 1e-4) + self.rng.gauss(0.0, self.sigma)  # > 0: left looks better
        return "tie" if abs(d) < self.tie_band else ("left" if d > 0 else "right")


def random_choice(seed: int) -> Chooser:
    rng = random.Random(seed)
    return lambda task, left, right, source: rng.choice(["left", "right", "tie"])


def cli_simulate(args: argparse.Namespace) -> int:
    """`cocoedit rate simulate STUDY --url URL`: simulated raters (and an oracle) rate a running study."""
    from cocoedit.cluster.rate.design import load_design
    from cocoedit.cluster.rate.store import DB_FILE, Store

    study = Path(args.study)
    design = load_design(study)
    try:
        oracle = Oracle(design, study)
    except (ValueError, FileNotFoundError) as e:
        print(f"rate simulate: {e}", file=sys.stderr)
        return 1
    store = Store(study / DB_FILE)
    raters: list[tuple[str, Chooser]] = []
    if args.oracle:
        raters.append((args.oracle, oracle))
    for k in range(args.raters):
        sigma = 0.5 + 1.5 * k / max(1, args.raters - 1)  # from careful to sloppy
        raters.append((f"sim{k}", NoisyRater(oracle, sigma=sigma, tie_band=0.25, seed=args.seed * 100 + k)))
    for k in range(args.careless):
        raters.append((f"careless{k}", random_choice(args.seed * 100 + 50 + k)))
    for name, choose in raters:
        acked = rate_over_http(args.url.rstrip("/"), store.add_rater(name), choose)
        print(f"{name}: {len(acked)} answers")
    return 0

"""Edit masks on data nobody tuned to: photographs and hard cases (cluster/curate/mask_cases.py), per degradation.

    .venv/bin/python bench/masks.py [--part tuning|held-out|both] [--methods baseline,previous,current]
                                    [--json OUT.json]

For each method and part (`held_out(id)`: a third of the items by id hash, never looked at while
tuning), per degradation (none, jpeg, noise, shift, gain, offset): mean IoU with its 95% interval and
worst IoU over the edited pairs, and the false positives on the unchanged pairs (the share with a
non-empty mask, and their mean mask area). Then the mean IoU per edit kind, over all degradations.
Methods:
  baseline   a fixed threshold: any channel differs by more than 24 levels (no alignment, no cleaning)
  previous   the masks before issue 26: gain-only colour match, delta E, Otsu threshold, morphology
  current    `edit_mask` with the default MaskConfig
About 2 min per method on one loaded CPU.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cocoedit.cluster.curate.mask_cases import DEGRADATIONS, MaskCase, degrade, held_out, mask_cases  # noqa: E402
from cocoedit.cluster.curate.masks import (  # noqa: E402
    MaskConfig,
    adaptive_threshold,
    apply_shift,
    colour_difference,
    drop_small_components,
    edit_mask,
    estimate_shift,
    fill_holes,
    mask_iou,
    match_colour,
    open_close,
)

Method = Callable[[np.ndarray, np.ndarray], np.ndarray]


def baseline(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """bool [H, W]: any channel differs by more than 24 levels."""
    return (np.abs(source.astype(np.int16) - target).max(axis=-1) > 24).astype(bool)


def previous(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """bool [H, W]: edit_mask as it was before issue 26 (its default thresholds), from the same steps."""
    cfg = MaskConfig()
    h, w = source.shape[:2]
    valid = np.ones((h, w), dtype=bool)
    shift = estimate_shift(source, target)
    if cfg.min_shift_px <= math.hypot(*shift) <= cfg.max_shift_px:
        target, valid = apply_shift(target, shift)
    target, _ = match_colour(source, target, valid, cfg.max_gain_shift)
    diff = colour_difference(source, target, cfg.blur_sigma)
    mask = (diff > adaptive_threshold(diff, valid, cfg.min_delta_e)) & valid
    mask = open_close(mask, cfg.open_radius, cfg.close_radius)
    mask = fill_holes(mask, int(cfg.max_hole_fraction * h * w))
    return drop_small_components(mask, math.ceil(cfg.min_component_fraction * h * w))


def current(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    return edit_mask(source, target, MaskConfig()).mask


METHODS: dict[str, Method] = {"baseline": baseline, "previous": previous, "current": current}


def _mean_ci(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    half = 1.96 * a.std(ddof=1) / math.sqrt(len(a)) if len(a) > 1 else float("nan")
    return float(a.mean()), float(half)


def measure(method: Method, cases: list[MaskCase]) -> dict[str, dict]:
    """{degradation: {"iou": [per edited case], "kinds": [...], "fp_area": [per unchanged case]}}."""
    out: dict[str, dict] = {}
    for degradation in DEGRADATIONS:
        row: dict[str, list] = {"iou": [], "kinds": [], "ids": [], "fp_area": []}
        for case in cases:
            mask = method(*degrade(case, degradation))
            if case.kind == "unchanged":
                row["fp_area"].append(float(mask.mean()))
            else:
                row["iou"].append(mask_iou(mask, case.truth))
                row["kinds"].append(case.kind)
                row["ids"].append(case.id)
        out[degradation] = row
    return out


def report(name: str, part: str, result: dict[str, dict], seconds: float) -> None:
    first = result[DEGRADATIONS[0]]
    edited, unchanged = len(first["iou"]), len(first["fp_area"])
    print(f"\n{name} on the {part} part: {edited} edited + {unchanged} unchanged pairs x 6 ({seconds:.0f} s)")
    print("| degradation | mean IoU (95% CI) | worst IoU (item) | false positives | FP mask area |")
    print("|---|---|---|---|---|")
    for degradation, row in result.items():
        mean, half = _mean_ci(row["iou"])
        worst = int(np.argmin(row["iou"]))
        fp = np.asarray(row["fp_area"])
        print(
            f"| {degradation} | {mean:.3f} +- {half:.3f} | {row['iou'][worst]:.3f} ({row['ids'][worst]}) "
            f"| {int((fp > 0).sum())}/{len(fp)} | {fp.mean():.4f} |"
        )
    kinds = sorted(set(first["kinds"]))
    cells = []
    for kind in kinds:
        values = [
            v for row in result.values() for v, k in zip(row["iou"], row["kinds"], strict=True) if k == kind
        ]
        cells.append(f"{kind} {np.mean(values):.3f} (min {np.min(values):.2f}, n={len(values)})")
    print("mean IoU per kind over all degradations: " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("tuning", "held-out", "both"), default="held-out")
    parser.add_argument("--methods", default="baseline,previous,current")
    parser.add_argument("--json", type=Path, default=None, help="write every IoU and FP area here")
    args = parser.parse_args()
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {sorted(METHODS)}")
    cases = mask_cases()
    parts = ("tuning", "held-out") if args.part == "both" else (args.part,)
    dump: dict[str, dict] = {}
    for part in parts:
        chosen = [c for c in cases if held_out(c.id) == (part == "held-out")]
        for name in names:
            start = time.perf_counter()
            result = measure(METHODS[name], chosen)
            report(name, part, result, time.perf_counter() - start)
            dump[f"{part}/{name}"] = result
    if args.json:
        args.json.write_text(json.dumps(dump))


if __name__ == "__main__":
    main()

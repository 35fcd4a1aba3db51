"""The curation filters: the per-item checks in the order they are applied, and the balanced sample."""

from __future__ import annotations

import logging
from collections import Counter
from typing import TYPE_CHECKING, Any, Optional

from cocoedit.cluster.curate.config import CurateConfig, FilterConfig

if TYPE_CHECKING:
    pass

log = logging.getLogger("cocoedit.curate")

FILTERS = (
    "readable",
    "mask_area",
    "keep_consistency",
    "judge",
    "unique_id",
    "exact_duplicate",
    "near_duplicate",
    "balance",
)
FILTER_TEXT = {
    "readable": "images decode and a mask was found",
    "mask_area": "mask area fraction within [min_area, max_area]",
    "keep_consistency": "keep-region PSNR and SSIM of the target vs the source above thresholds",
    "judge": "judge score of the target vs the (refined) instruction above a threshold",
    "unique_id": "first item with its id",
    "exact_duplicate": "not a pixel-identical copy of an earlier item",
    "near_duplicate": "not a perceptual-hash near copy of an earlier item",
    "balance": "in the sample balanced over edit types",
}


def passes_cheap(rec: dict[str, Any], filters: FilterConfig) -> bool:
    """Readable, mask area and keep consistency: the filters decided before any MLLM call."""
    return first_failure(rec, filters, judged=False) is None


def first_failure(rec: dict[str, Any], filters: FilterConfig, judged: bool) -> Optional[str]:
    """The first per-item filter `rec` fails (FILTERS order), or None; `judged` includes the judge."""
    if rec.get("error"):
        return "readable"
    area = rec.get("area")
    # an empty mask is never an item to train on, whatever min_area says
    if area is not None and (area == 0.0 or not filters.min_area <= area <= filters.max_area):
        return "mask_area"
    if rec.get("psnr") is not None:
        psnr_ok = rec["psnr"] >= filters.min_keep_psnr_db
        if not (psnr_ok and rec["ssim"] is not None and rec["ssim"] >= filters.min_keep_ssim):
            return "keep_consistency"
    if judged and rec.get("judged"):
        if rec.get("judge_score") is None or rec["judge_score"] < filters.min_judge_score:
            return "judge"
    return None


def select(records: list[dict[str, Any]], cfg: CurateConfig, num: Optional[int]) -> dict[str, Any]:
    """Apply the filters in FILTERS order. Sets rec["rejected_by"] (None = kept) and, for duplicates,
    rec["duplicate_of"]; returns the funnel {filter: {"reached", "passed"}} and the kept ids in order."""
    from cocoedit.cluster.curate.dedup import DedupKey, balanced_sample, duplicates

    alive = []
    for rec in records:
        rec["rejected_by"] = first_failure(rec, cfg.filters, judged=True)
        if rec["rejected_by"] is None:
            alive.append(rec)
    seen: set[str] = set()
    for rec in alive:
        if rec["id"] in seen:
            rec["rejected_by"] = "unique_id"
        seen.add(rec["id"])
    alive = [r for r in alive if r["rejected_by"] is None]
    dupes = duplicates(
        [
            DedupKey(r["id"], r["digest"], tuple(r["hashes"]), "" if r["target"] else r["instruction"])
            for r in alive
        ],
        cfg.filters.near_duplicate_bits,
    )
    for rec in alive:
        if rec["id"] in dupes:
            kind, first = dupes[rec["id"]]
            rec["rejected_by"] = f"{kind}_duplicate"
            rec["duplicate_of"] = first
    alive = [r for r in alive if r["rejected_by"] is None]
    groups: dict[str, list[str]] = {}
    for rec in alive:
        groups.setdefault(edit_type(rec), []).append(rec["id"])
    chosen = balanced_sample(groups, num if num is not None else len(alive), cfg.seed)
    keep = set(chosen)
    for rec in alive:
        if rec["id"] not in keep:
            rec["rejected_by"] = "balance"
    rejected = Counter(r["rejected_by"] for r in records)
    order = {name: k for k, name in enumerate(FILTERS)}
    funnel, reached = {}, len(records)
    for k, name in enumerate(FILTERS):
        passed = reached - rejected.get(name, 0)
        # items the filter looked at: a filter that was off (no judge) or had nothing to compare (no
        # target) checked none, and its pass rate is n/a rather than 100 %
        checked = sum(
            1
            for r in records
            if (r["rejected_by"] is None or order[r["rejected_by"]] >= k) and _checks(name, r)
        )
        rate = (checked - rejected.get(name, 0)) / checked if checked else None
        funnel[name] = {
            "keeps": FILTER_TEXT[name],
            "reached": reached,
            "checked": checked,
            "passed": passed,
            "rate": rate,
        }
        reached = passed
    return {"funnel": funnel, "kept": chosen}


def _checks(name: str, rec: dict[str, Any]) -> bool:
    """Whether filter `name` examined `rec` (first_failure skips what an item lacks)."""
    if name == "mask_area":
        return rec.get("area") is not None
    if name == "keep_consistency":
        return rec.get("psnr") is not None
    if name == "judge":
        return bool(rec.get("judged"))
    return True


def edit_type(rec: dict[str, Any]) -> str:
    """The edit type an item is balanced by: the dataset's task, else the refinement's type."""
    if rec.get("task"):
        return rec["task"]
    refined = rec.get("refined")
    return refined["type"] if refined else "unknown"


def final_instruction(rec: dict[str, Any]) -> str:
    refined = rec.get("refined")
    return refined["instruction"] if refined else rec["instruction"]

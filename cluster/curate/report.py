"""The HTML report of a curation run (`cocoedit data curate`): OUT/report.html, self-contained.

Sections: the run (inputs, layout, settings); the filter funnel (reached, passed, pass rate of each
filter in order); items per edit type in and kept; histograms of mask area, keep-region PSNR and judge
score; refinement, grounding and judge outcomes with every parse failure listed (id, error, answer);
a gallery of kept and of rejected items (source | target | mask overlay, instruction before and after
refinement, numbers, why it was dropped). Images are inline thumbnails (data URIs). The page is
rendered from cluster/templates/curate_report.html (Jinja2, autoescaped).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cocoedit.cluster.eval.report import bar_chart, mask_overlay, png_uri

THUMB = 160  # px, longer side of gallery images
# text columns read left to right, and unbroken answers ("0000...") wrap instead of widening the page
_EXTRA_CSS = (
    "table.fail td,table.funnel td:nth-child(2){text-align:left}"
    "table.fail td{word-break:break-all;max-width:480px;font-size:12px}"
)


def histogram(values: Sequence[float], low: float, high: float, bins: int = 10) -> dict[str, Optional[float]]:
    """{"a-b": count} of `values` over [low, high] in `bins` equal bins (values outside are clipped)."""
    counts, edges = np.histogram(
        np.clip(np.asarray(values, dtype=np.float64), low, high), bins=bins, range=(low, high)
    )
    return {f"{edges[i]:.3g}-{edges[i + 1]:.3g}": float(c) for i, c in enumerate(counts)}


def _thumb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as opened:
        img = opened.convert("RGB")
        img.thumbnail((THUMB, THUMB), Image.Resampling.BICUBIC)
        return np.asarray(img).copy()


def _overlay(source: Path, mask: Path) -> np.ndarray:
    from PIL import Image

    thumb = _thumb(source)
    with Image.open(mask) as m:
        small = m.convert("L").resize((thumb.shape[1], thumb.shape[0]), Image.Resampling.NEAREST)
    edit = torch.from_numpy((np.asarray(small) >= 128).astype(np.float32))[None]
    return mask_overlay(torch.from_numpy(thumb).permute(2, 0, 1), edit)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _rate(f: dict[str, Any]) -> str:
    """Pass rate over the items the filter checked; "off" when it checked none of those it reached."""
    if f["rate"] is not None:
        return f"{f['rate']:.1%}"
    return "off (checked none)" if f["reached"] else "n/a"


def _gallery_rows(records: Sequence[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """What the template's gallery shows of each record: thumbnails as data URIs, texts, numbers."""
    rows = []
    for r in records:
        why = (
            r["rejected_by"] + (f" of {r['duplicate_of']}" if r.get("duplicate_of") else "")
            if r.get("rejected_by")
            else ""
        )
        rows.append(
            {
                "id": r["id"],
                "task": r.get("task") or "no task",
                "source": png_uri(_thumb(out / r["source"])) if r.get("source") else None,
                "target": png_uri(_thumb(out / r["target"])) if r.get("target") else None,
                "overlay": png_uri(_overlay(out / r["source"], out / r["mask"])) if r.get("mask") else None,
                "instruction": r["instruction"],
                "refined": r["refined"]["instruction"] if r.get("refined") else None,
                "refine_error": (r.get("refine_error") or "")[:160],
                "numbers": ", ".join(
                    f"{k} {_fmt(r.get(k))}"
                    for k in ("area", "psnr", "ssim", "judge_score")
                    if r.get(k) is not None
                ),
                "why": why,
                "error": (r.get("error") or "")[:200],
            }
        )
    return rows


def _failures(title: str, entries: Sequence[dict[str, Any]], limit: int = 20) -> dict[str, Any]:
    distinct = len({e.get("answer") for e in entries})
    note = f"{len(entries)} items, {distinct} distinct answers"
    if len(entries) > limit:
        note += f"; the first {limit} shown, all in summary.json"
    shown = [
        {"id": e["id"], "error": str(e["error"])[:200], "answer": (e.get("answer") or "")[:200]}
        for e in entries[:limit]
    ]
    return {"title": title, "entries": shown, "total": len(entries), "note": note}


def _pick_rejected(records: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to n rejected items with images, round-robin over the filters that rejected them."""
    by_filter: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("rejected_by") and r.get("source"):
            by_filter.setdefault(r["rejected_by"], []).append(r)
    picked: list[dict[str, Any]] = []
    while len(picked) < n and any(by_filter.values()):
        for name in list(by_filter):
            if by_filter[name] and len(picked) < n:
                picked.append(by_filter[name].pop(0))
    return picked


def write_report(
    summary: dict[str, Any], records: Sequence[dict[str, Any]], out: Path, gallery_size: int
) -> Path:
    """OUT/report.html of a finished run (see the module docstring), from cluster/templates/curate_report.html."""
    from cocoedit.cluster.report_html import render

    info = {
        "inputs": ", ".join(i["path"] for i in summary["inputs"]),
        "layout": summary["layout"],
        "rows": str(summary["rows"]),
        "kept": f"{summary['kept']} (requested: {summary['num'] if summary['num'] is not None else 'all'})",
        "output": f"{summary['data']} ({summary['format']})",
        "masks from": json.dumps(summary["mask_from"]),
        "settings": json.dumps(summary["settings"]),
        "created": summary["created"],
        "git commit": str(summary["versions"].get("git_commit")),
    }
    readable = [r for r in records if not r.get("error")]
    charts = [
        bar_chart(
            "mask area fraction (readable items)",
            histogram([r["area"] for r in readable if r.get("area") is not None], 0.0, 1.0),
        ),
        bar_chart(
            "keep-region PSNR, dB (items with a target)",
            histogram([r["psnr"] for r in readable if r.get("psnr") is not None], 0.0, 80.0, 8),
        ),
        bar_chart(
            "judge score (judged items)",
            histogram([r["judge_score"] for r in records if r.get("judge_score") is not None], 0.0, 1.0),
        ),
    ]
    r, g, j = summary["refinement"], summary["grounding"], summary["judge"]
    kept = [rec for rec in records if rec.get("rejected_by") is None]
    page = render(
        "curate_report.html",
        extra_css=_EXTRA_CSS,
        info=list(info.items()),
        funnel=[
            {"name": name, **{k: f[k] for k in ("keeps", "reached", "checked", "passed")}, "rate": _rate(f)}
            for name, f in summary["funnel"].items()
        ],
        tasks=list(summary["tasks"].items()),
        charts=charts,
        refinement=r,
        grounding=g,
        judge=j,
        failure_lists=[
            _failures("Refinement failures", r["failures"]),
            _failures("Grounding failures", g["failures"]),
            _failures("Judge failures", j["failures"]),
        ],
        kept_rows=_gallery_rows(kept[:gallery_size], out),
        kept_total=len(kept),
        rejected_rows=_gallery_rows(_pick_rejected(records, gallery_size), out),
        unreadable=_failures("Unreadable items", [{**e, "answer": ""} for e in summary["errors"]])
        if summary["errors"]
        else None,
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path

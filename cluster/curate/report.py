"""The HTML report of a curation run (`cocoedit data curate`): OUT/report.html, self-contained.

Sections: the run (inputs, layout, settings); the filter funnel (reached, passed, pass rate of each
filter in order); items per edit type in and kept; histograms of mask area, keep-region PSNR and judge
score; refinement, grounding and judge outcomes with every parse failure listed (id, error, answer);
a gallery of kept and of rejected items (source | target | mask overlay, instruction before and after
refinement, numbers, why it was dropped). Images are inline thumbnails (data URIs).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cocoedit.cluster.eval.report import CSS, SCRIPT, bar_chart, html_table, mask_overlay, png_uri

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
    return html.escape(str(value))


def _gallery(records: Sequence[dict[str, Any]], out: Path) -> str:
    rows = []
    for r in records:
        img = lambda a, alt: f'<img alt="{alt}" src="{png_uri(a)}">'  # noqa: E731
        source = img(_thumb(out / r["source"]), "source") if r.get("source") else ""
        target = img(_thumb(out / r["target"]), "target") if r.get("target") else ""
        overlay = img(_overlay(out / r["source"], out / r["mask"]), "mask overlay") if r.get("mask") else ""
        text = f"<b>{html.escape(r['id'])}</b> <small>({html.escape(r.get('task') or 'no task')})</small><br>"
        text += f"original: {html.escape(r['instruction'])}<br>"
        if r.get("refined"):
            text += f"refined: {html.escape(r['refined']['instruction'])}<br>"
        elif r.get("refine_error"):
            text += f"<small>refinement failed: {html.escape(r['refine_error'][:160])}</small><br>"
        numbers = ", ".join(
            f"{k} {_fmt(r.get(k))}" for k in ("area", "psnr", "ssim", "judge_score") if r.get(k) is not None
        )
        text += f"<small>{numbers}</small>"
        if r.get("rejected_by"):
            why = r["rejected_by"] + (f" of {r['duplicate_of']}" if r.get("duplicate_of") else "")
            text += f"<br><small>dropped by: {html.escape(why)}</small>"
        if r.get("error"):
            text += f"<br><small>error: {html.escape(r['error'][:200])}</small>"
        rows.append([source, target, overlay, f'<div style="text-align:left;max-width:420px">{text}</div>'])
    return html_table(["source", "target", "mask overlay", "item"], rows, "gallery")


def _failures(title: str, entries: Sequence[dict[str, Any]], limit: int = 20) -> str:
    if not entries:
        return f"<p>{html.escape(title)}: none</p>"
    rows = [
        [html.escape(e["id"]), html.escape(str(e["error"])[:200]), html.escape((e.get("answer") or "")[:200])]
        for e in entries[:limit]
    ]
    distinct = len({e.get("answer") for e in entries})
    note = f"{len(entries)} items, {distinct} distinct answers"
    if len(entries) > limit:
        note += f"; the first {limit} shown, all in summary.json"
    return f"<h3>{html.escape(title)} ({len(entries)})</h3><p class='meta'>{note}</p>" + html_table(
        ["item", "error", "answer"], rows, "fail"
    )


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
    """OUT/report.html of a finished run (see the module docstring)."""
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
    funnel_rows = [
        [
            html.escape(name),
            html.escape(f["keeps"]),
            str(f["reached"]),
            str(f["passed"]),
            "n/a" if f["rate"] is None else f"{f['rate']:.1%}",
        ]
        for name, f in summary["funnel"].items()
    ]
    readable = [r for r in records if not r.get("error")]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>cocoedit data curate</title><style>{CSS}{_EXTRA_CSS}</style>{SCRIPT}</head><body>",
        "<h1>cocoedit data curate</h1>",
        html_table(
            ["", ""],
            [[html.escape(k), f'<span class="meta">{html.escape(v)}</span>'] for k, v in info.items()],
            "info",
        ),
        "<h2>Filters</h2>",
        html_table(["filter", "keeps", "reached", "passed", "pass rate"], funnel_rows, "funnel"),
        "<h2>Edit types</h2>",
        html_table(
            ["edit type", "in", "kept"],
            [[html.escape(t), str(v["in"]), str(v["kept"])] for t, v in summary["tasks"].items()],
            "tasks",
        ),
        "<h2>Histograms</h2><div class='charts'>",
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
        "</div>",
        "<h2>MLLM</h2>",
    ]
    r, g, j = summary["refinement"], summary["grounding"], summary["judge"]
    parts.append(
        f"<p>refinement: {r['attempted']} attempted, {r['parsed']} parsed, {r['failed']} failed (original "
        f"instruction kept); grounding: {g['attempted']} attempted, {g['parsed']} parsed, {g['failed']} failed "
        f"(item dropped); judge: {j['scored']} scored, {j['failed']} failed (item dropped). Failures are never "
        "guessed.</p>"
    )
    parts.append(_failures("Refinement failures", r["failures"]))
    parts.append(_failures("Grounding failures", g["failures"]))
    parts.append(_failures("Judge failures", j["failures"]))
    kept = [rec for rec in records if rec.get("rejected_by") is None]
    parts.append(f"<h2>Kept items (first {min(gallery_size, len(kept))} of {len(kept)})</h2>")
    parts.append(_gallery(kept[:gallery_size], out))
    rejected = _pick_rejected(records, gallery_size)
    parts.append(f"<h2>Rejected items ({len(rejected)} shown, one per filter in turn)</h2>")
    parts.append(_gallery(rejected, out))
    if summary["errors"]:
        parts.append(_failures("Unreadable items", [{**e, "answer": ""} for e in summary["errors"]]))
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("".join(parts), encoding="utf-8")
    return path

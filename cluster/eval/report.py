"""Aggregation tables and reports of `cocoedit eval` (docs/algorithm.md section 6).

Aggregation is the benchmarks' own: per group (GEdit task group, ImgEdit edit type, manifest task) the
mean of each metric over the items where it is defined, then overall = the mean of the group means
(GEdit-Bench and ImgEdit-Bench both average groups, not items); the plain item mean is reported beside
it. Undefined values (judge failures, masked metrics of an item with nothing kept) are excluded and
counted, never filled in.

Reports are self-contained HTML (inline CSS and SVG, images as data URIs): tables, a bar chart per
headline metric over groups, a scatter of instruction score against keep-only masked PSNR per item,
and a gallery (source | edit | mask overlay | target | scores) of the best and worst items.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cocoedit.actors.types import EditItem
from cocoedit.cluster.train.runlog import mask_overlay
from cocoedit.rewards.images import encode_png

PIXEL_METRICS = ("psnr_keep", "ssim_keep", "psnr_pie", "ssim_pie")
JUDGE_METRICS: dict[str, tuple[str, ...]] = {
    "gedit": ("sc", "pq", "o"),
    "imgedit": ("score", "compliance", "quality", "preservation"),
}
LABELS = {
    "psnr_keep": "masked PSNR keep-only (dB)",
    "ssim_keep": "masked SSIM keep-only",
    "psnr_pie": "masked PSNR pie (dB)",
    "ssim_pie": "masked SSIM pie",
    "synthetic": "synthetic instruction score",
    "synthetic_edit_psnr": "PSNR to target in edit region (dB)",
    "sc": "GEdit SC (0-10)",
    "pq": "GEdit PQ (0-10)",
    "o": "GEdit O (0-10)",
    "score": "ImgEdit overall (1-5)",
    "compliance": "ImgEdit compliance (1-5)",
    "quality": "ImgEdit quality (1-5)",
    "preservation": "ImgEdit preservation (1-5)",
}


def metric_keys(items: Sequence[dict[str, Any]], protocol: Optional[str]) -> list[str]:
    """The metrics a run reports, in display order: judge, synthetic, pixel."""
    keys = list(JUDGE_METRICS.get(protocol or "", ()))
    if any("synthetic" in it for it in items):
        keys += ["synthetic", "synthetic_edit_psnr"]
    return keys + list(PIXEL_METRICS)


def primary_metric(keys: Sequence[str]) -> str:
    """The instruction-following score a run is ranked by (judge O / ImgEdit score / synthetic)."""
    for k in ("o", "score", "synthetic"):
        if k in keys:
            return k
    return "psnr_keep"


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if values else None


def aggregate(items: Sequence[dict[str, Any]], protocol: Optional[str]) -> dict[str, Any]:
    """Group and overall tables from per-item rows ({"group", metric: float | None, "judge_error"?}).

    Returns {"metric_keys", "primary", "groups": {group: {"n", metric: mean | None, "missing": {metric:
    count}, "judge_failures"}}, "overall": {metric: mean of group means}, "overall_item_mean": {...},
    "failures": {"judge": count, "judge_items": [ids]}, "aggregation": text}.
    """
    keys = metric_keys(items, protocol)
    by_group: dict[str, list[dict[str, Any]]] = {}
    for it in items:
        by_group.setdefault(it["group"], []).append(it)
    groups: dict[str, dict[str, Any]] = {}
    for name in sorted(by_group):
        rows = by_group[name]
        table: dict[str, Any] = {"n": len(rows), "missing": {}}
        for k in keys:
            vals = [r[k] for r in rows if r.get(k) is not None]
            table[k] = _mean(vals)
            table["missing"][k] = len(rows) - len(vals)
        table["judge_failures"] = sum(1 for r in rows if r.get("judge_error"))
        groups[name] = table
    overall = {k: _mean([g[k] for g in groups.values() if g[k] is not None]) for k in keys}
    item_mean = {k: _mean([r[k] for r in items if r.get(k) is not None]) for k in keys}
    failed = [r["id"] for r in items if r.get("judge_error")]
    return {
        "metric_keys": keys,
        "primary": primary_metric(keys),
        "groups": groups,
        "overall": overall,
        "overall_item_mean": item_mean,
        "failures": {"judge": len(failed), "judge_items": failed},
        "aggregation": "overall = mean of group means (GEdit-Bench / ImgEdit-Bench); item mean beside it; "
        "undefined values excluded and counted",
    }


def _fmt(v: Optional[float], key: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return (
        f"{v:.2f}"
        if key.startswith("psnr") or key in ("sc", "pq", "o", "synthetic_edit_psnr")
        else f"{v:.4f}"
    )


def summary_text(results: dict[str, Any]) -> str:
    """Group table and overall as fixed-width text (what `cocoedit eval` prints)."""
    keys = results["metric_keys"]
    head = f"{'group':<20} {'n':>4} " + " ".join(f"{k:>12}" for k in keys)
    lines = [
        f"{results['bench']} ({results['edits']} edits) - {results['aggregation']}",
        head,
        "-" * len(head),
    ]
    for name, g in results["groups"].items():
        lines.append(f"{name[:20]:<20} {g['n']:>4} " + " ".join(f"{_fmt(g[k], k):>12}" for k in keys))
    lines.append("-" * len(head))
    n = sum(g["n"] for g in results["groups"].values())
    lines.append(f"{'overall':<20} {n:>4} " + " ".join(f"{_fmt(results['overall'][k], k):>12}" for k in keys))
    lines.append(
        f"{'item mean':<20} {n:>4} "
        + " ".join(f"{_fmt(results['overall_item_mean'][k], k):>12}" for k in keys)
    )
    if results.get("judge"):
        lines.append(f"judge failures: {results['failures']['judge']} of {n} items")
    return "\n".join(lines)


def png_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode()


# The style of every self-contained report page (evaluation, curation, sweep).
CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:8px 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}
td.l,th.l{text-align:left}.pos{color:#0a7a2a}.neg{color:#b3261e}
.gallery td{vertical-align:top}.gallery img{width:128px;height:128px;image-rendering:pixelated}
.meta{font-size:12px;color:#555}svg{margin:6px 12px 6px 0;background:#fafafa;border:1px solid #eee}
.charts{display:flex;flex-wrap:wrap}table.info td{text-align:left}
"""

# Counts images that fail to decode, so a broken report is detectable (headless browsers, tests).
SCRIPT = """
<script>
window.addEventListener('load', function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) { if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++; }
  document.documentElement.setAttribute('data-images', String(imgs.length));
  document.documentElement.setAttribute('data-broken-images', String(broken));
});
</script>
"""


def html_table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """A <table> of the reports (CSS): `header` escaped here, `rows` already HTML; first column left."""
    out = [f'<table class="{cls}"><tr>' + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for r in rows:
        out.append(
            "<tr>"
            + "".join(f'<td class="{"l" if i == 0 else ""}">{c}</td>' for i, c in enumerate(r))
            + "</tr>"
        )
    return "".join(out) + "</table>"


def bar_chart(title: str, values: dict[str, Optional[float]], width: int = 520) -> str:
    """Horizontal SVG bars, one per group (None = an empty bar labelled n/a)."""
    row_h, label_w = 18, 150
    height = 28 + row_h * len(values)
    finite = [v for v in values.values() if v is not None]
    top = max([abs(v) for v in finite] + [1e-9])
    parts = [
        f'<svg class="bar" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">',
        f'<text x="4" y="16" font-size="13" font-weight="bold">{html.escape(title)}</text>',
    ]
    for i, (name, v) in enumerate(values.items()):
        y = 24 + i * row_h
        parts.append(f'<text x="4" y="{y + 12}" font-size="11">{html.escape(name[:24])}</text>')
        if v is None:
            parts.append(f'<text x="{label_w}" y="{y + 12}" font-size="11">n/a</text>')
            continue
        w = max(1.0, (width - label_w - 60) * abs(v) / top)
        fill = "#4a7bd0" if v >= 0 else "#c0504d"  # negative values (deltas) in red
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{fill}"/>')
        parts.append(f'<text x="{label_w + w + 4:.1f}" y="{y + 12}" font-size="11">{v:.3g}</text>')
    return "".join(parts) + "</svg>"


def scatter(points: list[tuple[float, float, str]], x_label: str, y_label: str, size: int = 360) -> str:
    """SVG scatter of (x, y, item id) with axis ranges from the data; each point has a <title>."""
    pad = 40
    parts = [
        f'<svg class="scatter" xmlns="http://www.w3.org/2000/svg" width="{size + pad}" height="{size + pad}">'
    ]
    parts.append(f'<text x="{pad}" y="{size + pad - 4}" font-size="11">{html.escape(x_label)}</text>')
    parts.append(f'<text x="4" y="12" font-size="11">{html.escape(y_label)}</text>')
    parts.append(
        f'<line x1="{pad}" y1="{size - pad // 2}" x2="{size}" y2="{size - pad // 2}" stroke="#999"/>'
    )
    parts.append(f'<line x1="{pad}" y1="20" x2="{pad}" y2="{size - pad // 2}" stroke="#999"/>')
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        for label, label_x, anchor in ((f"{x0:.3g}", pad, "start"), (f"{x1:.3g}", size, "end")):
            parts.append(
                f'<text x="{label_x}" y="{size - pad // 2 + 14}" font-size="10" text-anchor="{anchor}">{label}</text>'
            )
        parts.append(
            f'<text x="{pad - 4}" y="{size - pad // 2}" font-size="10" text-anchor="end">{y0:.3g}</text>'
        )
        parts.append(f'<text x="{pad - 4}" y="26" font-size="10" text-anchor="end">{y1:.3g}</text>')
        for x, y, name in points:
            cx = pad + (x - x0) / (x1 - x0) * (size - pad)
            cy = size - pad // 2 - (y - y0) / (y1 - y0) * (size - pad // 2 - 20)
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="3.5" fill="#d0704a" fill-opacity="0.7">'
                f"<title>{html.escape(name)}: ({x:.3g}, {y:.3g})</title></circle>"
            )
    else:
        parts.append(f'<text x="{pad + 10}" y="{size // 2}" font-size="12">no items with both values</text>')
    return "".join(parts) + "</svg>"


def _gallery(
    rows: list[dict[str, Any]], items: dict[str, EditItem], edited: dict[str, torch.Tensor], keys: list[str]
) -> str:
    with_target = any(items[r["id"]].target_image is not None for r in rows)
    header = ["item", "source", "edit", "mask overlay"] + (["target"] if with_target else []) + ["scores"]
    out = []
    for r in rows:
        item = items[r["id"]]

        def img(a: np.ndarray, alt: str) -> str:
            return f'<img alt="{alt}" src="{png_uri(a)}">'

        cells = [
            f"{html.escape(r['id'])}<br><small>{html.escape(r['group'])}</small><br>"
            f"<small>{html.escape(r['instruction'])}</small>",
            img(item.source_image.permute(1, 2, 0).numpy(), "source"),
            img(edited[r["id"]].permute(1, 2, 0).numpy(), "edit"),
            img(mask_overlay(item.source_image, item.edit_mask), "mask overlay"),
        ]
        if with_target:
            cells.append(
                img(item.target_image.permute(1, 2, 0).numpy(), "target")
                if item.target_image is not None
                else ""
            )
        scores = "<br>".join(f"{html.escape(k)}: {_fmt(r.get(k), k)}" for k in keys)
        if r.get("judge_error"):
            scores += f"<br><small>judge error: {html.escape(r['judge_error'][:200])}</small>"
        cells.append(f'<div style="text-align:left">{scores}</div>')
        out.append(cells)
    return html_table(header, out, "gallery")


def write_html(
    results: dict[str, Any],
    items: Sequence[EditItem],
    edited: Sequence[torch.Tensor],
    path: Path,
    gallery_size: int = 6,
) -> Path:
    """The self-contained report of one run (see the module docstring)."""
    keys = results["metric_keys"]
    primary = results["primary"]
    by_id = {i.item_id: i for i in items}
    edits = {i.item_id: e for i, e in zip(items, edited, strict=True)}
    meta = {
        "bench": results["bench"],
        "data": results["data"],
        "edits": results["edits"],
        "model": json.dumps(results["model"]),
        "LoRA": json.dumps(results["lora"]),
        "judge": json.dumps(results["judge"]),
        "settings": json.dumps(results["settings"]),
        "created": results["created"],
        "git commit": str(results["versions"].get("git_commit")),
    }
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>cocoedit eval: {html.escape(results['bench'])}</title><style>{CSS}</style>{SCRIPT}</head><body>",
        f"<h1>cocoedit eval - {html.escape(results['bench'])}</h1>",
        html_table(
            ["", ""],
            [[html.escape(k), f'<span class="meta">{html.escape(v)}</span>'] for k, v in meta.items()],
            "info",
        ),
        "<h2>Overall</h2>",
        f"<p class='meta'>{html.escape(results['aggregation'])}; PSNR capped at "
        f"{results['metrics']['psnr_cap_db']:g} dB (MSE floor 1e-8).</p>",
        html_table(
            ["metric", "overall (mean of group means)", "item mean"],
            [
                [
                    html.escape(LABELS.get(k, k)),
                    _fmt(results["overall"][k], k),
                    _fmt(results["overall_item_mean"][k], k),
                ]
                for k in keys
            ],
            "overall",
        ),
    ]
    if results.get("judge"):
        n = len(results["items"])
        parts.append(
            f"<p>judge failures: {results['failures']['judge']} of {n} items (excluded, not guessed)</p>"
        )
    parts.append("<h2>Per group</h2>")
    parts.append(
        html_table(
            ["group", "n", *(LABELS.get(k, k) for k in keys), "judge failures"],
            [
                [html.escape(name), str(g["n"]), *(_fmt(g[k], k) for k in keys), str(g["judge_failures"])]
                for name, g in results["groups"].items()
            ],
            "groups",
        )
    )
    parts.append("<h2>Charts</h2><div class='charts'>")
    for k in [k for k in keys if k in (primary, "psnr_keep", "ssim_keep")] or keys[:1]:
        parts.append(bar_chart(LABELS.get(k, k), {name: g[k] for name, g in results["groups"].items()}))
    points = [
        (r["psnr_keep"], r[primary], r["id"])
        for r in results["items"]
        if r.get("psnr_keep") is not None and r.get(primary) is not None
    ]
    parts.append(scatter(points, LABELS["psnr_keep"], LABELS.get(primary, primary)))
    parts.append("</div>")
    ranked = sorted(
        [r for r in results["items"] if r.get(primary) is not None],
        key=lambda r: (r[primary], r.get("psnr_keep") or 0.0),
    )
    k = min(gallery_size, len(ranked))
    parts.append(f"<h2>Best {k} items by {html.escape(LABELS.get(primary, primary))}</h2>")
    parts.append(_gallery(ranked[::-1][:k], by_id, edits, keys))
    parts.append(f"<h2>Worst {k} items</h2>")
    parts.append(_gallery(ranked[:k], by_id, edits, keys))
    failed = [r for r in results["items"] if r.get("judge_error")]
    if failed:
        parts.append("<h2>Judge failures</h2>")
        parts.append(
            html_table(
                ["item", "error"],
                [
                    [html.escape(r["id"]), f"<small>{html.escape(r['judge_error'][:400])}</small>"]
                    for r in failed[:50]
                ],
            )
        )
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")
    return path


def _load(run: Path) -> dict[str, Any]:
    path = run / "results.json" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the --out folder of a finished `cocoedit eval`")
    return json.loads(path.read_text())


def compare_runs(run_a: Path, run_b: Path, out_html: Path) -> tuple[str, Path]:
    """Side-by-side group tables of two runs with deltas (B - A); returns (text table, html path)."""
    a, b = _load(run_a), _load(run_b)
    if a["bench"] != b["bench"]:
        raise ValueError(f"runs evaluate different benchmarks: {a['bench']} vs {b['bench']}")
    keys = [k for k in a["metric_keys"] if k in b["metric_keys"]]
    ids_a, ids_b = {r["id"] for r in a["items"]}, {r["id"] for r in b["items"]}
    note = "" if ids_a == ids_b else f"warning: item sets differ ({len(ids_a)} vs {len(ids_b)} items)"
    groups = sorted(set(a["groups"]) | set(b["groups"]))

    def delta(x: Optional[float], y: Optional[float]) -> Optional[float]:
        return None if x is None or y is None else y - x

    rows = []
    for name in [*groups, "overall"]:
        ga = a["overall"] if name == "overall" else a["groups"].get(name, {})
        gb = b["overall"] if name == "overall" else b["groups"].get(name, {})
        rows.append((name, [(ga.get(k), gb.get(k), delta(ga.get(k), gb.get(k))) for k in keys]))
    head = f"{'group':<20} " + " ".join(f"{k + ' A':>11} {k + ' B':>11} {'delta':>9}" for k in keys)
    lines = [f"A = {run_a}", f"B = {run_b}", *([note] if note else []), head, "-" * len(head)]
    for name, cells in rows:
        lines.append(
            f"{name[:20]:<20} "
            + " ".join(
                f"{_fmt(x, k):>11} {_fmt(y, k):>11} {('n/a' if d is None else f'{d:+.3f}'):>9}"
                for k, (x, y, d) in zip(keys, cells, strict=True)
            )
        )
    text = "\n".join(lines)

    def cell(d: Optional[float]) -> str:
        if d is None:
            return "n/a"
        return f'<span class="{"pos" if d > 0 else "neg" if d < 0 else ""}">{d:+.3f}</span>'

    header = ["group"] + [f"{LABELS.get(k, k)} {s}" for k in keys for s in ("A", "B", "B - A")]
    table_rows = [
        [html.escape(name)]
        + [c for k, (x, y, d) in zip(keys, cells, strict=True) for c in (_fmt(x, k), _fmt(y, k), cell(d))]
        for name, cells in rows
    ]
    charts = "".join(
        bar_chart(f"delta {LABELS.get(k, k)} (B - A)", {name: cells[i][2] for name, cells in rows})
        for i, k in enumerate(keys)
        if k in (a.get("primary"), "psnr_keep")
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>cocoedit eval compare</title><style>{CSS}</style>"
        f"</head><body><h1>cocoedit eval compare - {html.escape(a['bench'])}</h1>"
        f"<p>A = {html.escape(str(run_a))}<br>B = {html.escape(str(run_b))}</p>"
        f"<p>{html.escape(note)}</p>{html_table(header, table_rows, 'compare')}<div class='charts'>{charts}</div></body></html>"
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(page, encoding="utf-8")
    return text, out_html

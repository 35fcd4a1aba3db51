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
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from cocoedit.actors.types import EditItem
from cocoedit.cluster.report_html import CSS, SCRIPT  # noqa: F401 - the reports' style, here since before
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


def bar_chart(title: str, values: dict[str, Optional[float]], width: int = 520) -> str:
    """Horizontal SVG bars, one per group (None = an empty bar labelled n/a); negative values in red."""
    from cocoedit.cluster.report_html import macro

    row_h, label_w = 18, 150
    finite = [v for v in values.values() if v is not None]
    top = max([abs(v) for v in finite] + [1e-9])
    bars = [
        {
            "name": name[:24],
            "y": 24 + i * row_h,
            "value": v,
            "w": 0.0 if v is None else max(1.0, (width - label_w - 60) * abs(v) / top),
            "h": row_h - 5,
            "fill": "#4a7bd0" if v is None or v >= 0 else "#c0504d",
        }
        for i, (name, v) in enumerate(values.items())
    ]
    return macro("charts.svg", "bar_chart")(title, width, 28 + row_h * len(values), bars, label_w)


def scatter(points: list[tuple[float, float, str]], x_label: str, y_label: str, size: int = 360) -> str:
    """SVG scatter of (x, y, item id) with axis ranges from the data; each point has a <title>."""
    from cocoedit.cluster.report_html import macro

    pad = 40
    ticks, dots = [], []
    if points:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        x0, x1 = min(xs), max(xs)
        y0, y1 = min(ys), max(ys)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        ticks = [
            {"x": pad, "y": size - pad // 2 + 14, "anchor": "start", "text": f"{x0:.3g}"},
            {"x": size, "y": size - pad // 2 + 14, "anchor": "end", "text": f"{x1:.3g}"},
            {"x": pad - 4, "y": size - pad // 2, "anchor": "end", "text": f"{y0:.3g}"},
            {"x": pad - 4, "y": 26, "anchor": "end", "text": f"{y1:.3g}"},
        ]
        dots = [
            {
                "cx": pad + (x - x0) / (x1 - x0) * (size - pad),
                "cy": size - pad // 2 - (y - y0) / (y1 - y0) * (size - pad // 2 - 20),
                "x": x,
                "y": y,
                "name": name,
            }
            for x, y, name in points
        ]
    return macro("charts.svg", "scatter")(size, pad, x_label, y_label, ticks, dots)


def _gallery_rows(
    rows: list[dict[str, Any]], items: dict[str, EditItem], edited: dict[str, torch.Tensor], keys: list[str]
) -> list[dict[str, Any]]:
    """What the template's gallery shows of each item: images as data URIs, its scores as text."""
    out = []
    for r in rows:
        item = items[r["id"]]
        out.append(
            {
                "id": r["id"],
                "group": r["group"],
                "instruction": r["instruction"],
                "source": png_uri(item.source_image.permute(1, 2, 0).numpy()),
                "edit": png_uri(edited[r["id"]].permute(1, 2, 0).numpy()),
                "overlay": png_uri(mask_overlay(item.source_image, item.edit_mask)),
                "target": None
                if item.target_image is None
                else png_uri(item.target_image.permute(1, 2, 0).numpy()),
                "scores": [(k, _fmt(r.get(k), k)) for k in keys],
                "judge_error": (r.get("judge_error") or "")[:200],
            }
        )
    return out


def write_html(
    results: dict[str, Any],
    items: Sequence[EditItem],
    edited: Sequence[torch.Tensor],
    path: Path,
    gallery_size: int = 6,
) -> Path:
    """The self-contained report of one run (see the module docstring), from
    cluster/templates/eval_report.html."""
    from cocoedit.cluster.report_html import render

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
    charts = [
        bar_chart(LABELS.get(k, k), {name: g[k] for name, g in results["groups"].items()})
        for k in [k for k in keys if k in (primary, "psnr_keep", "ssim_keep")] or keys[:1]
    ]
    points = [
        (r["psnr_keep"], r[primary], r["id"])
        for r in results["items"]
        if r.get("psnr_keep") is not None and r.get(primary) is not None
    ]
    charts.append(scatter(points, LABELS["psnr_keep"], LABELS.get(primary, primary)))
    ranked = sorted(
        [r for r in results["items"] if r.get(primary) is not None],
        key=lambda r: (r[primary], r.get("psnr_keep") or 0.0),
    )
    k = min(gallery_size, len(ranked))
    best, worst = ranked[::-1][:k], ranked[:k]
    page = render(
        "eval_report.html",
        bench=results["bench"],
        meta=list(meta.items()),
        aggregation=results["aggregation"],
        psnr_cap=f"{results['metrics']['psnr_cap_db']:g}",
        overall=[
            (LABELS.get(k, k), _fmt(results["overall"][k], k), _fmt(results["overall_item_mean"][k], k))
            for k in keys
        ],
        judge_failures=results["failures"]["judge"] if results.get("judge") else None,
        n_items=len(results["items"]),
        labels=[LABELS.get(k, k) for k in keys],
        groups=[
            (name, g["n"], [_fmt(g[k], k) for k in keys], g["judge_failures"])
            for name, g in results["groups"].items()
        ],
        charts=charts,
        primary_label=LABELS.get(primary, primary),
        best_target=any(by_id[r["id"]].target_image is not None for r in best),
        worst_target=any(by_id[r["id"]].target_image is not None for r in worst),
        best=_gallery_rows(best, by_id, edits, keys),
        worst=_gallery_rows(worst, by_id, edits, keys),
        judge_errors=[(r["id"], r["judge_error"][:400]) for r in results["items"] if r.get("judge_error")][
            :50
        ],
    )
    path.write_text(page, encoding="utf-8")
    return path


def _load(run: Path) -> dict[str, Any]:
    path = run / "results.json" if run.is_dir() else run
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: pass the --out folder of a finished `cocoedit eval`")
    return json.loads(path.read_text())


def compare_runs(run_a: Path, run_b: Path, out_html: Path, pairs_shown: int = 8) -> tuple[str, Path]:
    """Side-by-side group tables of two runs with deltas (B - A), and the `pairs_shown` items whose
    primary metric changed most as edit A | edit B (cluster/eval/pairs.py; page from
    cluster/templates/eval_compare.html); returns (text table, html path)."""
    from cocoedit.cluster.eval.pairs import image_pairs
    from cocoedit.cluster.report_html import render

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

    def sign(d: Optional[float]) -> str:
        return "" if d is None else ("pos" if d > 0 else "neg" if d < 0 else "")

    header = ["group"] + [f"{LABELS.get(k, k)} {s}" for k in keys for s in ("A", "B", "B - A")]
    table_rows = [
        (
            name,
            [
                c
                for k, (x, y, d) in zip(keys, cells, strict=True)
                for c in ((_fmt(x, k), ""), (_fmt(y, k), ""), ("n/a" if d is None else f"{d:+.3f}", sign(d)))
            ],
        )
        for name, cells in rows
    ]
    charts = [
        bar_chart(f"delta {LABELS.get(k, k)} (B - A)", {name: cells[i][2] for name, cells in rows})
        for i, k in enumerate(keys)
        if k in (a.get("primary"), "psnr_keep")
    ]
    primary = a.get("primary") if a.get("primary") in keys else (keys[0] if keys else None)
    pairs = image_pairs(run_a, run_b, a, b, primary, pairs_shown) if primary else []
    for p in pairs:
        p["a_text"], p["b_text"] = _fmt(p["a"], primary or ""), _fmt(p["b"], primary or "")
    page = render(
        "eval_compare.html",
        bench=a["bench"],
        run_a=str(run_a),
        run_b=str(run_b),
        note=note,
        header=header,
        rows=table_rows,
        charts=charts,
        pairs=pairs,
        pair_label=LABELS.get(primary, primary) if primary else "",
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(page, encoding="utf-8")
    return text, out_html

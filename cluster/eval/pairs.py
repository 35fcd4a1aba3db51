"""Side-by-side image pairs of `cocoedit eval compare`: the items where run B's edit differs most from
run A's on the primary metric (largest gains and largest losses), each as edit A | edit B with both
values and the change. Edits are read from each run's folder (`edits/<id>.png`, results.json's "edit")."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Optional


def _value(item: dict[str, Any], key: str) -> Optional[float]:
    v = item.get(key)
    return float(v) if isinstance(v, (int, float)) and v == v else None


def _uri(path: Path) -> Optional[str]:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode() if path.is_file() else None


def image_pairs(
    run_a: Path, run_b: Path, a: dict[str, Any], b: dict[str, Any], key: str, n: int = 8
) -> list[dict[str, Any]]:
    """Up to n items in both runs with `key` defined in both: the n // 2 largest losses (B - A < 0), the
    largest gains for the rest (unchanged items when too few changed), ordered from gain to loss; each
    with both edits as data URIs (None when a run's edit file is gone)."""
    items_b = {r["id"]: r for r in b["items"]}
    both = []
    for ra in a["items"]:
        rb = items_b.get(ra["id"])
        va, vb = _value(ra, key), None if rb is None else _value(rb, key)
        if va is not None and vb is not None:
            both.append((vb - va, ra, rb, va, vb))
    both.sort(key=lambda t: -t[0])
    losses = [t for t in reversed(both) if t[0] < 0][: n // 2]
    gains = [t for t in both if t[0] > 0][: n - len(losses)]
    still = [t for t in both if t[0] == 0][: n - len(losses) - len(gains)]  # unchanged items fill up
    chosen = sorted(gains + still + losses, key=lambda t: -t[0])
    run_a, run_b = (
        Path(run_a if Path(run_a).is_dir() else Path(run_a).parent),
        Path(run_b if Path(run_b).is_dir() else Path(run_b).parent),
    )
    return [
        {
            "id": ra["id"],
            "group": ra.get("group", ""),
            "instruction": ra.get("instruction", ""),
            "a": va,
            "b": vb,
            "delta": d,
            "edit_a": _uri(run_a / ra.get("edit", f"edits/{ra['id']}.png")),
            "edit_b": _uri(run_b / rb.get("edit", f"edits/{rb['id']}.png")),
        }
        for d, ra, rb, va, vb in chosen
    ]

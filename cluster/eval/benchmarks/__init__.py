"""Benchmarks read as edit data, behind one registry: `BENCHMARKS` names each benchmark's reader module
and the judge protocol (rewards.eval_prompts) that scores it by default.

    items = load_benchmark("gedit", "/data/gedit", work_dir, image_size=512)

A reader module has `items(data, work_dir, image_size, mask_polarity, language) -> list[EditItem]`;
GEdit and ImgEdit write their items once as a benchmask folder under `work_dir/bench` (benchmask.py)
and load it through actors.data, so benchmarks get the same validation, cropping and mask-polarity
check as training data. A new benchmark is a reader module plus one `Benchmark(...)` line here
(README, Extending). This module imports no torch: the CLI reads the names from it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cocoedit.cluster.eval.benchmarks.benchmask import safe_key

if TYPE_CHECKING:
    from cocoedit.actors.types import EditItem

__all__ = ["BENCHMARKS", "Benchmark", "benchmark", "load_benchmark", "safe_key"]


@dataclass(frozen=True)
class Benchmark:
    name: str  # `cocoedit eval --bench NAME`
    reader: str  # the module with its `items(data, work_dir, image_size, mask_polarity, language)`
    # the judge protocol that scores it under eval.judge=auto; None: GEdit's VIEScore when
    # rewards.mllm is enabled, else no judge
    protocol: Optional[str]

    def items(
        self, data: Path, work_dir: Path, image_size: int, mask_polarity: Optional[str], language: str
    ) -> list[EditItem]:
        return importlib.import_module(self.reader).items(data, work_dir, image_size, mask_polarity, language)


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark("gedit", "cocoedit.cluster.eval.benchmarks.gedit", protocol="gedit"),
        Benchmark("imgedit", "cocoedit.cluster.eval.benchmarks.imgedit", protocol="imgedit"),
        Benchmark("manifest", "cocoedit.cluster.eval.benchmarks.manifest", protocol=None),
    )
}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise ValueError(f"--bench {name!r} is unknown; expected one of {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


def load_benchmark(
    bench: str,
    data: str | Path,
    work_dir: Path,
    image_size: int,
    mask_polarity: Optional[str] = None,
    language: str = "en",
    max_items: Optional[int] = None,
) -> list[EditItem]:
    """The benchmark's items as EditItems (task = group / edit type), the first `max_items` when given."""
    reader = benchmark(bench)
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"--data {data} does not exist")
    items = reader.items(data, work_dir, image_size, mask_polarity, language)
    for item in items:
        if safe_key(item.item_id) != item.item_id:
            raise ValueError(
                f"item id {item.item_id!r} is not file-name safe; rename it (e.g. {safe_key(item.item_id)!r})"
            )
    return items[:max_items] if max_items is not None else items

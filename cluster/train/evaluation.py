"""The fixed evaluations of a run, every number with its standard error.

Two fixed sets of `run.eval_items` items x `run.eval_seeds` noise seeds (seeds outside the training range):

- `eval`: items held out of training (actors.data.split_held_out): what the policy learned that carries
  over to items it never saw;
- `eval_train` (`run.eval_train`): as many of the items the run trains on (the first the epoch sampler
  draws): beside `eval`, the gap between them shows overfitting.

The starting policy (version 0) is evaluated before the first epoch, then the policy after every
`run.eval_every`-th epoch's update and after the last. Each evaluation's per-item scores (each item's
mean over its seeds; an item's seeds share its image and are not independent draws) go to
`run_dir/eval/<set>/v<version>.json`; the logged means carry their standard error over items
(`eval/reward_se`, ...), and the end-of-run summary gives each change from the first to the last
evaluation with a 95 % t-interval, paired per item (`changes`).

    fixed = eval_sets(cfg, items, held_out)              # {"eval": [...], "eval_train": [...]}
    metrics = record(run_dir, "eval", version, epoch, batch.group_ids, scores.rewards)  # v<version>.json
    for c in changes(run_dir, "eval"): ...              # first -> last, paired, with its interval
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from cocoedit.actors.epochs import EpochSampler
from cocoedit.actors.types import GroupedItem, IndexItem
from cocoedit.cluster.config import Config
from cocoedit.rewards.weighting import Rewards

# the metrics kept per item: the total reward and each weighted score, and the image-quality components
_COMPONENTS = ("psnr", "ssim")
# what the summary prints, in this order (those the run has)
SUMMARY_KEYS = ("reward", "synthetic", "mllm", "pixel", "pixel/psnr", "pixel/ssim")
SET_TITLES = {"eval": "held-out items (never trained on)", "eval_train": "training items"}


def fixed_items(items: list[IndexItem], n_seeds: int, prefix: str = "eval") -> list[GroupedItem]:
    """Each item with n_seeds fixed noise seeds (outside the training seed range), one group per item."""
    return [
        GroupedItem(item, f"{prefix}:{item.item_id}", f"{prefix}:{item.item_id}:{k}", 2**30 + j * n_seeds + k)
        for j, item in enumerate(items)
        for k in range(n_seeds)
    ]


def trained_items(cfg: Config, items: dict[str, IndexItem], n: int) -> list[IndexItem]:
    """The first `n` distinct items the run's epoch sampler draws over its epochs (fewer when the run
    draws fewer): training items the run certainly trains on, whatever the data's size. Deterministic
    from data.seed, like the sampler itself (items banned during the run are not foreseen)."""
    sampler = EpochSampler(list(items), cfg.data.n_items, cfg.data.group_size, cfg.data.seed)
    seen: dict[str, None] = {}
    for _ in range(cfg.run.epochs):
        for draw in sampler.next_epoch():
            seen.setdefault(draw.item_id, None)
        if len(seen) >= n:
            break
    return [items[i] for i in list(seen)[:n]]


def eval_sets(
    cfg: Config, items: dict[str, IndexItem], held_out: list[IndexItem]
) -> dict[str, list[GroupedItem]]:
    """The run's fixed evaluation sets by name (none when run.eval_every is 0)."""
    if not cfg.run.eval_every:
        return {}
    sets = {"eval": fixed_items(held_out[: cfg.run.eval_items], cfg.run.eval_seeds)}
    if cfg.run.eval_train:
        train = trained_items(cfg, items, cfg.run.eval_items)
        sets["eval_train"] = fixed_items(train, cfg.run.eval_seeds, prefix="eval_train")
    return sets


def per_edit(rewards: Rewards) -> dict[str, np.ndarray]:
    """metric -> [N] value per edit (NaN where an edit was not scored): `reward`, each weighted score,
    and the psnr/ssim components of each service."""
    values = {"reward": np.asarray(rewards.total, dtype=np.float64)}
    for k, v in rewards.parts.items():
        if "/" not in k or k.endswith(_COMPONENTS):
            values[k] = np.asarray(v, dtype=np.float64)
    scored = np.asarray(rewards.scored, dtype=bool)
    return {k: np.where(scored, v, np.nan) for k, v in values.items()}


def per_item(group_ids: list[str], values: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """item -> metric -> mean over that item's scored seeds (group ids name the item: `eval:<id>`)."""
    rows: dict[str, list[int]] = {}
    for i, g in enumerate(group_ids):
        rows.setdefault(g.split(":", 1)[1], []).append(i)
    table: dict[str, dict[str, float]] = {}
    for item, idx in rows.items():
        means = {
            k: float(np.nanmean(v[idx])) if np.isfinite(v[idx]).any() else math.nan for k, v in values.items()
        }
        table[item] = means
    return table


def mean_se(values: list[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) over the finite values; SE NaN under 2 of them."""
    x = np.array([v for v in values if math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return math.nan, math.nan
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def t_half(se: float, n: int) -> float:
    """Half-width of the 95 % Student-t interval with n - 1 degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * se) if n > 1 and math.isfinite(se) else math.nan


def record(
    run_dir: str | Path, name: str, version: int, epoch: int, group_ids: list[str], rewards: Rewards
) -> dict[str, float]:
    """Write one evaluation's per-item scores to run_dir/eval/<name>/v<version>.json (atomically) and
    return its logged metrics: `<name>/<metric>` and `<name>/<metric>_se` for each metric, plus
    `<name>/dropped_edits` and (held-out set) `eval/reward_ci95`, the 95 % half-width of eval/reward."""
    table = per_item(list(group_ids), per_edit(rewards))
    out = Path(run_dir) / "eval" / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"v{version:05d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": version, "epoch": epoch, "items": table}, sort_keys=True))
    os.replace(tmp, path)
    metrics: dict[str, float] = {}
    keys = next(iter(table.values())).keys() if table else ()
    for key in keys:
        mean, se = mean_se([row[key] for row in table.values()])
        metrics[f"{name}/{key}"] = mean
        metrics[f"{name}/{key}_se"] = se
    metrics[f"{name}/dropped_edits"] = float(len(group_ids) - int(np.asarray(rewards.scored).sum()))
    if name == "eval":
        n = sum(math.isfinite(row.get("reward", math.nan)) for row in table.values())
        metrics["eval/reward_ci95"] = t_half(metrics.get("eval/reward_se", math.nan), n)
    return metrics


@dataclass(frozen=True)
class Change:
    """One metric from the first to the last evaluation of a set, paired per item."""

    metric: str
    first: float  # mean over the items both evaluations scored
    last: float
    diff: float  # mean per-item change
    half: float  # half-width of its 95 % t-interval
    items: int  # items in the pair
    first_version: int
    last_version: int

    @property
    def significant(self) -> bool:
        return math.isfinite(self.half) and abs(self.diff) > self.half


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def changes(run_dir: str | Path, name: str, keys: tuple[str, ...] = SUMMARY_KEYS) -> list[Change]:
    """Each metric of `keys` the set has, from its first evaluation on disk to its last, paired per item
    ([] with fewer than two evaluations)."""
    files = sorted((Path(run_dir) / "eval" / name).glob("v*.json"))
    if len(files) < 2:
        return []
    a, b = _load(files[0]), _load(files[-1])
    result = []
    for key in keys:
        pairs = [
            (ra[key], b["items"][item][key])
            for item, ra in a["items"].items()
            if item in b["items"]
            and math.isfinite(ra.get(key, math.nan))
            and math.isfinite(b["items"][item].get(key, math.nan))
        ]
        if not pairs:
            continue
        x = np.array(pairs, dtype=np.float64)
        diff, se = mean_se(list(x[:, 1] - x[:, 0]))
        result.append(
            Change(
                key,
                float(x[:, 0].mean()),
                float(x[:, 1].mean()),
                diff,
                t_half(se, len(x)),
                len(x),
                int(a["version"]),
                int(b["version"]),
            )
        )
    return result


def summary_lines(run_dir: str | Path, seeds: Optional[int] = None) -> list[str]:
    """The end-of-run summary of every evaluation set: first -> last, change +- 95 % interval."""
    lines = []
    for name, title in SET_TITLES.items():
        rows = changes(run_dir, name)
        if not rows:
            continue
        c0 = rows[0]
        per = f" x {seeds} seeds" if seeds else ""
        lines.append(
            f"{title}, {c0.items} items{per}: policy version {c0.first_version} -> {c0.last_version}, "
            "change with its 95% interval (paired per item)"
        )
        for c in rows:
            mark = "" if c.significant else "  (interval includes 0)"
            lines.append(
                f"  {name + '/' + c.metric:>22}: {c.first:.4f} -> {c.last:.4f}   {c.diff:+.4f} +- {c.half:.4f}{mark}"
            )
    return lines


def write_summary(run_dir: str | Path) -> Optional[Path]:
    """run_dir/eval/summary.json: every set's changes (what `summary_lines` prints), for scripts."""
    data = {name: [c.__dict__ for c in changes(run_dir, name)] for name in SET_TITLES}
    if not any(data.values()):
        return None
    path = Path(run_dir) / "eval" / "summary.json"
    path.write_text(json.dumps(data, indent=1, sort_keys=True))
    return path

"""A blinded pairwise rating study from two or more evaluation runs of the same items.

    design = build_study(Path("STUDY"), {"before": Path("runs/a/eval"), "after": Path("runs/b/eval")})
    queue = rater_queue(design, "alice")     # this rater's tasks: sides and order randomised for them

Each run is a `cocoedit eval` output folder (results.json + edits/<id>.png). The study folder holds
copies of every image (images/<item>/source.png, images/<item>/<system>.png, checks/), design.json
and ratings.sqlite (cluster/rate/store.py). A task is one (pair, criterion) question; a rater answers
the three criteria of a pair one after the other with the same sides.

The plan balances systems and items: every system pair is compared on the same items, each item the
same number of times. Attention checks pit an image with a known answer against another (a target or
an edit against an untouched copy of the source for "instruction"; the source copy against a globally
corrupted copy for "consistency"). Repeated pairs come back later in the queue with sides swapped.
"""

from __future__ import annotations

import datetime
import hashlib
import itertools
import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

CRITERIA: list[dict[str, str]] = [
    {"name": "instruction", "question": "Which edit follows the instruction better?"},
    {
        "name": "consistency",
        "question": "Which edit leaves the rest of the image (outside the edit) more unchanged?",
    },
    {"name": "overall", "question": "Which edit is better overall?"},
]
CHOICES = ("left", "right", "tie")
DESIGN_FILE = "design.json"
SCHEMA = 1


def _load_run(run: Path) -> dict[str, Any]:
    path = run / "results.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{run} has no results.json: --edits takes `cocoedit eval` output folders (NAME=RUN_DIR)"
        )
    return json.loads(path.read_text())


def build_study(
    out: Path,
    runs: dict[str, Path],
    *,
    max_items: int | None = None,
    repeats: int = 4,
    checks: int = 4,
    seed: int = 0,
) -> dict[str, Any]:
    """Write STUDY/design.json and STUDY/images from `runs` (system name -> eval run folder); returns
    the design. Items are those every run evaluated (in the first run's order), the first `max_items`."""
    if len(runs) < 2:
        raise ValueError(f"a study needs two or more edit sets (--edits A=DIR B=DIR), got {len(runs)}")
    for name in runs:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"system name {name!r} must be letters, digits, '-' or '_'")
    if (out / DESIGN_FILE).exists():
        raise FileExistsError(f"{out} already holds a study (design.json); choose another --out")
    results = {name: _load_run(Path(run)) for name, run in runs.items()}
    first = next(iter(results.values()))
    for name, res in results.items():
        if (res["bench"], res["data"]) != (first["bench"], first["data"]):
            raise ValueError(
                f"run {name} evaluated {res['bench']}:{res['data']}, not {first['bench']}:{first['data']}: "
                "a study compares edits of the same items"
            )
    by_system = {name: {i["id"]: i for i in res["items"]} for name, res in results.items()}
    common = [i["id"] for i in first["items"] if all(i["id"] in items for items in by_system.values())]
    if not common:
        raise ValueError("the runs share no item id: a study compares edits of the same items")
    ids = common[:max_items] if max_items is not None else common
    source_of = _sources(first, runs[next(iter(runs))], ids)

    (out / "images").mkdir(parents=True, exist_ok=True)
    items = []
    for item_id in ids:
        folder = out / "images" / item_id
        folder.mkdir(exist_ok=True)
        Image.fromarray(source_of[item_id]["source"]).save(folder / "source.png")
        edits = {}
        for name, run in runs.items():
            src = Path(run) / by_system[name][item_id]["edit"]
            shutil.copyfile(src, folder / f"{name}.png")
            edits[name] = f"images/{item_id}/{name}.png"
        row = by_system[next(iter(runs))][item_id]
        items.append(
            {
                "id": item_id,
                "instruction": row["instruction"],
                "group": row.get("group"),
                "source": f"images/{item_id}/source.png",
                "edits": edits,
                "has_target": source_of[item_id]["target"] is not None,
            }
        )
    systems = list(runs)
    pairs = [
        {"id": f"p{k:04d}", "item": item["id"], "a": a, "b": b}
        for k, (item, (a, b)) in enumerate(itertools.product(items, itertools.combinations(systems, 2)))
    ]
    check_list = _write_checks(out, items, source_of, systems, checks, seed)
    scores = {
        name: {i: {k: v for k, v in by_system[name][i].items() if isinstance(v, (int, float))} for i in ids}
        for name in systems
    }
    for name in systems:
        for item in items:
            edited = as_uint8(out / item["edits"][name])
            scores[name][item["id"]]["pixel_reward"] = _pixel_reward(edited, source_of[item["id"]])
    design = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "seed": seed,
        "criteria": CRITERIA,
        "systems": {
            name: {"run": str(Path(run).resolve()), "lora": results[name].get("lora")}
            for name, run in runs.items()
        },
        "bench": first["bench"],
        "data": first["data"],
        "eval_config": first.get("eval_config"),
        "items": items,
        "pairs": pairs,
        "checks": check_list,
        "repeats": min(repeats, len(pairs)),
        # per system and item: the eval run's scores (judge, pixel metrics) and the pixel reward S_pix
        # (rewards/metrics_cv.py, default rewards.pixel settings), for the judge-agreement report
        "scores": scores,
    }
    (out / DESIGN_FILE).write_text(json.dumps(design, indent=1))
    return design


def _pixel_reward(edited: np.ndarray, src: dict[str, Any]) -> float:
    from cocoedit.rewards.config import PixelConfig
    from cocoedit.rewards.metrics_cv import pixel_reward_cv

    c = PixelConfig()
    return float(pixel_reward_cv(edited, src["source"], src["mask"], c.compat, c.ssim_weight, c.psnr_weight,
                                 c.psnr_cap_db, c.window, c.sigma)["score"])  # fmt: skip


def _sources(results: dict[str, Any], run: Path, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Per item: the source image (uint8 [H, W, 3] at the eval's size), its edit mask [H, W] (1 = edit)
    and its target (or None)."""
    from cocoedit.cluster.eval.benchmarks import load_benchmark

    cfg = results.get("eval_config") or {}
    items = load_benchmark(
        results["bench"], results["data"], Path(run), cfg.get("image_size", 512), cfg.get("mask_polarity"),
        cfg.get("language", "en"),
    )  # fmt: skip
    wanted = set(ids)
    out = {}
    for item in items:
        if item.item_id in wanted:
            target = None if item.target_image is None else item.target_image.permute(1, 2, 0).numpy()
            out[item.item_id] = {
                "source": item.source_image.permute(1, 2, 0).numpy(),
                "mask": item.edit_mask[0].numpy(),
                "target": target,
            }
    missing = wanted - set(out)
    if missing:
        raise ValueError(f"items {sorted(missing)[:5]} of the runs are not in {results['data']} any more")
    return out


def _write_checks(
    out: Path, items: list[dict], source_of: dict[str, dict], systems: list[str], n: int, seed: int
) -> list[dict[str, Any]]:
    """`n` attention checks in every rater's queue, alternately "instruction" (the target when the data
    has one, else the first system's edit, against an untouched source copy: the copy cannot have
    followed the instruction) and "consistency" (the source copy against a colour-inverted copy)."""
    rng = random.Random(seed)
    chosen = [items[k % len(items)] for k in rng.sample(range(max(n, len(items))), k=n)]
    (out / "checks").mkdir(exist_ok=True)
    checks = []
    for k, item in enumerate(chosen):
        src = source_of[item["id"]]
        if k % 2 == 0:
            if src["target"] is not None:
                Image.fromarray(src["target"]).save(out / "checks" / f"{item['id']}_target.png")
                good = f"checks/{item['id']}_target.png"
            else:
                good = item["edits"][systems[0]]
            checks.append({"id": f"c{k:02d}", "item": item["id"], "criterion": "instruction",
                           "good": good, "bad": item["source"]})  # fmt: skip
        else:
            Image.fromarray(255 - src["source"]).save(out / "checks" / f"{item['id']}_inverted.png")
            checks.append({"id": f"c{k:02d}", "item": item["id"], "criterion": "consistency",
                           "good": item["source"], "bad": f"checks/{item['id']}_inverted.png"})  # fmt: skip
    return checks


def load_design(study: Path) -> dict[str, Any]:
    path = Path(study) / DESIGN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{study} is not a study (no design.json); make one with `cocoedit rate new`")
    return json.loads(path.read_text())


def rater_seed(design: dict[str, Any], rater: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{design['seed']}:{rater}".encode()).digest()[:8], "big")


def rater_queue(design: dict[str, Any], rater: str) -> list[dict[str, Any]]:
    """This rater's tasks in order: {kind: pair|repeat|check, ref, criterion, left, right} where left and
    right are image paths in the study. Pair order, sides, repeat choice and check positions are drawn
    from a seed of (study seed, rater name), so a rater's queue is the same on every server start."""
    rng = random.Random(rater_seed(design, rater))
    items = {i["id"]: i for i in design["items"]}
    crits = [c["name"] for c in design["criteria"]]
    pairs = list(design["pairs"])
    rng.shuffle(pairs)
    blocks: list[list[dict[str, Any]]] = []
    for p in pairs:
        a, b = items[p["item"]]["edits"][p["a"]], items[p["item"]]["edits"][p["b"]]
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        blocks.append(
            [{"kind": "pair", "ref": p["id"], "criterion": c, "left": left, "right": right} for c in crits]
        )
    # repeats: sides swapped, placed at least half the queue after the first showing
    for k in rng.sample(range(len(blocks)), k=design["repeats"]):
        rep = [{**t, "kind": "repeat", "left": t["right"], "right": t["left"]} for t in blocks[k]]
        lo = min(len(blocks), k + max(1, len(blocks) // 2))
        blocks.insert(rng.randint(lo, len(blocks)), rep)
    for c in design["checks"]:
        left, right = (c["good"], c["bad"]) if rng.random() < 0.5 else (c["bad"], c["good"])
        blocks.insert(rng.randint(1, len(blocks)),
                      [{"kind": "check", "ref": c["id"], "criterion": c["criterion"], "left": left, "right": right}])  # fmt: skip
    return [t for block in blocks for t in block]


def task_item(design: dict[str, Any], task: dict[str, Any]) -> dict[str, Any]:
    """The design item a queue task shows."""
    if task["kind"] == "check":
        item_id = next(c["item"] for c in design["checks"] if c["id"] == task["ref"])
    else:
        item_id = next(p["item"] for p in design["pairs"] if p["id"] == task["ref"])
    return next(i for i in design["items"] if i["id"] == item_id)


def plan_text(design: dict[str, Any], raters: int = 5) -> str:
    """The study's size and how many ratings give a given confidence (normal approximation for a
    preference proportion near 0.5; ratings of one item by several raters are correlated, so these are
    lower bounds: count items, not only ratings)."""
    systems = list(design["systems"])
    n_pairs = len(design["pairs"])
    n_sys_pairs = math.comb(len(systems), 2)
    per_pair = n_pairs // n_sys_pairs
    crits = len(design["criteria"])
    tasks = (n_pairs + design["repeats"]) * crits + len(design["checks"])
    z, z_power = 1.959964, 0.841621
    need = {h: math.ceil(z**2 * 0.25 / h**2) for h in (0.10, 0.05)}
    detect = math.ceil(((z * 0.5 + z_power * math.sqrt(0.6 * 0.4)) / 0.1) ** 2)
    lines = [
        f"systems: {', '.join(systems)} ({n_sys_pairs} system pair(s)); items: {len(design['items'])}",
        f"pairs: {n_pairs} ({per_pair} per system pair, every item once per system pair; each system "
        f"shown {per_pair * (len(systems) - 1)} times per rater)",
        f"per rater: {tasks} answers = ({n_pairs} pairs + {design['repeats']} repeats) x {crits} criteria "
        f"+ {len(design['checks'])} attention checks",
        f"with {raters} raters: {per_pair * raters} ratings per system pair and criterion",
        "confidence (95%, one system pair, one criterion, preference near 50%): "
        f"+-10 points needs {need[0.10]} independent ratings, +-5 points {need[0.05]}; telling a 60/40 "
        f"preference from 50/50 with 80% power needs {detect}. Ratings of the same item by several raters "
        "are not independent: aim for that many items x raters and prefer more items to more raters.",
    ]
    return "\n".join(lines)


def as_uint8(path: Path) -> np.ndarray:
    """An image of the study as uint8 [H, W, 3]."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
